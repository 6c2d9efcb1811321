"""The one reader of the config schema: pydantic models in, plain field descriptions out.

`k5tune train --help`, the web form (/api/schema), the wizard and docs/config-reference.md all read
settings through here, so a field's name, aliases, type, default, limits, help text and section are
taken from the schema the same way everywhere. The key mapping (`--key` and aliases -> field name)
lives here too, for the loader, the wizard and the server.
"""

from __future__ import annotations

import functools
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import annotated_types
from pydantic import AliasChoices, BaseModel
from pydantic.fields import FieldInfo

from k5tune.config.schema import TrainConfig
from k5tune.config.sections import SECTIONS

DEFAULT_SECTION = "settings"  # models without declared sections (the dataset backends)
_LIMITS = {"gt": annotated_types.Gt, "ge": annotated_types.Ge, "lt": annotated_types.Lt,
           "le": annotated_types.Le}


@dataclass(frozen=True)
class Setting:
    """One field of a schema model, as the help text, the form, the wizard and the docs see it."""

    name: str
    kind: str  # bool, int, float, str, enum, list (of text) or json (anything else)
    nullable: bool
    choices: list | None  # the allowed values of an enum
    default: Any  # JSON-ready (nested models dumped); None when required
    required: bool
    description: str
    aliases: tuple[str, ...] = ()  # other accepted spellings, the field name not included
    section: str = DEFAULT_SECTION
    limits: dict[str, float] = field(default_factory=dict)  # gt / ge / lt / le


def kind_of(annotation: Any) -> tuple[str, bool, list | None]:
    """(kind, nullable, choices) of a field's type."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        nullable = len(members) < len(args)
        if len(members) == 1:
            kind, _, choices = kind_of(members[0])
            return kind, nullable, choices
        return "json", nullable, None
    if origin is Literal:
        return "enum", False, list(args)
    for python_type, kind in ((bool, "bool"), (int, "int"), (float, "float"), (str, "str")):
        if annotation is python_type:
            return kind, False, None
    if origin is list and args == (str,):
        return "list", False, None
    return "json", False, None


def _limits(info: FieldInfo) -> dict[str, float]:
    return {name: getattr(item, name) for item in info.metadata
            for name, kind in _LIMITS.items() if isinstance(item, kind)}


def limits_at(model: Any, location: Sequence[Any]) -> dict[str, float]:
    """The gt/ge/lt/le of the field at `location` (nested models followed); {} when there is none."""
    info = None
    for part in location:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return {}
        info = model.model_fields.get(str(part))
        if info is None:
            return {}
        model = info.annotation
    return _limits(info) if info is not None else {}


def valid_range(limits: Mapping[str, float]) -> str | None:
    """'1 to 1024' for limits with both ends (gt on a whole number counts from the next one)."""
    low = limits.get("ge", limits["gt"] + 1 if isinstance(limits.get("gt"), int) else None)
    high = limits.get("le", limits["lt"] - 1 if isinstance(limits.get("lt"), int) else None)
    return f"{low} to {high}" if low is not None and high is not None else None


def _aliases(name: str, info: FieldInfo) -> tuple[str, ...]:
    alias = info.validation_alias
    return tuple(str(a) for a in alias.choices if a != name) if isinstance(alias, AliasChoices) else ()


def _setting(name: str, info: FieldInfo, section: str) -> Setting:
    kind, nullable, choices = kind_of(info.annotation)
    required = info.is_required()
    default = None if required else info.get_default(call_default_factory=True)
    if isinstance(default, BaseModel):
        default = default.model_dump(mode="json")
    return Setting(name=name, kind=kind, nullable=nullable, choices=choices, default=default,
                   required=required, description=info.description or "", aliases=_aliases(name, info),
                   section=section, limits=_limits(info))


def describe(model: type[BaseModel], skip: Sequence[str] = (),
             sections: Mapping[str, Sequence[str]] | None = None) -> list[Setting]:
    """The fields of `model` in declaration order; `sections` maps a section title to its field names."""
    section_of = {name: title for title, names in (sections or {}).items() for name in names}
    return [_setting(name, info, section_of.get(name, DEFAULT_SECTION))
            for name, info in model.model_fields.items() if name not in skip]


def config_fields() -> list[Setting]:
    """Every config.json setting, with its section."""
    return describe(TrainConfig, sections=SECTIONS)


def config_field(name: str) -> Setting:
    """One config.json setting by its field name (KeyError for an unknown name)."""
    return _setting(name, TrainConfig.model_fields[name], _section_of()[name])


@functools.cache
def _section_of() -> Mapping[str, str]:
    return types.MappingProxyType({name: title for title, names in SECTIONS.items() for name in names})


# --------------------------------------------------------------------------------------------------
# keys: config.json (and the server and wizard) accept SimpleTuner's `--key` spelling and aliases


@functools.cache
def known_keys() -> Mapping[str, str]:
    """Every accepted config.json key (aliases included, no '--') mapped to its field name."""
    keys: dict[str, str] = {}
    for name, info in TrainConfig.model_fields.items():
        keys[name] = name
        keys.update((alias, name) for alias in _aliases(name, info))
    return types.MappingProxyType(keys)


def bare_key(key: str) -> str:
    """`key` without the leading '--' SimpleTuner-style files write."""
    return key[2:] if key.startswith("--") else key


def canonical_key(key: str) -> str | None:
    """The field name a config.json key means ('--' prefix and aliases allowed); None when unknown."""
    return known_keys().get(bare_key(key))


def canonical_config(raw: Mapping[str, Any]) -> dict[str, Any]:
    """`raw` with every key written as its field name; unknown keys are kept (without '--') for the
    loader to name. Two spellings of one field: the later value wins, as in a JSON object."""
    return {canonical_key(key) or bare_key(key): value for key, value in raw.items()}
