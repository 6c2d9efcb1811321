"""The two files on disk: the existing ones read tolerantly (their values become the defaults, keys the
schema rejects are dropped with a note), which dataset file the config names, and the atomic write.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from k5tune.atomic import atomic_write_json
from k5tune.config.datasets import ImageBackend, TextEmbedsBackend, VideoBackend
from k5tune.config.fields import bare_key, canonical_config, canonical_key
from k5tune.config.loading import EXAMPLES_DIR, build_train_config
from k5tune.config.schema import TrainConfig


def example(name: str) -> Any:
    return json.loads((EXAMPLES_DIR / f"{name}.example").read_text(encoding="utf-8"))


def _read_json(path: Path, notes: list[str], kind: type, not_kind: str) -> tuple[Any, bool]:
    """(content or None, whether the file exists but cannot be used: not JSON, or JSON not of `kind`,
    which `not_kind` says in a note)."""
    if not path.is_file():
        return None, False
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        notes.append(f"{path} cannot be read ({exc}); starting from defaults (the old file is kept as "
                     f"{path.name}.bak when the new one is written)")
        return None, True
    if not isinstance(content, kind):
        notes.append(f"{path} {not_kind}")
        return None, True
    return content, False


def _drop_invalid(entry: dict[str, Any], model: type[BaseModel], what: str,
                  notes: list[str]) -> tuple[dict[str, Any], bool]:
    """Remove the keys the schema rejects (one note each). Returns the entry and whether it is now valid
    (not when a required key is missing or a rule spans several keys: the final check then reports it)."""
    entry = copy.deepcopy(entry)
    for _ in range(100):  # each pass removes at least one key
        try:
            model.model_validate(entry)
            return entry, True
        except ValidationError as exc:
            removed = False
            for error in exc.errors():
                loc = [str(part) for part in error["loc"]]
                if not loc or loc[0] not in entry:
                    continue
                holder, key = entry, loc[0]
                if len(loc) > 1 and isinstance(entry[loc[0]], dict) and loc[1] in entry[loc[0]]:
                    holder, key = entry[loc[0]], loc[1]
                if key in holder:
                    notes.append(f"{what}: dropped '{'.'.join(loc[:2])}' ({error['msg']})")
                    del holder[key]
                    removed = True
            if not removed:
                return entry, False
    return entry, False


def _canonical_config(raw: dict[str, Any], notes: list[str], where: str) -> dict[str, Any]:
    """Keys as field names: `--key` and aliases (`framerate`) become the one name the schema declares."""
    for key in raw:
        name = canonical_key(key) or bare_key(key)
        if name != key:
            notes.append(f"{where}: key '{key}' is written as '{name}'")
    return canonical_config(raw)


@dataclass
class Existing:
    """What is on disk, cleaned so that every key left is valid on its own."""

    config: dict[str, Any]
    datasets: list[dict[str, Any]]
    config_found: bool
    datasets_found: bool
    damaged: list[Path] = field(default_factory=list)  # replaced files that get a .bak copy
    notes: list[str] = field(default_factory=list)


def load_existing_config(path: Path, notes: list[str]) -> tuple[dict[str, Any] | None, bool]:
    raw, broken = _read_json(path, notes, dict, "is not a JSON object of settings; starting from defaults")
    if raw is None:
        return None, broken
    canonical = _canonical_config(raw, notes, str(path))
    cleaned, valid = _drop_invalid(canonical, TrainConfig, str(path), notes)
    if not valid:  # a rule across keys (push_to_hub without hub_model_id): say so before any question
        build_train_config(cleaned, str(path))
    return cleaned, cleaned != canonical


_BACKEND_MODELS: dict[str, type[BaseModel]] = {
    "video": VideoBackend, "image": ImageBackend, "text_embeds": TextEmbedsBackend,
}


def load_existing_datasets(path: Path, notes: list[str]) -> tuple[list[dict[str, Any]] | None, bool]:
    raw, broken = _read_json(path, notes, list, "is not a JSON list of backends; starting from the example")
    if raw is None:
        return None, broken
    kept: list[dict[str, Any]] = []
    damaged = False
    for position, entry in enumerate(raw):
        label = f"{path}, backend '{entry.get('id', position + 1) if isinstance(entry, dict) else position + 1}'"
        model = _BACKEND_MODELS.get(entry.get("dataset_type")) if isinstance(entry, dict) else None
        cleaned, valid = _drop_invalid(entry, model, label, notes) if model else (None, False)
        if cleaned is None or not valid:
            notes.append(f"{label}: dropped (not a usable backend)")
            damaged = True
            continue
        damaged = damaged or cleaned != entry
        kept.append(cleaned)
    return kept, damaged


def load_existing(config_path: Path, datasets_path: Path) -> Existing:
    notes: list[str] = []
    config, config_damaged = load_existing_config(config_path, notes)
    datasets, datasets_damaged = load_existing_datasets(datasets_path, notes)
    existing = Existing(
        config=config if config is not None else example("config.json"),
        datasets=datasets if datasets is not None else example("multidatabackend.json"),
        config_found=config is not None,
        datasets_found=datasets is not None,
        notes=notes,
    )
    existing.damaged = [p for p, bad in ((config_path, config_damaged), (datasets_path, datasets_damaged)) if bad]
    return existing


def datasets_path_for(config_path: Path, explicit: str | None, directory: str) -> Path:
    """The dataset file: --datasets, else the one the existing config names, else <directory>/multidatabackend.json."""
    if explicit:
        return Path(explicit)
    if config_path.is_file():
        try:
            raw = json.loads(config_path.read_text(encoding="utf-8"))
            named = raw.get("data_backend_config") or raw.get("--data_backend_config")
            if isinstance(named, str) and named:
                return Path(named)
        except (OSError, ValueError, AttributeError):
            pass
    return Path(directory) / "multidatabackend.json"


def write_files(say: Callable[[str], None], config_path: Path, config: dict[str, Any], datasets_path: Path,
                datasets: list[dict[str, Any]], folders: list[Path], damaged: list[Path]) -> None:
    """Create the folders asked for, keep a .bak of each damaged file, then write both files atomically."""
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        say(f"created {folder}")
    for path in damaged:
        if path.is_file():
            shutil.copy2(path, path.with_name(path.name + ".bak"))
            say(f"kept the old {path} as {path.name}.bak")
    atomic_write_json(datasets_path, datasets)  # indent 2, UTF-8 as typed, final newline
    atomic_write_json(config_path, config)
    say(f"wrote {config_path} and {datasets_path}")
