"""A folder of safetensors files addressed by content keys.

Every entry is written to a temporary file in the same folder and renamed into place, so a process
killed mid-write leaves either the old state or the new entry, never a half file under a trusted
name. Leftover temporary files are ignored and removed on the next open. The manifest (one JSON
file) records what each entry was made from, for people and reports; the files themselves are the
truth, so a lost manifest costs nothing.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from k5tune.atomic import TMP_PREFIX, atomic_save_safetensors, atomic_write_json

_TMP_PREFIX = TMP_PREFIX
MANIFEST = "manifest.json"


def content_key(**parts: Any) -> str:
    """A stable hex key from everything that changes a cached result."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:40]


class TensorStore:
    """Entries `<key>.safetensors` under `root/<key[:2]>/`, plus `manifest.json`."""

    def __init__(self, root: str | Path, clean_leftovers: bool = True):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        if clean_leftovers:
            self._remove_leftovers()
        self._manifest: dict[str, Any] = self._read_manifest()
        self._dirty = False

    def _remove_leftovers(self) -> None:
        for leftover in self.root.rglob(f"{_TMP_PREFIX}*"):
            leftover.unlink(missing_ok=True)

    def _read_manifest(self) -> dict[str, Any]:
        path = self.root / MANIFEST
        try:
            return json.loads(path.read_text()) if path.is_file() else {}
        except (OSError, json.JSONDecodeError):
            return {}  # the manifest is descriptive only; entries are verified from their files

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def put(self, key: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None = None) -> None:
        atomic_save_safetensors(self.path(key), {k: v.detach().contiguous().cpu() for k, v in tensors.items()})
        self._manifest[key] = meta or {}
        self._dirty = True

    def get(self, key: str) -> dict[str, torch.Tensor]:
        try:
            return load_file(self.path(key))
        except (SafetensorError, OSError) as exc:
            raise KeyError(f"cache entry {key} in {self.root} is unreadable: {exc}") from exc

    def verified(self, key: str) -> bool:
        return self.problem(key) is None

    def problem(self, key: str) -> str | None:
        """Why the entry cannot be used, or None: "missing", or "unreadable" / "NaN/inf values" (a torn or
        truncated file; a NaN inside a valid file), in which case it is deleted, to be encoded again."""
        if not self.has(key):
            return "missing"
        try:
            if all(torch.isfinite(t).all() for t in load_file(self.path(key)).values()):
                return None
            problem = "NaN/inf values"
        except (SafetensorError, OSError):
            problem = "unreadable"
        self.path(key).unlink(missing_ok=True)
        return problem

    def save_manifest(self) -> None:
        """Merge our entries into the manifest on disk under a lock (several processes may cache)."""
        if not self._dirty:
            return
        import fcntl

        with (self.root / ".manifest.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            merged = {**self._read_manifest(), **self._manifest}
            atomic_write_json(self.root / MANIFEST, merged, sort_keys=True)
            self._manifest = merged
        self._dirty = False

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*.safetensors"))

    def __len__(self) -> int:
        return sum(1 for _ in self.root.rglob("*.safetensors"))
