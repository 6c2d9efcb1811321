"""The flavour registry: the one place that knows the Kandinsky 5.0 Video checkpoints.

The checkpoints are data, one row each in flavours.json beside this module. Each flavour names its hub
repository (diffusers layout), its task, its size and the full-size transformer configuration used by
`k5tune bench` and `k5tune estimate` with random weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

Task = Literal["t2v", "i2v"]
Size = Literal["lite", "pro"]
Attention = Literal["regular", "nabla"]

# Shared by every released checkpoint: HunyuanVideo VAE latents, Qwen2.5-VL and CLIP-L text.
_COMMON: dict[str, Any] = {
    "in_visual_dim": 16,
    "out_visual_dim": 16,
    "in_text_dim": 3584,
    "in_text_dim2": 768,
    "patch_size": (1, 2, 2),
    "visual_cond": True,
}

# What sets the two sizes apart.
_SIZES: dict[Size, dict[str, Any]] = {
    "lite": dict(model_dim=1792, ff_dim=7168, num_text_blocks=2, num_visual_blocks=32, time_dim=512,
                 axes_dims=(16, 24, 24)),
    "pro": dict(model_dim=4096, ff_dim=16384, num_text_blocks=4, num_visual_blocks=60, time_dim=1024,
                axes_dims=(32, 48, 48)),
}
LITE_TRANSFORMER: dict[str, Any] = {**_COMMON, **_SIZES["lite"]}
PRO_TRANSFORMER: dict[str, Any] = {**_COMMON, **_SIZES["pro"]}

# Sparse "nabla" attention of the 10 s and Pro HD checkpoints. Only `bench`/`estimate` use these values
# (random weights); a real checkpoint always brings its own transformer config.
NABLA_ATTENTION: dict[str, Any] = {
    "attention_type": "nabla",
    "attention_causal": False,
    "attention_local": False,
    "attention_glob": False,
    "attention_window": 3,
    "attention_P": 0.9,
    "attention_wT": 11,
    "attention_wW": 3,
    "attention_wH": 3,
    "attention_add_sta": True,
    "attention_method": "topcdf",
}


@dataclass(frozen=True)
class Flavour:
    name: str
    hub_id: str
    task: Task
    size: Size
    clip_seconds: int
    attention: Attention
    description: str
    transformer_config: dict[str, Any] = field(repr=False)

    @property
    def is_i2v(self) -> bool:
        return self.task == "i2v"


# The rows of the registry, in order: name, hub_id, task, size, clip_seconds, attention, description.
FLAVOURS_FILE = Path(__file__).with_name("flavours.json")
_LITERALS = {"task": Task, "size": Size, "attention": Attention}


def _flavour(row: dict[str, Any]) -> Flavour:
    """One row of flavours.json as a Flavour: its size's transformer config, with NABLA's settings where sparse."""
    if unknown := [f"{key}={row[key]!r}" for key, kind in _LITERALS.items() if row[key] not in get_args(kind)]:
        raise ValueError(f"{FLAVOURS_FILE.name}: flavour {row['name']!r} has unknown {', '.join(unknown)}")
    config = dict(LITE_TRANSFORMER if row["size"] == "lite" else PRO_TRANSFORMER)
    if row["attention"] == "nabla":
        config.update(NABLA_ATTENTION)
    return Flavour(**row, transformer_config=config)


FLAVOURS: dict[str, Flavour] = {
    f.name: f for f in map(_flavour, json.loads(FLAVOURS_FILE.read_text(encoding="utf-8")))
}

DEFAULT_FLAVOUR = "t2v-lite-sft-5s"
FLAVOUR_NAMES: tuple[str, ...] = tuple(FLAVOURS)


def require_flavour(name: str, key: str) -> str:
    """`name` if it is a flavour, else a ConfigError naming `key` and listing the valid ones."""
    from k5tune.errors import ConfigError

    if name not in FLAVOURS:
        raise ConfigError(f"unknown flavour '{name}'; valid flavours: {', '.join(FLAVOUR_NAMES)}", key=key)
    return name


def get_flavour(name: str) -> Flavour:
    """Look up a flavour; the config schema has already rejected unknown names with a message."""
    return FLAVOURS[name]
