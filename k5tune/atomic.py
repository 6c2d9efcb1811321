"""Writing files whole or not at all: a temporary file in the target's folder, then os.replace.

Everything k5tune writes that a user or a later run relies on (caches, reports, configs, LoRA files,
checkpoints, videos) goes through here, so a crash or Ctrl-C never leaves a half file under a trusted
name. Temporary files start with `.tmp-`, which is how leftovers are recognised and cleaned.

Two more promises: files come out with the permissions the user's umask gives a new file (mkstemp
alone would make them 0600), and a full disk is one `DiskFull` error that names the file, whatever
library was writing (torch.save reports it as "unexpected pos", safetensors as its own error).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from k5tune.errors import K5TuneError

TMP_PREFIX = ".tmp-"
_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
# After a failed write, this little space left means the disk filled up (a library that writes from
# C/Rust may not pass the OSError on).
_NEARLY_FULL_BYTES = 1 << 20


class DiskFull(K5TuneError):
    """No space left where a file was being written; the file was not written (nothing half-written)."""

    def __init__(self, path: Path):
        self.path = path
        super().__init__(f"the disk is full: could not write {path} (nothing was left half-written; "
                         "free some space, then run again — a training run resumes with "
                         "--resume_from_checkpoint latest)")


def _new_file_mode() -> int:
    """What a plain open() would give a new file under this process's umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def is_disk_full(exc: BaseException, folder: Path | None = None) -> bool:
    """Whether `exc` (or an exception it wraps) says the disk is full; with `folder`, also whether that
    folder's file system has (nearly) no space left after the failure."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _DISK_FULL_ERRNOS:
            return True
        if "No space left on device" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    if folder is not None and not isinstance(exc, KeyboardInterrupt | K5TuneError):
        try:
            return shutil.disk_usage(folder).free < _NEARLY_FULL_BYTES
        except OSError:
            return False
    return False


@contextlib.contextmanager
def atomic_target(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path to write; it replaces `path` when the block ends without an error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(temporary)
        os.chmod(temporary, _new_file_mode())
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException as exc:
        Path(temporary).unlink(missing_ok=True)
        if is_disk_full(exc, path.parent):
            raise DiskFull(path) from exc
        raise


def open_for_writing(path: Path) -> IO[bytes]:
    """The file object every atomic write goes through (tests replace it to simulate a full disk)."""
    return open(path, "wb")


@contextlib.contextmanager
def atomic_file(path: str | Path, suffix: str = "") -> Iterator[IO[bytes]]:
    """Yield an open binary file whose content replaces `path` when the block ends without an error.

    Libraries that can write to a Python file object (torch.save, our own bytes) should use this
    rather than `atomic_target`: their write errors then reach Python as OSErrors."""
    with atomic_target(path, suffix) as temporary, open_for_writing(temporary) as handle:
        yield handle
        handle.flush()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_file(path) as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, value: Any, *, sort_keys: bool = False) -> Path:
    text = json.dumps(value, indent=2, sort_keys=sort_keys, ensure_ascii=False, default=str) + "\n"
    return atomic_write_text(path, text)


def atomic_torch_save(path: str | Path, value: Any) -> Path:
    """torch.save through a Python file object, so a full disk is reported as such."""
    import torch

    with atomic_file(path) as handle:
        torch.save(value, handle)
    return Path(path)


def atomic_save_safetensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """A safetensors file, serialised in memory and written through `atomic_file`."""
    from safetensors.torch import save

    return atomic_write_bytes(path, save(tensors, metadata=metadata))
