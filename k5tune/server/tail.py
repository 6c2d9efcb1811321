"""Reading files a run is still writing: whole new lines of a growing file, and the end of a log."""

from __future__ import annotations

import os
from pathlib import Path


def read_tail(path: str | Path, lines: int = 40, max_bytes: int = 256 * 1024) -> list[str]:
    """The last `lines` lines of a log, progress-bar redraws (carriage returns) collapsed."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, size - max_bytes))
        data = handle.read().decode("utf-8", errors="replace")
    return [shown for line in data.split("\n") if (shown := collapse_cr(line))][-lines:]


def collapse_cr(line: str) -> str:
    """tqdm redraws a line with '\\r': what a terminal shows is the last non-empty redraw."""
    parts = [part for part in line.split("\r") if part.strip()]
    return parts[-1].rstrip() if parts else ""


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
