"""Live progress of a run as Server-Sent Events.

The stream reads what the run itself writes: its structured events (runs/status.py: planned steps,
training speed, and one `step` event per optimizer step: the run's own metrics, never those another
run left in the shared output folder) and the process's log (stdout + stderr), which is only shown,
never parsed. Reading files rather than talking to the process means a page opened after a server
restart, or on a run that already ended, sees the same thing.

Events: `status` (the run record), `metrics` (new rows + a summary: step, loss, lr, it/s, ETA, GPU
memory), `log` (new complete lines + the current progress-bar line), `outputs` (checkpoints and
validation videos, when they change) and, once the run has ended and everything is sent, `end`.
"""

from __future__ import annotations

import asyncio
import json
import statistics
from collections.abc import AsyncIterator
from pathlib import Path

from k5tune.server.outputs import list_outputs
from k5tune.server.paths import ProjectPaths
from k5tune.server.runs import RunEvents, RunManager
from k5tune.server.tail import FileTail, collapse_cr


def sse(event: str, data: object) -> str:
    """One event in the text/event-stream format (data is JSON on a single line)."""
    return f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n"


def summarize(rows: list[dict[str, float]], total_steps: int | None, wall_rate: float | None = None) -> dict:
    """Step, loss, lr, it/s and ETA from the latest rows. it/s is the rate of the run's training progress
    events (wall clock: checkpoints and validation included) when known, else the median over the last
    20 steps' own time."""
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


class RunStream:
    """What changed since the last poll of one run, as SSE events."""

    def __init__(self, manager: RunManager, paths: ProjectPaths, run):
        self.manager, self.paths, self.run_id = manager, paths, run.id
        self.output_dir = Path(run.output_dir)
        self.events = RunEvents(run.events_path)
        self.log = FileTail(Path(run.log_path))
        self.rows: list[dict[str, float]] = []
        self.planned = planned_steps(run.snapshot())
        self.last_status = self.last_outputs = self.last_current = None

    def status(self, run) -> list[str]:
        key = (run.status, run.exit_code, run.error, run.started_at)
        if key == self.last_status:
            return []
        self.last_status = key
        return [sse("status", run.to_dict(self.paths))]

    def log_lines(self) -> list[str]:
        lines = [shown for line in self.log.read_lines() if (shown := collapse_cr(line))]
        current = self.log.pending()
        if not lines and current == self.last_current:
            return []
        self.last_current = current
        return [sse("log", {"lines": lines, "current": current})]

    def metric_rows(self) -> list[str]:
        new_rows = [{key: float(value) for key, value in event.items()
                     if isinstance(value, int | float) and key not in ("time", "event")}
                    for event in self.events.read() if event.get("event") == "step"]
        if not new_rows:
            return []
        self.rows += new_rows
        state = self.events.state
        summary = summarize(self.rows, state.total_steps or self.planned, state.it_per_s)
        return [sse("metrics", {"rows": new_rows, "reset": False, "summary": summary})]

    def outputs(self) -> list[str]:
        outputs = list_outputs(self.output_dir, self.paths)
        if outputs == self.last_outputs:
            return []
        self.last_outputs = outputs
        return [sse("outputs", outputs)]


async def run_events(manager: RunManager, paths: ProjectPaths, run_id: int, poll_seconds: float = 0.4,
                     keepalive_seconds: float = 15.0) -> AsyncIterator[str]:
    run = manager.get(run_id)
    if run is None:
        return
    stream = RunStream(manager, paths, run)
    quiet = 0.0
    yield "retry: 2000\n\n"
    while True:
        run = manager.get(run_id)
        if run is None:
            return
        sent = [*stream.status(run), *stream.log_lines(), *stream.metric_rows(), *stream.outputs()]
        for event in sent:
            yield event
        if run.finished and not sent:
            yield sse("end", run.to_dict(paths))
            return
        quiet = 0.0 if sent else quiet + poll_seconds
        if quiet >= keepalive_seconds:  # a comment line keeps proxies and the browser from timing out
            quiet = 0.0
            yield ": keep-alive\n\n"
        await asyncio.sleep(poll_seconds)
