"""The web form's view of the schema, and the real loader's checks turned into per-field errors.

Nothing here declares a setting: names, types, defaults, limits, choices and help texts all come from
the pydantic models in k5tune.config (the same ones behind `k5tune train --help` and the loader).
"""

from __future__ import annotations

import inspect
import json
import re
import types
import typing
from typing import Any, Literal

import annotated_types
from pydantic import AliasChoices, BaseModel

from k5tune.config.datasets import ImageBackend, TextEmbedsBackend, VideoBackend, VideoOptions
from k5tune.config.schema import TrainConfig
from k5tune.errors import ConfigError

_SECTION = re.compile(r"^\s*#\s*---\s*(.+?)\s*-{3,}\s*$")
_FIELD = re.compile(r"^\s{4}(\w+)\s*:")


def _sections(model: type[BaseModel]) -> dict[str, str]:
    """Field name -> section title, read from the schema's own `# --- title ---` comments."""
    try:
        source = inspect.getsource(model)
    except (OSError, TypeError):
        return {}
    section, found = "settings", {}
    for line in source.splitlines():
        if match := _SECTION.match(line):
            section = match.group(1)
        elif (match := _FIELD.match(line)) and match.group(1) in model.model_fields:
            found[match.group(1)] = section
    return found


def _kind(annotation: Any) -> tuple[str, bool, list | None]:
    """(form kind, nullable, choices) of a field's type."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    nullable = False
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        nullable = len(members) < len(args)
        if len(members) == 1:
            kind, _, choices = _kind(members[0])
            return kind, nullable, choices
        return "json", nullable, None
    if origin is Literal:
        return "enum", False, list(args)
    if annotation is bool:
        return "bool", False, None
    if annotation is int:
        return "int", False, None
    if annotation is float:
        return "float", False, None
    if annotation is str:
        return "str", False, None
    if origin is list and args == (str,):
        return "list", False, None
    return "json", False, None


def _limits(info) -> dict:
    limits = {}
    for item in info.metadata:
        for name in ("gt", "ge", "lt", "le"):
            if isinstance(item, getattr(annotated_types, name.capitalize())):
                limits[name] = getattr(item, name)
    return limits


def describe_model(model: type[BaseModel], skip: tuple[str, ...] = ()) -> list[dict]:
    sections = _sections(model)
    fields = []
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        kind, nullable, choices = _kind(info.annotation)
        default = None if info.is_required() else info.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            default = default.model_dump(mode="json")
        alias = info.validation_alias
        aliases = [str(a) for a in alias.choices if a != name] if isinstance(alias, AliasChoices) else []
        fields.append({
            "name": name, "kind": kind, "nullable": nullable, "choices": choices, "default": default,
            "required": info.is_required(), "description": info.description or "", "aliases": aliases,
            "section": sections.get(name, "settings"), **_limits(info),
        })
    return fields


def form_schema() -> dict:
    """GET /api/schema: form fields for both files plus pydantic's JSON schema of config.json."""
    return {
        "config": describe_model(TrainConfig),
        "datasets": {
            "video": describe_model(VideoBackend, skip=("dataset_type", "video")),
            "video_options": describe_model(VideoOptions),
            "image": describe_model(ImageBackend, skip=("dataset_type",)),
            "text_embeds": describe_model(TextEmbedsBackend, skip=("dataset_type", "type")),
        },
        "json_schema": TrainConfig.model_json_schema(mode="validation"),
    }


# --------------------------------------------------------------------------------------------------


def field_error(exc: ConfigError, *, backends: list | None = None) -> dict:
    """A loader error as {message, key, field, backend}: `field` is the form field to mark (the first
    part of the key, aliases mapped to their field), `backend` the dataset entry's index."""
    text = str(exc)
    message = exc.message
    key = exc.key or None
    field = None
    if key:
        first = key.split(".")[0]
        field = TrainConfig.known_keys().get(first, first) if backends is None else key
    backend = None
    if backends is not None:
        if match := re.search(r"backend '([^']*)'", message):
            ids = [b.get("id") if isinstance(b, dict) else None for b in backends]
            backend = ids.index(match.group(1)) if match.group(1) in ids else None
        if match := re.search(r"backend #(\d+)", message):
            backend = int(match.group(1)) - 1
    return {"message": message, "key": key, "field": field, "backend": backend, "text": text}


def ordered_config(values: dict) -> dict:
    """Settings in the schema's order (aliases and '--' prefixes mapped to field names), so saved files
    read like the reference; unknown keys are kept at the end for the loader to name."""
    known = TrainConfig.known_keys()
    canonical: dict[str, Any] = {}
    for key, value in values.items():
        bare = key[2:] if key.startswith("--") else key
        canonical[known.get(bare, bare)] = value
    order = {name: index for index, name in enumerate(TrainConfig.model_fields)}
    return dict(sorted(canonical.items(), key=lambda item: order.get(item[0], len(order))))


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
