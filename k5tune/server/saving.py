"""Saving the user's files from the web UI: whole or not at all (atomic.py), and never losing what was
there: the version a save replaces is kept under the server's state folder first, newest KEEP of each.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from k5tune.atomic import atomic_write_bytes, atomic_write_text
from k5tune.server.paths import ProjectPaths

BACKUPS = "backups"
KEEP = 50


def backup_folder(paths: ProjectPaths, state_dir: Path, file: Path) -> Path:
    """<state>/backups/<the file's path in the project>/: one copy per save, named by time."""
    return Path(state_dir) / BACKUPS / paths.relative(file)


def save_keeping_previous(paths: ProjectPaths, state_dir: Path, file: Path, text: str) -> str | None:
    """Write `text` to `file`; a different earlier version is copied aside first. Returns where that
    copy lies (relative to the project), or None when there was nothing to keep."""
    kept = None
    if file.is_file():
        previous = file.read_bytes()
        if previous != text.encode("utf-8"):
            folder = backup_folder(paths, state_dir, file)
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
            kept = atomic_write_bytes(folder / f"{stamp}-{file.name}", previous)
            for old in sorted(folder.glob(f"*-{file.name}"))[:-KEEP]:
                old.unlink(missing_ok=True)
    atomic_write_text(file, text)
    return paths.relative(kept) if kept else None
