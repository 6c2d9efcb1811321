"""The eval loss: held-out clips never trained on, the same measurement every time, logged and plotted."""

from __future__ import annotations

import csv
import json
import os

import pytest
import torch

from k5tune.config import load_config
from k5tune.data.holdout import held_out
from k5tune.models.kandinsky5 import Kandinsky5Components, resolve_model_source
from k5tune.runtime import Runtime
from k5tune.train import evaluate
from k5tune.workflow import train
from tests.helpers import make_project

RUN = {"max_train_steps": 4, "train_batch_size": 1, "eval_steps": 2, "checkpointing_steps": 2, "eval_noise_levels": 3}
EVAL_SET = {"id": "held-out", "dataset_type": "video", "instance_data_dir": "datasets/held-out", "resolution": 48,
            "video": {"num_frames": 17}, "eval": True}


def _with_eval_backend(folder):
    from k5tune.data.synthetic import write_demo_dataset

    write_demo_dataset(folder / "datasets" / "held-out", n=2, frames=24, width=64, height=48)
    data = json.loads((folder / "config" / "multidatabackend.json").read_text())
    (folder / "config" / "multidatabackend.json").write_text(json.dumps([data[0], EVAL_SET, data[1]]))
    return folder


def test_the_held_out_split_is_seeded_stable_and_takes_whole_eval_datasets():
    from types import SimpleNamespace

    records = [SimpleNamespace(key=f"clips/{i}.mp4", backend_id="clips") for i in range(200)]
    records += [SimpleNamespace(key="eval/a.mp4", backend_id="eval")]
    train_part, eval_part = held_out(records, {"eval"}, 0.1, seed=3)
    assert records[-1] in eval_part and 10 <= len(eval_part) <= 35
    assert {r.key for r in train_part}.isdisjoint(r.key for r in eval_part)
    again = held_out(list(reversed(records[:150])), {"eval"}, 0.1, seed=3)[1]  # other order, fewer clips
    assert {r.key for r in again} == {r.key for r in eval_part if r in records[:150]}
    assert held_out(records, set(), 0.0, seed=3) == (records, [])


@pytest.mark.slow
def test_eval_runs_on_held_out_clips_only_and_is_logged(tmp_path, monkeypatch, tiny_model_dir, capsys):
    from k5tune.train import step

    folder = _with_eval_backend(make_project(tmp_path, tiny_model_dir, RUN))
    monkeypatch.chdir(folder)
    trained_on = set()
    real = step.micro_batch_loss
    monkeypatch.setattr("k5tune.train.trainer.micro_batch_loss",
                        lambda tr, cache, batch, *a, **k: trained_on.update(r.key for r in batch) or real(
                            tr, cache, batch, *a, **k))
    result = train(load_config())
    assert trained_on and not any(key.startswith("held-out/") for key in trained_on)  # never trained on
    rows = list(csv.DictReader((result.output_dir / "metrics.csv").open()))
    evaluated = [r for r in rows if r["eval_loss"]]
    assert [int(r["step"]) for r in evaluated] == [2, 4]
    for row in evaluated:
        bands = [float(row[f"eval_loss_{b}"]) for b in ("low", "mid", "high")]
        assert float(row["eval_loss"]) == pytest.approx(sum(bands) / 3)  # 3 levels: one per band
    assert set(result.eval_by_dataset) == {"held-out"}
    assert result.best_eval[0] in (2, 4) and result.closest_checkpoint.name == f"checkpoint-{result.best_eval[0]}"
    report = json.loads(result.report_json.read_text())
    assert any("held out for the eval loss" in note for note in report["notes"])


@pytest.mark.slow
def test_the_eval_loss_is_the_same_measurement_every_time(tmp_path, tiny_model_dir):
    """Fixed levels and fixed noise per clip: evaluating the same weights twice, or after training drew
    anything, gives the same numbers."""
    from k5tune.cache.stage import run_cache_stage
    from k5tune.config import load_config as load

    folder = _with_eval_backend(make_project(tmp_path, tiny_model_dir, {**RUN, "eval_holdout_fraction": 0.5}))
    import os

    os.chdir(folder)
    stage = run_cache_stage(load(), Runtime.detect("no", "cpu"))
    assert stage.eval_records and {r.backend_id for r in stage.eval_records} >= {"held-out"}
    transformer = Kandinsky5Components(resolve_model_source("t2v-lite-sft-5s", tiny_model_dir)).transformer()
    evaluator = evaluate.Evaluator(stage.eval_records, stage.cache, evaluate.eval_levels(4), seed=0)
    first = evaluator.losses(transformer, Runtime.detect("no", "cpu"))
    torch.randn(100)  # training draws in between change nothing
    assert torch.equal(first, evaluator.losses(transformer, Runtime.detect("no", "cpu")))
    other_seed = evaluate.Evaluator(stage.eval_records, stage.cache, evaluate.eval_levels(4), seed=1)
    assert not torch.equal(first, other_seed.losses(transformer, Runtime.detect("no", "cpu")))
    shares = [evaluator.losses(transformer, Runtime.detect("no", "cpu"), (rank, 2)) for rank in (0, 1)]
    torch.testing.assert_close(shares[0] + shares[1], first)  # two processes split the clips, sum to the whole


@pytest.mark.slow
def test_overfitting_shows_as_an_eval_loss_that_turns_up(tmp_path):
    """One clip (a shape moving right) trained long at a high rate; held out: clips under the same caption
    whose shapes move down. Memorising the one clip first helps them (what all the clips share), then
    hurts: the eval loss turns up while the training loss keeps falling, and the summary names the step
    of the lowest eval loss and the checkpoint nearest it. (The tiny VAE is rescaled as `k5tune probe`
    rescales it, so that its latents carry the clip.)"""
    from k5tune.models.tiny import make_tiny_model
    from k5tune.probe import make_latents_carry_the_clip, write_motion_clips
    from k5tune.train.outputs import describe_outputs

    model = make_tiny_model(tmp_path / "model")
    make_latents_carry_the_clip(model)
    write_motion_clips(tmp_path / "clips" / "train", "right", 1)
    write_motion_clips(tmp_path / "clips" / "held-out", "down", 3, offset=8)
    (tmp_path / "config").mkdir()
    config = {"pretrained_model_name_or_path": str(model), "output_dir": "output", "report_to": "none",
              "max_train_steps": 120, "learning_rate": 1e-2, "lr_warmup_steps": 0, "lora_rank": 16, "seed": 0,
              "lora_target_modules": ["to_query", "to_key", "to_value", "out_layer", "feed_forward"],
              "eval_steps": 10, "eval_noise_levels": 4, "checkpointing_steps": 20, "checkpoints_total_limit": 10}
    backends = [{"id": "train", "dataset_type": "video", "instance_data_dir": "clips/train", "resolution": 48,
                 "video": {"num_frames": 17}},
                {"id": "held-out", "dataset_type": "video", "instance_data_dir": "clips/held-out", "eval": True,
                 "resolution": 48, "video": {"num_frames": 17}},
                {"id": "text", "dataset_type": "text_embeds", "default": True, "cache_dir": "cache/text"}]
    (tmp_path / "config" / "config.json").write_text(json.dumps(config))
    (tmp_path / "config" / "multidatabackend.json").write_text(json.dumps(backends))
    os.chdir(tmp_path)
    result = train(load_config())
    rows = list(csv.DictReader((result.output_dir / "metrics.csv").open()))
    losses = [float(r["loss"]) for r in rows]
    evals = {int(r["step"]): float(r["eval_loss"]) for r in rows if r["eval_loss"]}
    best_step, best = min(evals.items(), key=lambda item: item[1])
    assert result.best_eval == (best_step, pytest.approx(best))
    assert best_step < 80 and evals[120] > best * 1.05  # it turned up, clearly
    around_best = losses[max(0, best_step - 10):best_step + 10]
    assert sum(losses[-20:]) / 20 < sum(around_best) / len(around_best) * 0.95  # training kept falling past it
    nearest = min(range(20, 121, 20), key=lambda step: (abs(step - best_step), step))
    assert result.closest_checkpoint.name == f"checkpoint-{nearest}"
    assert f"lowest at step {best_step}" in describe_outputs(result)  # what `k5tune train` prints at the end
