"""`k5tune estimate`: predictions against the GPU figures measured on an H100 (benchmarks/results)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from k5tune.cli import main
from k5tune.estimate import (
    TrainingSettings,
    TrainingShape,
    caching_estimate,
    encoder_weight_gib,
    propose,
    training_peak_gib,
    vae_encode_peak_gib,
)

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def measured(run: str, name: str, part: str = "ours", settings_key: str | None = None) -> float:
    if name.endswith(".jsonl"):
        rows = [json.loads(line) for line in (RESULTS / run / name).read_text().splitlines()]
        row = next(r for r in rows if r["plan"].get(settings_key[0]) == settings_key[1])
        return row[part]["peak_gib"]
    return json.loads((RESULTS / run / name).read_text())[part]["peak_gib"]


LITE, PRO = "t2v-lite-sft-5s", "t2v-pro-sft-5s-hd"


@pytest.mark.parametrize(
    ("flavour", "settings", "source"),
    [
        (LITE, TrainingSettings("full"), ("2026-11-27-h100-run3", "bench.jsonl", "ours", ("checkpointing", "full"))),
        (LITE, TrainingSettings("selective"), ("2026-11-27-h100-run4", "bench.json", "ours", None)),
        (LITE, TrainingSettings("selective", keep_attention_blocks=16),
         ("2026-11-27-h100-run3", "bench.jsonl", "ours", ("keep_attention_blocks", 16))),
        (LITE, TrainingSettings("selective", keep_attention_blocks=8),
         ("2026-11-27-h100-run3", "bench.jsonl", "ours", ("keep_attention_blocks", 8))),
        (LITE, TrainingSettings("selective", tread_ratio=0.5, tread_span=(2, 29)),
         ("2026-11-27-h100-run5", "lite_tread.json", "ours_tread", None)),
        (PRO, TrainingSettings("selective", keep_attention_blocks=24),
         ("2026-11-27-h100-run6", "pro_compare.json", "ours", None)),
    ],
)
def test_predictions_are_within_15_percent_of_the_measured_peaks(flavour, settings, source):
    run, name, part, key = source
    actual = measured(run, name, part, key)
    predicted = training_peak_gib(flavour, TrainingShape(), settings)
    assert abs(predicted - actual) <= 0.15 * actual, (predicted, actual)


def vae_rows() -> dict[str, dict]:
    lines = (RESULTS / "2026-11-27-h100-run11" / "vae.jsonl").read_text().splitlines()
    return {row["variant"]: row for row in map(json.loads, lines) if "variant" in row}


@pytest.mark.parametrize("variant", ["plain", "patch_conv", "tiling"])
def test_vae_encode_predictions_are_within_15_percent_of_the_measured_peaks(variant):
    actual = vae_rows()[variant]["peak_gib"]
    predicted = vae_encode_peak_gib(TrainingShape(), variant)
    assert abs(predicted - actual) <= 0.15 * actual, (predicted, actual)


def test_vae_anchor_run_agrees_with_the_counted_weights_and_clip():
    header = json.loads((RESULTS / "2026-11-27-h100-run11" / "vae.jsonl").read_text().splitlines()[0])
    clip = 61 * 512 * 768 * 3 * 2 / 2**30
    assert abs(encoder_weight_gib()["vae"] + clip - header["weights_and_clip_gib"]) < 0.02


def test_caching_with_the_guides_settings():
    """offload_during_startup streams Qwen: the VAE encode is the caching peak, and it fits 13 GiB."""
    shape = TrainingShape()
    guide = caching_estimate(shape, offload_during_startup=True, patch_conv=True)
    assert guide.streamed and guide.text_gib < 4 < guide.vae_gib
    assert abs(guide.peak_gib - vae_rows()["patch_conv"]["peak_gib"]) <= 0.15 * vae_rows()["patch_conv"]["peak_gib"]
    assert guide.peak_gib <= 13
    whole = caching_estimate(shape, offload_during_startup=False, patch_conv=False)
    assert not whole.streamed and whole.text_gib > 15.4  # Qwen2.5-VL-7B's weights alone are 15.4 GiB
    assert whole.vae_gib > whole.text_gib  # both encoders on the GPU while the VAE encodes
    assert caching_estimate(shape, False, False, gpu_gib=12).streamed  # does not fit: streamed anyway
    # a longer or larger clip costs more, except with tiling's fixed-size tiles (only the clip grows)
    bigger = TrainingShape(720, 1280, 121)
    assert vae_encode_peak_gib(bigger, "patch_conv") > 2 * vae_encode_peak_gib(shape, "patch_conv")
    assert vae_encode_peak_gib(bigger, "tiling") < vae_encode_peak_gib(shape, "tiling") + 1


def test_more_memory_saving_settings_predict_less():
    shape = TrainingShape()
    peaks = [training_peak_gib(PRO, shape, s) for s in (
        TrainingSettings("selective"), TrainingSettings("full"), TrainingSettings("full", group_offload_blocks=1))]
    assert peaks == sorted(peaks, reverse=True)


def test_proposals():
    shape = TrainingShape()
    _, settings, peak = propose(LITE, shape, 80)
    assert settings.checkpointing == "selective" and settings.keep_attention_blocks is None  # fastest fits
    _, settings, peak = propose(LITE, shape, 12)
    assert peak + 1 <= 12 and (settings.checkpointing == "full" or settings.keep_attention_blocks is not None)
    chosen_shape, settings, peak = propose(PRO, shape, 24)
    assert settings.group_offload_blocks and peak <= 23
    assert propose(PRO, shape, 4) is None


def test_estimate_command(tmp_path, monkeypatch, capsys):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.json").write_text(json.dumps({"lora_rank": 32, "lora_target_modules": [
        "to_query", "to_key", "to_value", "out_layer", "feed_forward"], "offload_during_startup": True}))
    (tmp_path / "config" / "multidatabackend.json").write_text(json.dumps([
        {"id": "v", "dataset_type": "video", "instance_data_dir": "datasets/videos", "resolution": 512,
         "video": {"num_frames": 61}},
        {"id": "t", "dataset_type": "text_embeds", "default": True}]))
    monkeypatch.chdir(tmp_path)
    assert main(["estimate", "--gpu-memory", "24"]) == 0
    out = capsys.readouterr().out
    assert "512x768, 61 frames (24576 tokens)" in out
    assert "fits 24.0 GiB" in out and "caching peak" in out
    assert "Qwen2.5-VL streamed from CPU memory" in out and "caching: set" not in out  # caching fits 24 GiB
