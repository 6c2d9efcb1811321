"""A run's state and outcome, from the structured events its `k5tune train` writes (train/events.py).

The server names each run's events file through K5TUNE_EVENTS (the run's own folder under the server's
state), so the file holds that run alone. Nothing here reads the run's printed text: the log is only
shown to the user.
"""

from __future__ import annotations

import json
import signal
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from k5tune.server.runs.store import COMPLETED, FAILED, STOPPED, Run
from k5tune.server.tail import FileTail

# how a process ends when a stop was asked for: SIGINT's exit (130 or the signal), or a forced kill
_STOP_EXITS = (130, -signal.SIGINT, -signal.SIGKILL, -signal.SIGTERM)
_RATE_SAMPLES = 12  # training progress events (at most two a second) the it/s is measured over


@dataclass
class RunState:
    """What a run's events said so far."""

    stage: str | None = None
    total_steps: int | None = None
    start_step: int | None = None
    resumed_from: str | None = None
    end: dict | None = None  # the `end` event: outcome, error, message, user_error, lora, checkpoint
    steps: list[dict] = field(default_factory=list)  # `step` events: one metrics row each
    checkpoints: list[dict] = field(default_factory=list)
    _progress: deque = field(default_factory=lambda: deque(maxlen=_RATE_SAMPLES))

    def apply(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "stage":
            self.stage = event.get("name")
        elif kind == "training":
            self.total_steps = event.get("total_steps")
            self.start_step = event.get("start_step")
            self.resumed_from = event.get("resumed_from")
        elif kind == "progress" and event.get("stage") == "training":
            self.total_steps = event.get("total") or self.total_steps
            self._progress.append((float(event.get("time", 0.0)), int(event.get("done", 0))))
        elif kind == "step":
            self.steps.append({k: v for k, v in event.items() if k not in ("time", "run", "event")})
        elif kind == "checkpoint":
            self.checkpoints.append({"step": event.get("step"), "path": event.get("path")})
        elif kind == "end":
            self.end = event

    @property
    def it_per_s(self) -> float | None:
        """Training steps a second over the last progress events (wall clock: checkpoints and
        validation included), or None before there are two."""
        if len(self._progress) < 2:
            return None
        (t0, done0), (t1, done1) = self._progress[0], self._progress[-1]
        return (done1 - done0) / (t1 - t0) if t1 > t0 and done1 > done0 else None


class RunEvents:
    """One run's events file, read as it grows, folded into a RunState."""

    def __init__(self, path: Path):
        self.tail = FileTail(Path(path))
        self.state = RunState()

    def read(self) -> list[dict]:
        """The events appended since the last call (all of them, however many)."""
        events = []
        while lines := self.tail.read_lines():
            if self.tail.reset:
                self.state, events = RunState(), []
            for line in lines:
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a kill: the rest of the file still counts
                if isinstance(event, dict):
                    self.state.apply(event)
                    events.append(event)
        return events


def read_state(path: Path) -> RunState:
    events = RunEvents(path)
    events.read()
    return events.state


def outcome(run: Run, exit_code: int | None, state: RunState) -> tuple[str, str | None]:
    """(status, error) of a run whose process ended with `exit_code` (None: unknown, the run was
    adopted from an earlier server or ended while none was up)."""
    said = state.end.get("outcome") if state.end else None
    if exit_code == 0 or (exit_code is None and said in (COMPLETED, STOPPED)):
        return (STOPPED if said == STOPPED else COMPLETED), None
    if run.stop_requested and exit_code in _STOP_EXITS:
        return STOPPED, None  # stopped before training began (caching), or killed on request
    return FAILED, error_summary(state.end, exit_code)


def error_summary(end: dict | None, exit_code: int | None) -> str:
    """One line for the run list: the run's own error (a user's mistake as the CLI words it), else how
    the process ended."""
    if end and end.get("outcome") == FAILED and end.get("error"):
        text = f"k5tune: error: {end.get('message', '')}" if end.get("user_error") else str(end["error"])
        return text.strip().splitlines()[0] if text.strip() else text
    if exit_code is not None and exit_code < 0:
        return f"killed by signal {signal.Signals(-exit_code).name}"
    return f"exited with code {exit_code}" if exit_code is not None else "ended while the server was down"
