"""The web UI in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright): edit and save a
setting, preview the clips, start a tiny training run, watch its progress and a validation video
arrive, stop it. Screenshots land in the test's tmp folder."""

from __future__ import annotations

import json

import pytest

from k5tune.data.synthetic import write_clip
from tests.helpers import CHROMIUM, CHROMIUM_ARGS, ServerThread, make_project, wait_until

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                "(apt-get install chromium; .ci/run installs it)")


@pytest.mark.slow
def test_web_ui_edits_config_trains_shows_progress_and_video_and_stops(tmp_path, tiny_model_dir):
    from playwright.sync_api import expect, sync_playwright

    root = make_project(tmp_path / "project", tiny_model_dir, {
        "max_train_steps": 2000, "checkpointing_steps": 1000, "train_batch_size": 2,
        "validation_prompt": "a red circle moving to the right", "validation_steps": 2,
        "validation_resolution": "48x64", "validation_num_video_frames": 9, "validation_num_inference_steps": 2,
    })
    write_clip(root / "datasets" / "videos" / "short.mp4", frames=8, width=64, height=48)
    (root / "datasets" / "videos" / "short.txt").write_text("a clip too short to train on\n")
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with ServerThread(root) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page_errors: list[str] = []
        page.on("pageerror", lambda error: page_errors.append(str(error)))
        page.goto(url)

        # 1. the config form, built from the schema: a bad value is shown at its field, a good one saved
        rank = page.locator('#config-form .field[data-field="lora_rank"]')
        expect(rank.locator(".help")).to_contain_text("LoRA rank")
        rank.locator("input").fill("0")
        rank.locator("input").press("Tab")
        expect(rank.locator(".field-error")).to_contain_text("greater than 0")
        rank.locator("input").fill("8")
        rank.locator("input").press("Tab")
        expect(rank.locator(".field-error")).to_have_text("")
        page.click("#config-save")
        expect(page.locator("#config-status")).to_contain_text("saved config/config.json")
        assert json.loads((root / "config" / "config.json").read_text())["lora_rank"] == 8
        page.screenshot(path=str(shots / "1-config.png"))

        # 2. the dataset preview: thumbnails of the clips the real scan found
        page.click('#tabs button[data-tab="datasets"]')
        page.click("#datasets-preview")
        expect(page.locator("#preview-summary")).to_contain_text("4 used, 1 skipped")
        expect(page.locator("#preview-buckets")).to_contain_text("64x48@17")
        expect(page.locator("#preview-skipped tr.skipped")).to_contain_text("too_short")
        expect(page.locator("#preview-clips img")).to_have_count(4)
        wait_until(page, "() => [...document.querySelectorAll('#preview-clips img')].every(i => i.naturalWidth > 0)")
        page.locator("#preview").screenshot(path=str(shots / "2-datasets-preview.png"))

        # 3. training: progress arrives over Server-Sent Events
        page.click('#tabs button[data-tab="training"]')
        page.click("#run-start")
        expect(page.locator("#stat-status")).to_contain_text("running", timeout=30_000)
        expect(page.locator("#stat-step")).to_contain_text(" / 2000", timeout=60_000)
        expect(page.locator("#stat-loss")).not_to_have_text("–")
        expect(page.locator("#loss-chart polyline")).to_have_count(2)
        wait_until(page, "() => parseInt(document.querySelector('#stat-step').textContent) >= 4")
        page.screenshot(path=str(shots / "3-training.png"))

        # 4. the gallery plays the validation videos as they are written
        page.click('#tabs button[data-tab="gallery"]')
        video = page.locator("#videos video").first
        expect(video).to_be_attached(timeout=60_000)
        wait_until(page, "() => document.querySelector('#videos video').readyState >= 1", timeout=30)
        expect(page.locator("#videos figure .caption").first).to_have_text("a red circle moving to the right")
        page.screenshot(path=str(shots / "4-gallery.png"))

        # 5. a clean stop: the run saves a checkpoint and ends as 'stopped'
        page.click('#tabs button[data-tab="training"]')
        page.click("#run-stop")
        expect(page.locator("#stat-status")).to_contain_text("stopped", timeout=60_000)
        expect(page.locator("#log")).to_contain_text("stopped cleanly")
        page.screenshot(path=str(shots / "5-stopped.png"))
        browser.close()
    assert list((root / "output").glob("checkpoint-*/pytorch_lora_weights.safetensors"))
    assert not page_errors, page_errors
