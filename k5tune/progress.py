"""Progress reporting shared by the CLI (tqdm bars) and the server (events).

Long-running functions take a `Progress` and call `start(stage, total)`, `advance(n)` and
`end()`; nothing else about the display leaks into them.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def start(self, stage: str, total: int) -> None: ...
    def advance(self, n: int = 1, **info) -> None: ...
    def end(self) -> None: ...
    def log(self, message: str) -> None: ...


class SilentProgress:
    def start(self, stage: str, total: int) -> None:
        pass

    def advance(self, n: int = 1, **info) -> None:
        pass

    def end(self) -> None:
        pass

    def log(self, message: str) -> None:
        pass


class TqdmProgress:
    """One tqdm bar per stage, on stderr."""

    def __init__(self) -> None:
        self._bar = None

    def start(self, stage: str, total: int) -> None:
        from tqdm import tqdm

        self.end()
        self._bar = tqdm(total=total, desc=stage, unit="it", dynamic_ncols=True, leave=True)

    def advance(self, n: int = 1, **info) -> None:
        if self._bar is None:
            return
        if info:
            self._bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in info.items()}, refresh=False)
        self._bar.update(n)

    def end(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def log(self, message: str) -> None:
        from tqdm import tqdm

        tqdm.write(message)
