"""Checkpoints, exact resume, clean stops on signals, non-finite losses."""

from __future__ import annotations

import json
import signal

import pytest
import torch

from k5tune.cli import main
from k5tune.config import load_config
from k5tune.progress import SilentProgress
from k5tune.train import checkpoint, trainer
from k5tune.train.stop import StopRequests
from k5tune.workflow import train
from tests.helpers import CHECKPOINT_RUN as RUN
from tests.helpers import InterruptAt, assert_same, lora, make_project, train_until_crash


@pytest.fixture
def reference(tmp_path_factory, tiny_model_dir, monkeypatch):
    """The uninterrupted 6-step run."""
    folder = make_project(tmp_path_factory.mktemp("reference"), tiny_model_dir, RUN)
    monkeypatch.chdir(folder)
    result = train(load_config())
    return lora(result.output_dir)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_and_resume_is_bit_exact(tmp_path, monkeypatch, tiny_model_dir, reference, capsys, signum):
    folder = make_project(tmp_path, tiny_model_dir, RUN)
    monkeypatch.chdir(folder)
    stopped = train(load_config(), progress=InterruptAt(3, signum))
    assert stopped.interrupted and stopped.steps == 3
    assert stopped.last_checkpoint.name == "checkpoint-3"
    assert not (folder / "output" / "pytorch_lora_weights.safetensors").exists()  # no final LoRA yet
    # the CLI path: resume, finish, exit 0
    assert main(["train", "--resume_from_checkpoint", "latest"]) == 0
    assert_same(lora(folder / "output"), reference)
    rows = (folder / "output" / "metrics.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_crash_then_resume_from_latest_is_bit_exact(tmp_path, monkeypatch, tiny_model_dir, reference):
    folder = make_project(tmp_path, tiny_model_dir, RUN)
    monkeypatch.chdir(folder)
    train_until_crash(monkeypatch, after_steps=4)
    assert [p.name for p in checkpoint.list_checkpoints(folder / "output")] == ["checkpoint-2", "checkpoint-4"]
    result = train(load_config("config/config.json", {"resume_from_checkpoint": "latest"}))
    assert result.resumed_from.name == "checkpoint-4"
    assert_same(lora(result.output_dir), reference)
    # metrics rows written after the checkpoint were dropped and retrained once
    rows = (folder / "output" / "metrics.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_checkpoint_contents_and_rotation(tmp_path, monkeypatch, tiny_model_dir):
    folder = make_project(tmp_path, tiny_model_dir, {**RUN, "checkpoints_total_limit": 2})
    monkeypatch.chdir(folder)
    train(load_config())
    checkpoints = checkpoint.list_checkpoints(folder / "output")
    assert [p.name for p in checkpoints] == ["checkpoint-4", "checkpoint-6"]
    newest = checkpoints[-1]
    manifest = json.loads((newest / checkpoint.MANIFEST_FILE).read_text())
    assert manifest["step"] == 6 and set(manifest["files"]) == {"pytorch_lora_weights.safetensors",
                                                                "training_state.pt"}
    state = checkpoint.load_state(newest)
    assert {"optimizer", "scheduler", "rng", "position", "step"} <= set(state)
    assert state["position"]["epoch"] >= 1  # 4 clips, 6 steps: the data position moved into epoch 2
    assert not list((folder / "output").glob(".tmp-*"))


class RecordingProgress(SilentProgress):
    def __init__(self):
        self.lines: list[str] = []

    def log(self, message: str) -> None:
        self.lines.append(message)


@pytest.mark.slow
def test_a_fresh_run_sets_an_earlier_runs_files_aside(tmp_path, monkeypatch, tiny_model_dir):
    # left in place, the earlier run's higher-step checkpoints would win the rotation over the new run's
    # own, and metrics.csv would restart at step 1 in the middle of the old curve
    folder = make_project(tmp_path, tiny_model_dir, {**RUN, "checkpoints_total_limit": 2})
    monkeypatch.chdir(folder)
    train(load_config())
    output = folder / "output"
    old_lora = lora(output)
    notes = RecordingProgress()
    train(load_config("config/config.json", {"max_train_steps": 2}), progress=notes)
    assert any("an earlier run's checkpoints and outputs (not resumed) were moved" in line for line in notes.lines)
    assert [p.name for p in checkpoint.list_checkpoints(output)] == ["checkpoint-2"]
    metrics = (output / "metrics.csv").read_text().splitlines()
    assert len(metrics) == 1 + 2  # header and the new run's 2 steps only
    (earlier,) = (output / checkpoint.EARLIER_RUNS).iterdir()
    assert [p.name for p in checkpoint.list_checkpoints(earlier)] == ["checkpoint-4", "checkpoint-6"]
    assert len((earlier / "metrics.csv").read_text().splitlines()) == 1 + 6
    assert_same(lora(earlier), old_lora)  # nothing lost
    train(load_config("config/config.json", {"max_train_steps": 4, "resume_from_checkpoint": "latest"}))  # resumes
    assert len(list((output / checkpoint.EARLIER_RUNS).iterdir())) == 1


@pytest.mark.slow
def test_resuming_an_earlier_checkpoint_sets_the_later_branch_aside(tmp_path, monkeypatch, tiny_model_dir):
    folder = make_project(tmp_path, tiny_model_dir, {**RUN, "checkpoints_total_limit": 2})
    monkeypatch.chdir(folder)
    train(load_config())  # keeps checkpoint-4 and checkpoint-6
    output = folder / "output"
    notes = RecordingProgress()
    train(load_config("config/config.json", {"resume_from_checkpoint": str(output / "checkpoint-4")}),
          progress=notes)
    assert any("after step 4 were moved" in line for line in notes.lines)
    (branch,) = (output / checkpoint.EARLIER_RUNS).iterdir()
    assert [p.name for p in checkpoint.list_checkpoints(branch)] == ["checkpoint-6"]  # the replaced branch
    assert [p.name for p in checkpoint.list_checkpoints(output)] == ["checkpoint-4", "checkpoint-6"]
    rows = [line.split(",")[0] for line in (output / "metrics.csv").read_text().splitlines()[1:]]
    assert rows == ["1", "2", "3", "4", "5", "6"]  # steps 5-6 of the first run replaced, not appended
    branch_rows = [line.split(",")[0] for line in (branch / "metrics.csv").read_text().splitlines()[1:]]
    assert branch_rows == ["1", "2", "3", "4", "5", "6"]  # the replaced branch keeps its whole curve


@pytest.mark.slow
def test_crash_while_writing_a_checkpoint_keeps_the_previous_ones(tmp_path, monkeypatch, tiny_model_dir):
    folder = make_project(tmp_path, tiny_model_dir, RUN)
    monkeypatch.chdir(folder)
    real_save = torch.save
    calls = {"n": 0}

    def dying_save(obj, handle, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint (step 4) dies after its LoRA file was written
            handle.write(b"half a file")
            raise OSError("the writer failed")
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError, match="the writer failed"):
        train(load_config())
    output = folder / "output"
    assert [p.name for p in checkpoint.list_checkpoints(output)] == ["checkpoint-2"]
    assert not (output / "checkpoint-4").exists()
    assert not list(output.glob(".tmp-*"))
    assert checkpoint.resolve_resume(output, "latest").name == "checkpoint-2"


def test_resume_errors(tmp_path, monkeypatch, tiny_model_dir):
    folder = make_project(tmp_path, tiny_model_dir, RUN)
    monkeypatch.chdir(folder)
    (folder / "output" / "checkpoint-9").mkdir(parents=True)  # no manifest: not a checkpoint
    assert main(["train", "--resume_from_checkpoint", "output/checkpoint-9"]) == 2
    assert checkpoint.resolve_resume(folder / "output", "latest") is None


@pytest.mark.slow
def test_resume_with_other_lora_targets_is_refused(tmp_path, monkeypatch, tiny_model_dir, capsys):
    folder = make_project(tmp_path, tiny_model_dir, {**RUN, "max_train_steps": 2, "checkpointing_steps": 1,
                                                     "disable_validation": True})
    monkeypatch.chdir(folder)
    assert main(["train"]) == 0
    capsys.readouterr()
    assert main(["train", "--resume_from_checkpoint", "latest", "--max_train_steps", "3",
                 "--lora_target_modules", '["to_query"]']) == 2
    error = capsys.readouterr().err
    assert "key 'lora_target_modules'" in error and "resume with the run's targets" in error


def test_second_ctrl_c_aborts_at_once():
    stops = StopRequests(SilentProgress())
    stops._handle(signal.SIGINT, None)
    assert stops.requested
    with pytest.raises(KeyboardInterrupt):
        stops._handle(signal.SIGINT, None)


@pytest.mark.slow
def test_nonfinite_losses_are_skipped_then_stop_the_run(tmp_path, monkeypatch, tiny_model_dir, capsys):
    folder = make_project(tmp_path, tiny_model_dir, {**RUN, "max_nonfinite_steps": 3})
    monkeypatch.chdir(folder)
    real_loss = trainer.micro_batch_loss
    calls = {"n": 0}

    def sometimes_nan(*args, **kwargs):
        calls["n"] += 1
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if calls["n"] in (2, 3) else loss

    monkeypatch.setattr(trainer, "micro_batch_loss", sometimes_nan)
    result = train(load_config())
    assert result.nonfinite_skipped == 2 and result.steps == 6
    assert all(torch.isfinite(v).all() for v in lora(result.output_dir).values())

    monkeypatch.setattr(trainer, "micro_batch_loss", lambda *a, **k: real_loss(*a, **k) * float("inf"))
    assert main(["train", "--output_dir", "output2"]) == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line.startswith("k5tune: error: 3 non-finite losses or gradients in a row at step 1")
