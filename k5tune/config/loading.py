"""Load config.json and the dataset file, apply command-line overrides, and turn every mistake into
one ConfigError that names the file, the key and what would be valid.

Relative paths inside both files are relative to the folder k5tune runs in (as in the guide), not
to the config file.
"""

from __future__ import annotations

import difflib
import json
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from k5tune.config.datasets import (
    MEDIA_TYPES,
    DatasetBackend,
    ImageBackend,
    TextEmbedsBackend,
    VideoBackend,
    VideoOptions,
)
from k5tune.config.fields import bare_key, canonical_key, known_keys, limits_at, valid_range
from k5tune.config.frames import MIN_I2V_FRAMES
from k5tune.config.schema import TrainConfig
from k5tune.errors import ConfigError

DEFAULT_CONFIG_PATH = "config/config.json"
EXAMPLES_DIR = Path(__file__).parent / "examples"
_BACKEND_LIST = TypeAdapter(list[DatasetBackend])
_BACKEND_MODELS = {"video": VideoBackend, "image": ImageBackend, "text_embeds": TextEmbedsBackend}


@dataclass
class LoadedConfig:
    """Both files, validated. Nothing downstream reads the files again."""

    train: TrainConfig
    datasets: list = field(default_factory=list)
    config_path: Path | None = None
    dataset_path: Path | None = None

    @property
    def media_backends(self) -> list:
        return [b for b in self.datasets if b.dataset_type in MEDIA_TYPES and not b.disabled]

    @property
    def text_embeds_backend(self) -> TextEmbedsBackend:
        candidates = [b for b in self.datasets if b.dataset_type == "text_embeds" and not b.disabled]
        defaults = [b for b in candidates if b.default]
        return (defaults or candidates)[0]

    def notices(self) -> list[str]:
        return self.train.notices()

    def resolved(self) -> dict[str, Any]:
        return {
            "config_file": str(self.config_path) if self.config_path else None,
            "config": self.train.model_dump(mode="json"),
            "dataset_file": str(self.dataset_path) if self.dataset_path else None,
            "datasets": [b.model_dump(mode="json") for b in self.datasets],
        }


# --------------------------------------------------------------------------------------------------
# command-line overrides


def parse_overrides(args: Sequence[str]) -> dict[str, Any]:
    """`--key=value`, `--key value` and bare `--flag` (true) into raw values.

    Values are read as JSON where they parse (numbers, true/false, null, objects, lists) and kept as
    text otherwise; the schema then checks and converts types. Text-typed keys keep the raw text.
    """
    overrides: dict[str, Any] = {}
    index = 0
    while index < len(args):
        token = args[index]
        if not token.startswith("--") or token == "--":
            raise ConfigError(f"unexpected argument '{token}'; settings are given as --key=value or --key value")
        body = token[2:]
        if "=" in body:
            key, raw = body.split("=", 1)
        elif index + 1 < len(args) and not args[index + 1].startswith("--"):
            key, raw = body, args[index + 1]
            index += 1
        else:
            key, raw = body, "true"
        key = key.replace("-", "_")
        overrides[key] = _typed_value(key, raw)
        index += 1
    return overrides


def _typed_value(key: str, raw: str) -> Any:
    field_name = canonical_key(key)
    if field_name is not None and _is_text_field(field_name) and raw.strip()[:1] not in ("{", "[") and raw != "null":
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _is_text_field(name: str) -> bool:
    annotation = TrainConfig.model_fields[name].annotation
    members = typing.get_args(annotation) or (annotation,)
    return str in members or any(typing.get_origin(m) is typing.Literal for m in members)


# --------------------------------------------------------------------------------------------------
# files


def _read_json(path: Path, what: str, how_to_make: str) -> Any:
    if not path.is_file():
        raise ConfigError(f"{what} not found. {how_to_make}", file=str(path))
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}", file=str(path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=str(path)) from None


def _closest(key: str, known: typing.Iterable[str]) -> str:
    match = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f"; did you mean '{match[0]}'?" if match else ""


def _check_unknown_keys(
    raw: dict[str, Any], file: str, known: dict[str, str], label: str = "", prefix: str = ""
) -> None:
    for key in raw:
        if key not in known:
            lead = f"{label}: " if label else ""
            raise ConfigError(f"{lead}unknown key{_closest(key, known)}", file=file, key=prefix + key)


_BOUND_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")


def _first_error(exc: ValidationError, file: str, prefix: str = "", model: Any = None) -> ConfigError:
    error = exc.errors()[0]
    parts = [part for part in error["loc"] if not str(part).startswith("function-after")]
    location = ".".join(str(part) for part in parts)
    message = error["msg"]
    if error["type"] in _BOUND_ERRORS and (span := valid_range(limits_at(model, parts))):
        message = f"{message} (valid range: {span})"
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if error["type"] == "literal_error":
        message = f"'{error['input']}' is not valid; {message[0].lower()}{message[1:]}"
    elif error["type"] not in ("value_error", "missing") and "input" in error:
        message = f"{message} (got {json.dumps(error['input'], default=str)})"
    return ConfigError(message, file=file, key=(prefix + location) if location else None)


def _normalise_keys(raw: dict[str, Any]) -> dict[str, Any]:
    """Accept SimpleTuner-style keys written with a leading '--' (aliases stay as written: the schema
    takes them, and a field given under two names is an error)."""
    return {bare_key(key): value for key, value in raw.items()}


def build_train_config(raw: dict[str, Any], file: str) -> TrainConfig:
    raw = _normalise_keys(raw)
    _check_unknown_keys(raw, file, known_keys())
    seen: dict[str, str] = {}
    for key in raw:
        name = known_keys()[key]
        if name in seen:
            raise ConfigError(f"given twice, as '{seen[name]}' and '{key}'; keep one", file=file, key=name)
        seen[name] = key
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        raise _first_error(exc, file, model=TrainConfig) from None


def build_datasets(raw: Any, file: str) -> list:
    if not isinstance(raw, list):
        raise ConfigError(
            "the dataset file must be a JSON list of backends, e.g. [{\"id\": \"my-videos\", \"dataset_type\": "
            "\"video\", ...}, {\"id\": \"text-embeds\", \"dataset_type\": \"text_embeds\", \"default\": true}]",
            file=file,
        )
    for position, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise ConfigError(f"backend #{position + 1} is not a JSON object", file=file)
        kind = entry.get("dataset_type")
        label = f"backend '{entry.get('id', f'#{position + 1}')}'"
        if kind not in ("video", "image", "text_embeds"):
            raise ConfigError(
                f"{label}: dataset_type {json.dumps(kind)} is not valid; use 'video', 'image' or 'text_embeds'",
                file=file,
                key="dataset_type",
            )
        model = _BACKEND_MODELS[kind]
        _check_unknown_keys(entry, file, {k: k for k in model.model_fields}, label)
        if kind == "video" and isinstance(entry.get("video"), dict):
            _check_unknown_keys(entry["video"], file, {k: k for k in VideoOptions.model_fields}, label, "video.")
        try:
            model.model_validate(entry)
        except ValidationError as exc:
            error = _first_error(exc, file, model=model)
            raise ConfigError(f"{label}: {error.message}", file=file, key=error.key) from None
    backends = _BACKEND_LIST.validate_python(raw)
    ids = [b.id for b in backends]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ConfigError(f"duplicate backend id(s) {duplicates}; every backend needs its own id", file=file, key="id")
    active = [b for b in backends if not b.disabled]
    if not any(b.dataset_type in MEDIA_TYPES for b in active):
        raise ConfigError(
            "no video or image backend; add one with dataset_type 'video' (or 'image') and instance_data_dir",
            file=file,
        )
    if not any(b.dataset_type == "text_embeds" for b in active):
        raise ConfigError(
            "no text_embeds backend; add {\"id\": \"text-embeds\", \"type\": \"local\", \"dataset_type\": "
            "\"text_embeds\", \"default\": true, \"cache_dir\": \"cache/text/kandinsky5\"}",
            file=file,
        )
    return backends


def _check_i2v_frames(loaded: LoadedConfig) -> None:
    if not loaded.train.model_flavour.startswith("i2v"):
        return
    for backend in loaded.media_backends:
        if backend.dataset_type == "video" and backend.video.num_frames < MIN_I2V_FRAMES:
            raise ConfigError(
                f"backend '{backend.id}': {backend.video.num_frames} frames is too few for image-to-video "
                f"({loaded.train.model_flavour}): the I2V pipeline returns NaN frames at 13 frames or fewer; "
                f"use {MIN_I2V_FRAMES} or more", file=str(loaded.dataset_path), key="video.num_frames")


def load_config(
    config_path: str | Path = DEFAULT_CONFIG_PATH,
    overrides: dict[str, Any] | None = None,
    *,
    load_datasets: bool = True,
) -> LoadedConfig:
    """Read config.json (+ command-line overrides) and the dataset file it names."""
    config_path = Path(config_path)
    raw = _read_json(
        config_path,
        "config file",
        "Make one with `k5tune configure`, or copy the example: `k5tune configure --example` writes "
        f"config/config.json.example (then: cp config/config.json.example {config_path}).",
    )
    if not isinstance(raw, dict):
        raise ConfigError("config.json must be a JSON object of settings ({\"key\": value, ...})", file=str(config_path))
    merged = _normalise_keys(raw)
    for key, value in (overrides or {}).items():
        name = known_keys().get(key)
        # an override replaces the file's value even when the two use different aliases
        for existing in [k for k in merged if name is not None and known_keys().get(k) == name]:
            del merged[existing]
        merged[key] = value
    source = str(config_path) + (" (with command-line overrides)" if overrides else "")
    train = build_train_config(merged, source)
    loaded = LoadedConfig(train=train, config_path=config_path)
    if load_datasets:
        dataset_path = Path(train.data_backend_config)
        raw_datasets = _read_json(
            dataset_path,
            "dataset file (data_backend_config)",
            "Create it as in the guide, or `k5tune configure --example` writes "
            "config/multidatabackend.json.example to copy.",
        )
        loaded.datasets = build_datasets(raw_datasets, str(dataset_path))
        loaded.dataset_path = dataset_path
        _check_i2v_frames(loaded)
    return loaded
