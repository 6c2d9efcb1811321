"""Writing files whole or not at all: a temporary file in the target's folder, then os.replace.

Everything k5tune writes that a user or a later run relies on (caches, reports, configs, LoRA files,
videos) goes through here, so a crash or Ctrl-C never leaves a half file under a trusted name.
Temporary files start with `.tmp-`, which is how leftovers are recognised and cleaned.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def atomic_target(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path to write; it replaces `path` when the block ends without an error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_target(path) as temporary:
        temporary.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, value: Any, *, sort_keys: bool = False) -> Path:
    text = json.dumps(value, indent=2, sort_keys=sort_keys, ensure_ascii=False, default=str) + "\n"
    return atomic_write_text(path, text)
