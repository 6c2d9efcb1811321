"""User-facing errors: the CLI prints them as one line and exits with code 2."""

from __future__ import annotations


class K5TuneError(Exception):
    """A mistake the user can fix; never shown with a traceback."""

    exit_code = 2


class ConfigError(K5TuneError):
    """A problem in config.json, the dataset file or a command-line override."""

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None):
        self.file = file
        self.key = key
        self.message = message  # without the "file, key '...': " lead, for places that show file and key apart
        where = ", ".join(part for part in (file, f"key '{key}'" if key else None) if part)
        super().__init__(f"{where}: {message}" if where else message)


class DatasetError(K5TuneError):
    """A dataset that cannot be used (no clips left, unreadable folder...)."""


class OutOfGpuMemory(K5TuneError):
    """Training ran out of GPU memory: the message says what would fit (estimate/preflight.py)."""
