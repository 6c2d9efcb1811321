"""Checkpoints: `output_dir/checkpoint-<step>/`, written whole or not at all.

A checkpoint is built in a hidden temporary folder beside the others and renamed into place once
every file is written and synced, so a crash mid-write leaves the earlier checkpoints intact and no
half checkpoint that `resume_from_checkpoint: latest` would pick. Its manifest is written last.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from k5tune import __version__
from k5tune.atomic import atomic_torch_save, atomic_write_json
from k5tune.errors import ConfigError

STATE_FILE = "training_state.pt"
MANIFEST_FILE = "checkpoint.json"
PREFIX = "checkpoint-"


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_folder(folder: Path) -> None:
    for path in folder.iterdir():
        with path.open("rb") as handle:
            os.fsync(handle.fileno())


# A checkpoint being replaced (the same step saved again) waits under this name until its successor is
# in place: at every moment one complete copy exists under a name `list_checkpoints` can find again.
_REPLACED = ".replaced-"


def save_checkpoint(output_dir: Path, step: int, write_lora, state: dict[str, Any], limit: int | None) -> Path:
    """Write checkpoint-<step> atomically; `write_lora(folder)` writes the LoRA file into the folder."""
    output_dir.mkdir(parents=True, exist_ok=True)
    final = output_dir / f"{PREFIX}{step}"
    staging = output_dir / f".tmp-{PREFIX}{step}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        write_lora(staging)
        atomic_torch_save(staging / STATE_FILE, state)
        files = {p.name: _sha256(p) for p in sorted(staging.iterdir())}
        manifest = {"step": step, "k5tune": __version__, "files": files,
                    "epoch": state["position"]["epoch"], "next_group": state["position"]["next_group"]}
        atomic_write_json(staging / MANIFEST_FILE, manifest)
        _fsync_folder(staging)
        replaced = None
        if final.exists():  # the same step saved again (e.g. interrupt right after a periodic save)
            replaced = output_dir / f"{_REPLACED}{final.name}-{uuid.uuid4().hex[:8]}"
            os.replace(final, replaced)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)
    rotate_checkpoints(output_dir, limit)
    return final


def _recover_replaced(output_dir: Path) -> None:
    """A kill between the two renames of a re-save leaves the old copy under its waiting name: put it
    back where it was; once the new copy is in place, the waiting one is surplus."""
    for waiting in sorted(output_dir.glob(f"{_REPLACED}{PREFIX}*")):
        name = waiting.name[len(_REPLACED):].rsplit("-", 1)[0]
        if (output_dir / name).exists():
            shutil.rmtree(waiting, ignore_errors=True)
        elif is_complete(waiting):
            os.replace(waiting, output_dir / name)


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a folder without a valid manifest is not one)."""
    if output_dir.is_dir():
        _recover_replaced(output_dir)
    found = []
    for folder in output_dir.glob(f"{PREFIX}*"):
        suffix = folder.name[len(PREFIX):]
        if folder.is_dir() and suffix.isdigit() and is_complete(folder):
            found.append((int(suffix), folder))
    return [folder for _, folder in sorted(found)]


def is_complete(folder: Path) -> bool:
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        return all((folder / name).is_file() for name in manifest["files"])
    except (OSError, ValueError, KeyError):
        return False


def damage(folder: Path) -> str | None:
    """Why a complete-looking checkpoint cannot be trusted (a file whose bytes differ from the sha256 its
    manifest recorded: truncated, overwritten), or None when every file verifies."""
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        for name, digest in manifest["files"].items():
            if _sha256(folder / name) != digest:
                return f"{name} does not match the sha256 recorded when it was saved"
    except (OSError, ValueError, KeyError) as exc:
        return f"its manifest cannot be read ({exc})"
    return None


def rotate_checkpoints(output_dir: Path, limit: int | None) -> None:
    for leftover in output_dir.glob(f".tmp-{PREFIX}*"):
        shutil.rmtree(leftover, ignore_errors=True)
    if limit is None:
        return
    checkpoints = list_checkpoints(output_dir)
    for old in checkpoints[: max(0, len(checkpoints) - limit)]:
        shutil.rmtree(old, ignore_errors=True)


EARLIER_RUNS = "earlier-runs"
# what a run writes into output_dir (the tracker writes under logging_dir/<run name>, left in place)
_RUN_OUTPUTS = ("metrics.csv", "loss.png", "validation", "pytorch_lora_weights.safetensors")


def archive_earlier_run(output_dir: Path, stamp: str) -> Path | None:
    """Move an earlier run's checkpoints and outputs to output_dir/earlier-runs/<stamp>/ before a fresh
    (not resumed) run starts there; returns that folder, or None when there was nothing.

    Left in place they would mix: metrics.csv would continue the old curve from step 1 again, and the
    checkpoint rotation, which keeps the highest steps, would delete the new run's checkpoints first.
    Moving is a rename (same file system): nothing is copied and nothing is lost."""
    found = [output_dir / name for name in _RUN_OUTPUTS if (output_dir / name).exists()]
    found += [p for p in output_dir.glob(f"{PREFIX}*") if p.is_dir()]
    found += [p for p in output_dir.glob(f".tmp-{PREFIX}*")]
    return _move_aside(output_dir, found, stamp)


def archive_after_step(output_dir: Path, step: int, stamp: str) -> Path | None:
    """On a resume from checkpoint-<step>: move the checkpoints and validation videos of later steps
    (a branch the resumed run replaces) to earlier-runs/<stamp>/, keeping their layout. Otherwise the
    rotation would delete the resumed run's new checkpoints first, and `latest` would pick the old ones."""
    def later(path: Path, prefix: str) -> bool:
        suffix = path.name[len(prefix):]
        return path.is_dir() and suffix.isdigit() and int(suffix) > step

    found = [p for p in output_dir.glob(f"{PREFIX}*") if later(p, PREFIX)]
    found += [p for p in (output_dir / "validation").glob("step-*") if later(p, "step-")]
    return _move_aside(output_dir, found, stamp)


def _move_aside(output_dir: Path, paths: list[Path], stamp: str) -> Path | None:
    if not paths:
        return None
    target, n = output_dir / EARLIER_RUNS / stamp, 1
    while target.exists():  # two runs started within one second
        n += 1
        target = output_dir / EARLIER_RUNS / f"{stamp}-{n}"
    for path in sorted(paths):
        destination = target / path.relative_to(output_dir)
        destination.parent.mkdir(parents=True, exist_ok=True)
        path.rename(destination)
    return target


def set_aside_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints under earlier-runs/, oldest set-aside run first."""
    runs = sorted(p for p in (output_dir / EARLIER_RUNS).glob("*") if p.is_dir())
    return [folder for run in runs for folder in list_checkpoints(run)]


def resolve_resume(output_dir: Path, value: str, log=print) -> Path | None:
    """'latest' -> the newest checkpoint whose files verify (None when there is none yet), naming each
    damaged one it passes over; else the given folder, which must verify."""
    if value == "latest":
        for folder in reversed(list_checkpoints(output_dir)):
            problem = damage(folder)
            if problem is None:
                return folder
            log(f"warning: {folder} is damaged ({problem}); trying the checkpoint before it")
        return None
    folder = Path(value)
    problem = damage(folder) if folder.is_dir() and is_complete(folder) else f"it needs {MANIFEST_FILE} and its files"
    if problem is not None:
        raise ConfigError(
            f"'{value}' is not a usable checkpoint folder ({problem}); "
            f"use 'latest' or one of: {', '.join(p.name for p in list_checkpoints(output_dir)) or 'none yet'}",
            key="resume_from_checkpoint",
        )
    return folder


def load_state(folder: Path) -> dict[str, Any]:
    return torch.load(folder / STATE_FILE, map_location="cpu", weights_only=False)
