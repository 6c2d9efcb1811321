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


@pytest.mark.slow
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
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
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
        page.click("#run-snapshot summary")
        expect(page.locator("#run-snapshot-text")).to_contain_text('"max_train_steps": 5')
        expect(page.locator("#run-snapshot-text")).to_contain_text('"instance_data_dir": "datasets/videos"')
        page.set_viewport_size({"width": 800, "height": 900})
        expect(page.locator("#runs th.col-exit")).to_be_visible()
        right = page.evaluate("() => document.querySelector('#runs th.col-exit').getBoundingClientRect().right")
        assert 0 < right <= 800, right
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
    # everything stays offline: the page asks its own server only (data: URLs never leave the browser)
    assert requested and all(u.startswith(url) or u.startswith("data:") for u in requested), requested
    assert {p.name for p in shots.glob("*-800.png")} == {f"{t}-800.png" for t in ("config", "datasets", "training",
                                                                                 "gallery", "system")}


def _recorded_run(manager, root: Path, status: str, events: list[dict]) -> int:
    """A finished run in the server's history, with the events its `k5tune train` would have written."""
    run_id = manager.store.insert(output_dir=str(root / "output"), config_path="config/config.json", status=status,
                                  created_at="2026-01-01T00:00:00+00:00", config_snapshot="{}")
    folder = manager.runs_dir / f"run-{run_id:06d}"
    folder.mkdir(parents=True)
    (folder / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    manager.store.update(run_id, log_path=str(folder / "train.log"), exit_code=0 if status == "completed" else 1)
    return run_id


@pytest.mark.slow
def test_charts_plot_the_runs_own_loss_and_eval_and_never_another_runs(tmp_path, tiny_model_dir):
    from playwright.sync_api import expect, sync_playwright

    root = make_project(tmp_path / "project", tiny_model_dir, {"max_train_steps": 4})
    (root / "output").mkdir()
    (root / "output" / "metrics.csv").write_text("step,epoch,loss,lr\n1,0,9.5,0.001\n2,0,9.4,0.001\n")
    steps = [{"event": "step", "step": s, "epoch": 0, "loss": 0.5 / s, "lr": 1e-3, "step_seconds": 0.1,
              **({"eval_loss": 0.6 / s} if s % 2 == 0 else {})} for s in (1, 2, 3, 4)]
    server = ServerThread(root, allowed_roots=[tiny_model_dir])
    with server as url, sync_playwright() as playwright:
        manager = server.app.state.manager
        trained = _recorded_run(manager, root, "completed", [{"event": "training", "total_steps": 4}, *steps,
                                                              {"event": "end", "outcome": "completed"}])
        failed = _recorded_run(manager, root, "failed", [{"event": "end", "outcome": "failed", "error": "X: y"}])
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url + "#training")
        page.click(f'#runs tr[data-run="{trained}"]')
        expect(page.locator("#stat-step")).to_have_text("4 / 4")
        expect(page.locator("#loss-chart polyline")).to_have_count(3)
        expect(page.locator("#loss-chart polyline.series-eval_loss")).to_have_count(1)
        expect(page.locator("#loss-chart text.legend")).to_have_text("eval loss")
        # the failed run trained no step: its chart stays empty, whatever metrics.csv the folder holds
        page.click(f'#runs tr[data-run="{failed}"]')
        expect(page.locator("#stat-status")).to_contain_text("failed")
        expect(page.locator("#loss-chart polyline")).to_have_count(0)
        expect(page.locator("#loss-chart")).to_contain_text("the loss appears here after the first step")
        browser.close()


@pytest.mark.slow
def test_config_page_groups_sections_lists_flavours_offers_presets_and_filters(tmp_path, tiny_model_dir,
                                                                              monkeypatch):
    from playwright.sync_api import expect, sync_playwright

    fake_nvidia_smi(tmp_path / "bin", monkeypatch)  # one 80 GiB card
    root = make_project(tmp_path / "project", tiny_model_dir, {"max_train_steps": 4})
    config = root / "config" / "config.json"
    with ServerThread(root, allowed_roots=[tiny_model_dir]) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        # 8. basic sections first and open, the advanced ones collapsed
        expect(page.locator("#preset-select option")).not_to_have_count(0)  # the page has loaded
        titles = page.locator("#config-form details.section").evaluate_all("ds => ds.map(d => [d.dataset.section, d.open])")
        assert titles[0] == ["model", True] and ["memory", False] in titles and ["CREPA", False] in titles
        basics = [t for t, _ in titles[:7]]
        assert basics == ["model", "data", "output", "LoRA", "optimisation", "checkpoints", "validation"]
        # model_flavour: a list of the flavours, each described
        flavour = page.locator('#config-form .field[data-field="model_flavour"] select')
        expect(flavour.locator("option", has_text="t2v-lite-sft-5s — Lite text-to-video")).to_have_count(1)
        expect(flavour.locator("option", has_text="i2v-pro-sft-5s — Pro image-to-video")).to_have_count(1)

        # 6. an absurd value is refused at its field with the valid range
        rank = page.locator('#config-form .field[data-field="lora_rank"]')
        rank.locator("input").fill("100000")
        rank.locator("input").press("Tab")
        expect(rank.locator(".field-error")).to_contain_text("valid range: 1 to 1024")
        rank.locator("input").fill("4")
        rank.locator("input").press("Tab")
        expect(rank.locator(".field-error")).to_have_text("")

        # the wizard's presets for this card: 80 GiB recommends 80gb; another is applied and saved
        expect(page.locator("#preset-select")).to_have_value("80gb")
        expect(page.locator("#preset-note")).to_contain_text("everything stays on the GPU")
        page.select_option("#preset-select", "16gb")
        page.click("#preset-apply")
        memory = page.locator('#config-form details.section[data-section="memory"]')
        expect(memory.locator('.field[data-field="offload_activations"] select')).to_have_value("true")
        page.click("#config-save")
        expect(page.locator("#config-status")).to_contain_text("saved config/config.json")
        saved = json.loads(config.read_text())
        assert saved["offload_activations"] is True and saved["gradient_checkpointing_policy"] == "selective"
        page.reload()
        expect(page.locator('#config-form details.section[data-section="memory"]')).to_have_attribute("open", "")

        # "only set keys": exactly the file's keys, and no section left as an empty box
        page.check("#config-only-set")
        visible = page.locator("#config-form .field:visible")
        expect(visible).to_have_count(len(saved))
        empty = page.locator("#config-form details.section").evaluate_all(
            "ds => ds.filter(d => d.offsetParent !== null && ![...d.querySelectorAll('.field')].some(f => f.offsetParent !== null))"
            ".map(d => d.dataset.section)")
        assert empty == []
        page.uncheck("#config-only-set")
        page.fill("#config-filter", "nabla_threshold")
        expect(page.locator("#config-form .field:visible")).to_have_count(1)
        expect(page.locator('#config-form details.section[data-section="attention"]')).to_have_attribute("open", "")
        browser.close()
