"""Live progress of a run as Server-Sent Events.

The stream reads what the run itself writes: `metrics.csv` (one row per optimizer step) and the
process's log (stdout + stderr). Reading files rather than talking to the process means a page
opened after a server restart, or on a run that already ended, sees the same thing.

Events: `status` (the run record), `metrics` (new rows + a summary: step, loss, lr, it/s, ETA, GPU
memory), `log` (new complete lines + the current progress-bar line), `outputs` (checkpoints and
validation videos, when they change) and, once the run has ended and everything is sent, `end`.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import statistics
from collections.abc import AsyncIterator
from pathlib import Path

from k5tune.server.outputs import list_outputs
from k5tune.server.paths import ProjectPaths
from k5tune.server.runs import RunManager, collapse_cr

# the trainer's tqdm bar: "training:  40%|####  | 4/10 [00:02<00:03,  1.85it/s, loss=..."
_TQDM_TRAINING = re.compile(r"training:\s*\d+%\|[^|]*\|\s*(\d+)/(\d+)(?:\s*\[[^,\]]*,\s*([\d.]+)(it/s|s/it))?")


def sse(event: str, data: object) -> str:
    """One event in the text/event-stream format (data is JSON on a single line)."""
    return f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n"


class FileTail:
    """New bytes of a growing file, whole lines only. A file that shrank (metrics.csv rewritten on
    resume) is read again from the start and `reset` says so."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.reset = False

    def read_lines(self, max_bytes: int = 1 << 20) -> list[str]:
        self.reset = False
        try:
            size = self.path.stat().st_size
        except OSError:
            return []
        if size < self.offset:
            self.offset, self.reset = 0, True
        if size == self.offset:
            return []
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            data = handle.read(max_bytes)
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        return data[: end + 1].decode("utf-8", errors="replace").split("\n")[:-1]

    def pending(self) -> str:
        """The unterminated last line (a progress bar being redrawn), without consuming it."""
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                data = handle.read(64 * 1024)
        except OSError:
            return ""
        return collapse_cr(data.decode("utf-8", errors="replace")) if b"\n" not in data else ""


class MetricsTail:
    """metrics.csv rows as dicts of floats, as they are appended."""

    def __init__(self, path: Path):
        self.tail = FileTail(path)
        self.header: list[str] | None = None

    def read(self) -> list[dict[str, float]]:
        lines = self.tail.read_lines()
        if self.tail.reset:
            self.header = None
        rows = []
        for values in csv.reader(io.StringIO("\n".join(lines))):
            if self.header is None:
                self.header = values
                continue
            row = {}
            for key, value in zip(self.header, values, strict=False):
                try:
                    row[key] = float(value)
                except ValueError:
                    continue
            if "step" in row:
                rows.append(row)
        return rows


def summarize(rows: list[dict[str, float]], total_steps: int | None, wall_rate: float | None = None) -> dict:
    """Step, loss, lr, it/s and ETA from the latest rows. it/s is the trainer's progress-bar rate
    (wall clock: checkpoints and validation included) when known, else the median over the last 20
    steps' own time."""
    if not rows:
        return {"total_steps": total_steps}
    last = rows[-1]
    seconds = [r["step_seconds"] for r in rows[-20:] if r.get("step_seconds", 0) > 0]
    rate = wall_rate or (1.0 / statistics.median(seconds) if seconds else None)
    step = int(last["step"])
    eta = (total_steps - step) / rate if rate and total_steps else None
    return {"step": step, "total_steps": total_steps, "epoch": int(last.get("epoch", 0)), "loss": last.get("loss"),
            "lr": last.get("lr"), "grad_norm": last.get("grad_norm"), "it_per_s": rate,
            "eta_seconds": max(0.0, eta) if eta is not None else None, "gpu_peak_gib": last.get("peak_gib"),
            **({"flow_loss": last.get("flow_loss"), "crepa_loss": last["crepa_loss"]} if "crepa_loss" in last else {})}


def planned_steps(snapshot: dict) -> int | None:
    config = snapshot.get("config") if isinstance(snapshot.get("config"), dict) else {}
    value = config.get("max_train_steps", config.get("--max_train_steps"))
    return int(value) if isinstance(value, int | float) and value > 0 else None


async def run_events(manager: RunManager, paths: ProjectPaths, run_id: int, poll_seconds: float = 0.4,
                     keepalive_seconds: float = 15.0) -> AsyncIterator[str]:
    run = manager.get(run_id)
    if run is None:
        return
    output_dir = Path(run.output_dir)
    metrics = MetricsTail(output_dir / "metrics.csv")
    log = FileTail(Path(run.log_path))
    rows: list[dict[str, float]] = []
    total = planned_steps(run.snapshot())
    last_status = last_outputs = last_current = None
    wall_rate: float | None = None
    quiet = 0.0
    yield "retry: 2000\n\n"
    while True:
        run = manager.get(run_id)
        sent = False
        if run is None:
            return
        status = run.to_dict(paths)
        if (run.status, run.exit_code, run.error, run.started_at) != last_status:
            last_status = (run.status, run.exit_code, run.error, run.started_at)
            yield sse("status", status)
            sent = True
        lines = [shown for line in log.read_lines() if (shown := collapse_cr(line))]
        current = log.pending()
        for line in [*lines, current]:
            if match := _TQDM_TRAINING.search(line):
                total = int(match.group(2))
                if match.group(3) and float(match.group(3)) > 0:
                    value = float(match.group(3))
                    wall_rate = value if match.group(4) == "it/s" else 1.0 / value
        if lines or current != last_current:
            last_current = current
            yield sse("log", {"lines": lines, "current": current})
            sent = True
        new_rows = metrics.read()
        if metrics.tail.reset:
            rows = []
        if new_rows or metrics.tail.reset:
            rows += new_rows
            yield sse("metrics", {"rows": new_rows, "reset": metrics.tail.reset,
                                  "summary": summarize(rows, total, wall_rate)})
            sent = True
        outputs = list_outputs(output_dir, paths)
        if outputs != last_outputs:
            last_outputs = outputs
            yield sse("outputs", outputs)
            sent = True
        if run.finished and not sent:
            yield sse("end", status)
            return
        quiet = 0.0 if sent else quiet + poll_seconds
        if quiet >= keepalive_seconds:  # a comment line keeps proxies and the browser from timing out
            quiet = 0.0
            yield ": keep-alive\n\n"
        await asyncio.sleep(poll_seconds)
