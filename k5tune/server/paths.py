"""Confinement: every file the server reads, writes or serves lies inside the project folder.

A path from a request is resolved (symlinks followed, `..` collapsed) against the project root and
refused when the result is outside it: `../x`, `/etc/passwd` and a symlink pointing out all fail.
"""

from __future__ import annotations

import os
from pathlib import Path


class PathRefused(Exception):
    """A request named a file outside the project folder (the app answers 403)."""


class ProjectPaths:
    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()

    def resolve(self, user_path: str | os.PathLike, *, must_exist: bool = False) -> Path:
        """The absolute, symlink-free path of `user_path` (relative to the root), if inside the root."""
        text = os.fspath(user_path)
        if not text or "\x00" in text:
            raise PathRefused(f"not a usable path: {text!r}")
        candidate = Path(text).expanduser()
        if not candidate.is_absolute():
            candidate = self.root / candidate
        # strict=False: a file about to be written need not exist; symlinks on the way are still followed
        resolved = candidate.resolve(strict=False)
        if resolved != self.root and self.root not in resolved.parents:
            raise PathRefused(f"{text} is outside the project folder {self.root}")
        if must_exist and not resolved.exists():
            raise FileNotFoundError(text)
        return resolved

    def relative(self, path: str | Path) -> str:
        """How a path inside the root is shown to the page: relative, with forward slashes."""
        resolved = Path(path).resolve(strict=False)
        try:
            return resolved.relative_to(self.root).as_posix() or "."
        except ValueError:
            return str(resolved)

    def inside(self, path: str | Path) -> bool:
        try:
            self.resolve(path)
        except PathRefused:
            return False
        return True
