"""Structured events of a run, one JSON object per line: what the web UI (and any other tool) reads to
know a run's state, instead of parsing its printed text.

Events: `run` (started: config, output folder, planned steps, resume point), `stage` (caching, training,
... with its size), `progress` (throttled: done/total and step metrics), `log` (a message the run
printed), `step` (one metrics row), `checkpoint`, `validation` (the videos of a step), and `end` with
the outcome (`completed`, `stopped`, `failed` with the error, its message and whether it is the user's
to fix) and the LoRA path. A run refused before it starts (config.json rejected) writes `run` and `end`
to the K5TUNE_EVENTS file alone.

The file is the one K5TUNE_EVENTS names (the server gives each run its own), else
`<output_dir>/events.jsonl`, appended to by every run in that folder; each run's events carry its id.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import IO, Any

from k5tune.errors import K5TuneError
from k5tune.progress import Progress

EVENTS_FILE = "events.jsonl"
EVENTS_ENV = "K5TUNE_EVENTS"
_PROGRESS_EVERY_S = 0.5


def events_path(output_dir: Path) -> Path:
    return Path(os.environ[EVENTS_ENV]) if os.environ.get(EVENTS_ENV) else output_dir / EVENTS_FILE


class EventLog:
    """Appends events to a file (None: writes nothing, e.g. in the other processes of a multi-GPU run)."""

    def __init__(self, path: Path | None):
        self.run_id = uuid.uuid4().hex[:12]
        self.path = path
        self._handle: IO[str] | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = path.open("a", encoding="utf-8")

    def emit(self, event: str, **fields: Any) -> None:
        if self._handle is None:
            return
        record = {"time": round(time.time(), 3), "run": self.run_id, "event": event, **fields}
        self._handle.write(json.dumps(record, default=str, ensure_ascii=False) + "\n")
        self._handle.flush()  # a reader sees every event as soon as it happens

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def failure(exc: BaseException) -> dict[str, Any]:
    """The fields of a failed run's `end` event: the error as `Type: message`, the message alone, and
    whether it is the user's to fix (a K5TuneError, which the CLI prints as `k5tune: error: message`)."""
    return {"outcome": "failed", "error": f"{type(exc).__name__}: {exc}", "message": str(exc),
            "user_error": isinstance(exc, K5TuneError)}


def record_early_failure(exc: BaseException, command: str = "train") -> None:
    """A run refused before it knew its output folder (config.json or an override rejected): recorded
    only in the file K5TUNE_EVENTS names, since there is no output folder to write to yet."""
    if not os.environ.get(EVENTS_ENV):
        return
    events = EventLog(Path(os.environ[EVENTS_ENV]))
    events.emit("run", command=command)
    events.emit("end", **failure(exc))
    events.close()


class EventProgress:
    """A Progress that also records what it shows as events (progress at most twice a second)."""

    def __init__(self, inner: Progress, events: EventLog):
        self.inner, self.events = inner, events
        self.stage, self.total, self.done, self._last = "", 0, 0, 0.0

    def start(self, stage: str, total: int) -> None:
        self.inner.start(stage, total)
        self.stage, self.total, self.done, self._last = stage, total, 0, 0.0
        self.events.emit("stage", name=stage, total=total)

    def advance(self, n: int = 1, **info) -> None:
        self.inner.advance(n, **info)
        self.done += n
        now = time.monotonic()
        if now - self._last >= _PROGRESS_EVERY_S or self.done >= self.total:
            self._last = now
            self.events.emit("progress", stage=self.stage, done=self.done, total=self.total, **info)

    def end(self) -> None:
        self.inner.end()

    def log(self, message: str) -> None:
        self.inner.log(message)
        self.events.emit("log", message=message)
