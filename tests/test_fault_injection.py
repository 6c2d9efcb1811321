"""Fault injection (issue 21): each fault a real run meets, and what must hold after it.

Where the run can continue (a kill, a stop, a full disk, a damaged checkpoint or cache entry), the
resumed or repeated run ends with the LoRA of an uninterrupted run, bit for bit; nothing the user had
is lost, and nothing is reported as good when it is not.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from k5tune import atomic
from k5tune.cli import main
from k5tune.config import load_config
from k5tune.train import checkpoint, trainer
from k5tune.workflow import train
from tests.helpers import CHECKPOINT_RUN as RUN
from tests.helpers import FullDisk, InfiniteGradient, assert_same, lora, make_project, train_until_crash

pytestmark = pytest.mark.slow

# checkpoints at steps 2, 4 and the final 6; only the newest is kept, so a fault cannot fall back on
# an older one that rotation would otherwise have left
FAULT_RUN = {**RUN, "checkpoints_total_limit": 1}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model_dir) -> dict[str, torch.Tensor]:
    folder = make_project(tmp_path_factory.mktemp("uninterrupted"), tiny_model_dir, FAULT_RUN)
    previous = Path.cwd()
    os.chdir(folder)
    try:
        return lora(train(load_config()).output_dir)
    finally:
        os.chdir(previous)


def assert_nothing_bad_is_called_good(output: Path) -> None:
    for folder in checkpoint.list_checkpoints(output):
        assert checkpoint.damage(folder) is None, folder
        assert all(torch.isfinite(v).all() for v in lora(folder).values()), folder


def resume_and_compare(folder: Path, uninterrupted: dict[str, torch.Tensor]) -> None:
    assert_nothing_bad_is_called_good(folder / "output")
    assert main(["train", "--resume_from_checkpoint", "latest"]) == 0
    assert_same(lora(folder / "output"), uninterrupted)
    assert not list((folder / "output").glob(".tmp-*")) and not list((folder / "output").glob(".replaced-*"))


# --- kill -9 while a checkpoint is written ---------------------------------------------------------

# The child trains with one fault armed and SIGKILLs itself at that moment.
_CHILD = textwrap.dedent('''
    import os, signal, sys
    from k5tune import atomic
    from k5tune.train import checkpoint, trainer
    mode, k, at_byte = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
    count = {"n": 0}
    if mode == "write":  # the k-th file written into a checkpoint, after at_byte bytes (or at its end)
        real_open = atomic.open_for_writing
        class Dying:
            def __init__(self, handle): self.handle, self.written = handle, 0
            def write(self, data):
                if self.written + len(data) > at_byte:
                    self.handle.write(data[: max(0, at_byte - self.written)]); self.handle.flush(); die()
                self.written += len(data)
                return self.handle.write(data)
            def flush(self): die()
            def __getattr__(self, name): return getattr(self.handle, name)
            def __enter__(self): return self
            def __exit__(self, *exc): self.handle.close()
        def opener(path):
            handle = real_open(path)
            if ".tmp-checkpoint-" in str(path):
                count["n"] += 1
                if count["n"] == k:
                    return Dying(handle)
            return handle
        atomic.open_for_writing = opener
    elif mode in ("rename", "resave"):  # after the k-th rename of a checkpoint folder
        real_replace = os.replace
        def replace(src, dst):
            real_replace(src, dst)
            if "checkpoint-" in os.path.basename(str(src)):
                count["n"] += 1
                if count["n"] == k:
                    die()
        checkpoint.os.replace = replace
        if mode == "resave":  # a stop right after the periodic save at step 2 saves step 2 again
            real_step = trainer.Trainer.train_step
            def step(self, group):
                row = real_step(self, group)
                if self.step == 2:
                    os.kill(os.getpid(), signal.SIGINT)
                return row
            trainer.Trainer.train_step = step
    elif mode == "rotate":  # while rotation deletes the k-th old checkpoint, after one of its files
        real_rmtree = checkpoint.shutil.rmtree
        def rmtree(path, *args, **kwargs):
            if os.path.basename(str(path)).startswith("checkpoint-"):
                count["n"] += 1
                if count["n"] == k:
                    os.unlink(os.path.join(path, sorted(os.listdir(path))[0]))
                    die()
            return real_rmtree(path, *args, **kwargs)
        checkpoint.shutil.rmtree = rmtree
    from k5tune.cli import main
    sys.exit(main(["train"]))
''')

_RANDOM = random.Random(21)
KILLS = [
    ("write", 1, 0),  # the first checkpoint dies before its first byte: none exists yet
    ("write", 2, 100),  # the first checkpoint's training state, torn
    ("write", 3, 10),  # the first checkpoint's manifest
    ("rename", 2, 0),  # right after checkpoint-4 is in place, before rotation removed checkpoint-2
    ("rotate", 1, 0),  # rotation half-way through deleting checkpoint-2
    ("resave", 2, 0),  # the re-save of checkpoint-2: the old copy moved aside, the new one not yet in
    *[("write", _RANDOM.randint(1, 9), _RANDOM.choice([0, 64, 4096, 1 << 16])) for _ in range(3)],
]


@pytest.mark.parametrize(("mode", "k", "at_byte"), KILLS, ids=[f"{m}-{k}-{b}" for m, k, b in KILLS])
def test_kill_9_while_a_checkpoint_is_written(tmp_path, monkeypatch, tiny_model_dir, uninterrupted, mode, k, at_byte):
    folder = make_project(tmp_path, tiny_model_dir, FAULT_RUN)
    monkeypatch.chdir(folder)
    child = subprocess.run([sys.executable, "-c", _CHILD, mode, str(k), str(at_byte)], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}, check=False)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    resume_and_compare(folder, uninterrupted)


# --- Ctrl-C ----------------------------------------------------------------------------------------


def test_ctrl_c_saves_and_the_resumed_run_is_exact(tmp_path, monkeypatch, tiny_model_dir, uninterrupted):
    from tests.helpers import InterruptAt

    folder = make_project(tmp_path, tiny_model_dir, FAULT_RUN)
    monkeypatch.chdir(folder)
    assert train(load_config(), progress=InterruptAt(3)).interrupted
    resume_and_compare(folder, uninterrupted)


# --- a damaged checkpoint -----------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "overwritten"])
def test_a_damaged_checkpoint_is_passed_over(tmp_path, monkeypatch, tiny_model_dir, uninterrupted, damage):
    folder = make_project(tmp_path, tiny_model_dir, {**RUN, "checkpoints_total_limit": 2})
    monkeypatch.chdir(folder)
    train_until_crash(monkeypatch, after_steps=4)
    state = folder / "output" / "checkpoint-4" / checkpoint.STATE_FILE
    data = state.read_bytes()
    state.write_bytes(data[: len(data) // 2] if damage == "truncated" else data[:-8] + b"\0" * 8)
    assert main(["train", "--resume_from_checkpoint", "latest"]) == 0  # from checkpoint-2
    assert_same(lora(folder / "output"), uninterrupted)


# --- non-finite loss and gradient ------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["loss", "gradient"])
def test_a_nonfinite_step_changes_nothing_and_the_run_goes_on(tmp_path, monkeypatch, tiny_model_dir, fault):
    folder = make_project(tmp_path, tiny_model_dir, FAULT_RUN)
    monkeypatch.chdir(folder)
    real_loss, real_step = trainer.micro_batch_loss, trainer.Trainer.train_step
    calls, snapshots = {"n": 0}, {}

    def faulty_loss(*args, **kwargs):
        calls["n"] += 1
        loss = real_loss(*args, **kwargs)
        if calls["n"] != 3:
            return loss
        return loss * float("nan") if fault == "loss" else InfiniteGradient.apply(loss)

    def watched_step(self, group):
        before = ([p.detach().clone() for p in self.params], repr(self.optimizer.state_dict()["state"]))
        row = real_step(self, group)
        if row is None:
            snapshots["before"] = before
            snapshots["after"] = ([p.detach().clone() for p in self.params], repr(self.optimizer.state_dict()["state"]))
        return row

    monkeypatch.setattr(trainer, "micro_batch_loss", faulty_loss)
    monkeypatch.setattr(trainer.Trainer, "train_step", watched_step)
    result = train(load_config())
    assert result.nonfinite_skipped == 1 and result.steps == 6
    weights_before, adam_before = snapshots["before"]
    weights_after, adam_after = snapshots["after"]
    assert all(torch.equal(a, b) for a, b in zip(weights_before, weights_after, strict=True)) and adam_before == adam_after
    assert_nothing_bad_is_called_good(result.output_dir)


# --- damaged cache entries -----------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["nan", "truncated"])
def test_a_damaged_cache_entry_is_encoded_again(tmp_path, monkeypatch, tiny_model_dir, uninterrupted, damage):
    folder = make_project(tmp_path, tiny_model_dir, FAULT_RUN)
    monkeypatch.chdir(folder)
    assert main(["cache"]) == 0
    entries = sorted(p for p in (folder / "cache").rglob("*.safetensors") if "text" not in p.parts)
    for entry in entries[:2]:
        if damage == "nan":
            tensors = load_file(entry)
            tensors["latents"].view(-1)[-1] = float("inf")
            save_file(tensors, entry)
        else:
            entry.write_bytes(entry.read_bytes()[:-100])
    assert main(["train"]) == 0
    assert_same(lora(folder / "output"), uninterrupted)


# --- a full disk ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["checkpoint", "final LoRA", "cache"])
def test_a_full_disk_stops_cleanly_and_the_rerun_is_exact(tmp_path, monkeypatch, tiny_model_dir, uninterrupted,
                                                          capsys, where):
    folder = make_project(tmp_path, tiny_model_dir, FAULT_RUN)
    monkeypatch.chdir(folder)
    real_open = atomic.open_for_writing
    matches = {"checkpoint": lambda path: ".tmp-checkpoint-" in str(path),
               "final LoRA": lambda path: path.parent == (folder / "output").resolve(),  # (its temporary file)
               "cache": lambda path: (folder / "cache") in path.parents}[where]
    monkeypatch.setattr(atomic, "open_for_writing", FullDisk(real_open, matches))
    assert main(["train"]) == 2
    assert "the disk is full: could not write" in capsys.readouterr().err.strip().splitlines()[-1]
    monkeypatch.setattr(atomic, "open_for_writing", real_open)
    assert not list(folder.rglob(".tmp-*.safetensors")) and not list(folder.rglob(".tmp-*.pt"))
    assert_nothing_bad_is_called_good(folder / "output")
    resume_and_compare(folder, uninterrupted)
