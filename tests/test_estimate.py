"""`k5tune estimate`: predictions against the GPU figures measured on an H100 (benchmarks/results)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from k5tune.cli import main
from k5tune.estimate import TrainingSettings, TrainingShape, propose, training_peak_gib

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
