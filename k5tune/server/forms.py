"""The web form's view of the schema, and the real loader's checks turned into per-field errors.

Nothing here declares a setting: names, types, defaults, limits, choices, help texts and sections all
come from the pydantic models in k5tune.config, read by k5tune.config.fields (as `k5tune train --help`,
the wizard and the reference page read them).
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel

from k5tune.config.datasets import ImageBackend, TextEmbedsBackend, VideoBackend, VideoOptions
from k5tune.config.fields import Setting, canonical_config, canonical_key, config_fields, describe
from k5tune.config.schema import TrainConfig
from k5tune.errors import ConfigError
from k5tune.models.flavours import FLAVOURS

# the sections a newcomer needs, shown first and open; the others start collapsed
BASIC_SECTIONS = ("model", "data", "output", "LoRA", "optimisation", "checkpoints", "validation")


def _form_field(setting: Setting) -> dict:
    """One field as app.js reads it. model_flavour is a list of the registry's flavours, each described."""
    field = {
        "name": setting.name, "kind": setting.kind, "nullable": setting.nullable, "choices": setting.choices,
        "default": setting.default, "required": setting.required, "description": setting.description,
        "aliases": list(setting.aliases), "section": setting.section, **setting.limits,
    }
    if setting.name == "model_flavour":
        field.update(kind="enum", choices=list(FLAVOURS),
                     choice_descriptions={name: flavour.description for name, flavour in FLAVOURS.items()})
    return field


def sections() -> list[dict]:
    """The form's sections in order, basic ones first: [{title, basic}]."""
    titles = list(dict.fromkeys(setting.section for setting in config_fields()))
    ordered = [t for t in titles if t in BASIC_SECTIONS] + [t for t in titles if t not in BASIC_SECTIONS]
    return [{"title": title, "basic": title in BASIC_SECTIONS} for title in ordered]


def describe_model(model: type[BaseModel], skip: tuple[str, ...] = ()) -> list[dict]:
    return [_form_field(setting) for setting in describe(model, skip)]


def form_schema() -> dict:
    """GET /api/schema: form fields for both files plus pydantic's JSON schema of config.json."""
    return {
        "config": [_form_field(setting) for setting in config_fields()],
        "sections": sections(),
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
        field = (canonical_key(first) or first) if backends is None else key
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
    order = {setting.name: index for index, setting in enumerate(config_fields())}
    return dict(sorted(canonical_config(values).items(), key=lambda item: order.get(item[0], len(order))))


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
