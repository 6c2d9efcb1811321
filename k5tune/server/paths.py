"""Confinement: every file the server reads, writes or serves lies inside the project folder, or under
a root the person running the server allowed explicitly (`k5tune server --allow-root DIR`).

A path from a request is resolved (symlinks followed, `..` collapsed) against the project root and
refused when the result is outside every root: `../x`, `/etc/passwd` and a symlink pointing out all fail.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


class PathRefused(Exception):
    """A request named a file outside the project folder (the app answers 403). `key`: the setting that
    named it, where one did (the page marks that field)."""

    def __init__(self, message: str, *, key: str | None = None, file: str | None = None,
                 backend: int | None = None):
        super().__init__(message)
        self.key, self.file, self.backend = key, file, backend

    def field_error(self) -> dict:
        """As forms.field_error words a loader error: {message, key, field, backend, text}."""
        return {"message": str(self), "key": self.key, "field": self.key.split(".")[0] if self.key else None,
                "backend": self.backend, "text": str(self), "file": self.file}


class ProjectPaths:
    def __init__(self, root: str | Path, allowed_roots: Iterable[str | Path] = ()):
        self.root = Path(root).resolve()
        self.allowed = [Path(extra).expanduser().resolve() for extra in allowed_roots]

    @property
    def roots(self) -> list[Path]:
        return [self.root, *self.allowed]

    def within(self, resolved: Path) -> bool:
        return any(resolved == root or root in resolved.parents for root in self.roots)

    def resolve(self, user_path: str | os.PathLike, *, must_exist: bool = False, key: str | None = None,
                base: Path | None = None) -> Path:
        """The absolute, symlink-free path of `user_path` (relative to `base`, else the root), if inside
        a root; `key` names the setting it came from in the refusal."""
        text = os.fspath(user_path)
        if not text or "\x00" in text:
            raise PathRefused(f"not a usable path: {text!r}", key=key)
        candidate = Path(text).expanduser()
        if not candidate.is_absolute():
            candidate = (base or self.root) / candidate
        # strict=False: a file about to be written need not exist; symlinks on the way are still followed
        resolved = candidate.resolve(strict=False)
        if not self.within(resolved):
            where = f"{key}: " if key else ""
            raise PathRefused(f"{where}{text} is outside the project folder {self.root}"
                              + (" and the allowed roots" if self.allowed else "")
                              + " (start the server with --allow-root to allow a folder)", key=key)
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

    def links_out(self, folder: Path, limit: int = 200_000) -> Path | None:
        """The first entry under `folder` (a symlink, file or folder) that resolves outside every root,
        or None; at most `limit` entries are looked at."""
        seen = 0
        for current, dirs, files in os.walk(folder, followlinks=False):
            for name in [*dirs, *files]:
                entry = Path(current) / name
                if entry.is_symlink() and not self.within(entry.resolve(strict=False)):
                    return entry
                seen += 1
                if seen >= limit:
                    return None
        return None
