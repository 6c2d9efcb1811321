"""The web UI in headless Chromium (#22): a config.json that does not parse is edited as text, never
replaced by an empty form; the page works under its Content-Security-Policy and no other site can frame
it; the LoRA downloads under its own name; the System tab shows each GPU. Screenshots of every tab at
1280 and 800 px are written to K5TUNE_SCREENSHOTS (default: the test's tmp folder)."""

from __future__ import annotations

import json
import os
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.helpers import CHROMIUM, CHROMIUM_ARGS, ServerThread, fake_nvidia_smi, free_port, make_project

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                "(apt-get install chromium; .ci/run installs it)")


class ForeignSite:
    """Another origin (another port) whose page frames the UI."""

    def __init__(self, folder: Path, target: str):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "index.html").write_text(f'<!doctype html><iframe id="ui" src="{target}" width="800" '
                                           'height="600"></iframe>')
        self.port = free_port()
        handler = partial(SimpleHTTPRequestHandler, directory=str(folder))
        handler.log_message = lambda *args: None
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)

    def __enter__(self) -> str:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.port}/index.html"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()


def test_broken_config_is_edited_as_text_under_csp_unframeable_with_named_download(tmp_path, tiny_model_dir,
                                                                                   monkeypatch):
    from playwright.sync_api import expect, sync_playwright

    fake_nvidia_smi(tmp_path / "bin", monkeypatch)
    root = make_project(tmp_path / "project", tiny_model_dir, {"max_train_steps": 4})
    config = root / "config" / "config.json"
    good = config.read_text()
    broken = good.replace('"max_train_steps": 4', '"max_train_steps": 4,')
    config.write_text(broken)
    (root / "output" / "checkpoint-3").mkdir(parents=True)
    (root / "output" / "pytorch_lora_weights.safetensors").write_bytes(b"weights")
    (root / "output" / "checkpoint-3" / "pytorch_lora_weights.safetensors").write_bytes(b"step 3")
    shots = Path(os.environ.get("K5TUNE_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    with ServerThread(root, allowed_roots=[tiny_model_dir]) as url, ForeignSite(tmp_path / "foreign", url) as foreign, \
            sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        problems: list[str] = []
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.on("console", lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None)
        page.goto(url)

        # 1. the file as text with the error's line and column; the form is withheld and cannot save
        expect(page.locator("#config-raw")).to_be_visible()
        expect(page.locator("#config-raw-error")).to_contain_text("line 1, column")
        expect(page.locator("#config-form")).to_be_hidden()
        expect(page.locator("#config-save")).to_be_disabled()
        assert page.locator("#config-raw-text").input_value() == broken
        page.screenshot(path=str(shots / "config-broken-1280.png"))
        page.locator("#config-raw-text").fill('{"max_train_steps": 4,}')
        page.click("#config-raw-save")
        expect(page.locator("#config-raw-error")).to_contain_text("line 1, column")
        assert config.read_text() == broken
        fixed = good.replace('"max_train_steps": 4', '"max_train_steps": 5')
        page.locator("#config-raw-text").fill(fixed)
        page.click("#config-raw-save")
        expect(page.locator("#config-status")).to_contain_text("previous version kept as .k5tune/backups/")
        expect(page.locator("#config-raw")).to_be_hidden()
        expect(page.locator('#config-form .field[data-field="max_train_steps"] input')).to_have_value("5")
        assert config.read_text() == fixed
        assert [p.read_text() for p in (root / ".k5tune" / "backups" / "config" / "config.json").iterdir()] == [broken]
        page.click("#config-save")  # the form saves again, keeping the text version
        expect(page.locator("#config-status")).to_contain_text("saved config/config.json (previous version kept")
        assert json.loads(config.read_text())["max_train_steps"] == 5

        # 7. the LoRA downloads under its own name
        page.click('#tabs button[data-tab="gallery"]')
        with page.expect_download() as download:
            page.click("#gallery-lora a")
        assert download.value.suggested_filename == "pytorch_lora_weights.safetensors"

        # 9. checkpoints: download, and resume from here (a stand-in checkpoint: the run fails, visibly)
        row = page.locator('#checkpoints tr.checkpoint[data-path="output/checkpoint-3"]')
        with page.expect_download() as download:
            row.locator("a.download").click()
        assert download.value.suggested_filename == "pytorch_lora_weights.safetensors"
        row.locator("button.resume-here").click()
        expect(page.locator("#tab-training")).to_be_visible()
        first = page.locator("#runs tr[data-run]").first
        expect(first).to_contain_text("config/config.json (from output/checkpoint-3)")
        expect(first).to_contain_text("clips (datasets/videos)")
        expect(first.locator("td.col-exit")).not_to_have_text("", timeout=90_000)
        expect(page.locator("#stat-status")).to_contain_text("failed")
        page.set_viewport_size({"width": 800, "height": 900})
        box = page.locator("#runs th.col-exit").bounding_box()
        assert box and box["x"] + box["width"] <= 800, box
        page.set_viewport_size({"width": 1280, "height": 900})

        # 10. the system panel: each GPU's memory and utilisation
        page.click('#tabs button[data-tab="system"]')
        expect(page.locator("#system-gpus tr.gpu")).to_contain_text("NVIDIA H100 80GB HBM3")
        expect(page.locator("#system-gpus tr.gpu")).to_contain_text("40.0 / 80.0 GiB")
        expect(page.locator("#system-gpus tr.gpu")).to_contain_text("73%")
        expect(page.locator("#system-queue-empty")).to_be_visible()

        # every tab at 1280 and 800 px
        for width in (1280, 800):
            page.set_viewport_size({"width": width, "height": 900})
            for tab in ("config", "datasets", "training", "gallery", "system"):
                page.click(f'#tabs button[data-tab="{tab}"]')
                page.screenshot(path=str(shots / f"{tab}-{width}.png"), full_page=True)

        # 2. another site cannot frame the UI: the frame stays empty
        framed = browser.new_page()
        framed.goto(foreign)
        framed.wait_for_load_state("load")
        frame = framed.frame_locator("#ui")
        expect(frame.locator("#config-save")).to_have_count(0)
        browser.close()
    assert not problems, problems
    assert {p.name for p in shots.glob("*-800.png")} == {f"{t}-800.png" for t in ("config", "datasets", "training",
                                                                                 "gallery", "system")}
