"""Ctrl-C and SIGTERM during training: the first asks for a clean stop (finish the step, save a
checkpoint), a second aborts at once."""

from __future__ import annotations

import signal
import threading

from k5tune.progress import Progress


class StopRequests:
    def __init__(self, progress: Progress):
        self.requested = False
        self._progress = progress
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self._progress.log(f"{signal.Signals(signum).name}: finishing this step and saving a checkpoint "
                           "(press Ctrl-C again to abort at once)")

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
