"""A run's files in output_dir: what an earlier run left there is set aside before this one writes."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

from k5tune.train import checkpoint
from k5tune.train.metrics import truncate_metrics


def set_earlier_runs_aside(output_dir: Path, resume_from: Path | None, step: int, log: Callable[[str], None]) -> None:
    """Files of another run in output_dir go to earlier-runs/<stamp>/ (see checkpoint.py): all of them on a
    fresh start (or a resume from a checkpoint kept elsewhere), and on a resume from checkpoint-N the
    checkpoints and validation videos after step N, a branch this run replaces."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if resume_from is not None and resume_from.parent.resolve() == output_dir:
        moved = checkpoint.archive_after_step(output_dir, step, stamp)
        what = f"its checkpoints and validation videos after step {step}"
        metrics = output_dir / "metrics.csv"
        if moved is not None and metrics.is_file():  # the replaced branch keeps its whole curve
            shutil.copy2(metrics, moved / metrics.name)
        truncate_metrics(metrics, step)  # rows after the checkpoint are trained again
    else:
        moved = checkpoint.archive_earlier_run(output_dir, stamp)
        what = "an earlier run's checkpoints and outputs (not resumed)"
    if moved is not None:
        log(f"note: {what} were moved from {output_dir} to {moved}")
