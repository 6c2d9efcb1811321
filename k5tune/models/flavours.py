"""The flavour registry: the one place that knows the Kandinsky 5.0 Video checkpoints.

Each flavour names its hub repository (diffusers layout), its task, its size and the full-size
transformer configuration used by `k5tune bench` and `k5tune estimate` with random weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Task = Literal["t2v", "i2v"]
Size = Literal["lite", "pro"]

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
    attention: Literal["regular", "nabla"]
    description: str
    transformer_config: dict[str, Any] = field(repr=False)

    @property
    def is_i2v(self) -> bool:
        return self.task == "i2v"


def _flavour(name: str, repo: str, task: Task, size: Size, seconds: int, attention: str, text: str) -> Flavour:
    config = dict(LITE_TRANSFORMER if size == "lite" else PRO_TRANSFORMER)
    if attention == "nabla":
        config.update(NABLA_ATTENTION)
    return Flavour(
        name=name,
        hub_id=f"kandinskylab/{repo}",
        task=task,
        size=size,
        clip_seconds=seconds,
        attention=attention,  # type: ignore[arg-type]
        description=text,
        transformer_config=config,
    )


FLAVOURS: dict[str, Flavour] = {
    f.name: f
    for f in (
        _flavour("t2v-lite-sft-5s", "Kandinsky-5.0-T2V-Lite-sft-5s-Diffusers", "t2v", "lite", 5, "regular",
                 "Lite text-to-video, ~5 s clips (default)"),
        _flavour("t2v-lite-pretrain-5s", "Kandinsky-5.0-T2V-Lite-pretrain-5s-Diffusers", "t2v", "lite", 5,
                 "regular", "Lite text-to-video, pretrain weights, ~5 s"),
        _flavour("t2v-lite-sft-10s", "Kandinsky-5.0-T2V-Lite-sft-10s-Diffusers", "t2v", "lite", 10, "nabla",
                 "Lite text-to-video, ~10 s clips (sparse attention)"),
        _flavour("t2v-lite-pretrain-10s", "Kandinsky-5.0-T2V-Lite-pretrain-10s-Diffusers", "t2v", "lite", 10,
                 "nabla", "Lite text-to-video, pretrain weights, ~10 s"),
        _flavour("t2v-pro-sft-5s-hd", "Kandinsky-5.0-T2V-Pro-sft-5s-Diffusers", "t2v", "pro", 5, "nabla",
                 "Pro text-to-video, ~5 s, high definition"),
        _flavour("t2v-pro-sft-10s-hd", "Kandinsky-5.0-T2V-Pro-sft-10s-Diffusers", "t2v", "pro", 10, "nabla",
                 "Pro text-to-video, ~10 s, high definition"),
        _flavour("t2v-pro-pretrain-5s-hd", "Kandinsky-5.0-T2V-Pro-pretrain-5s-Diffusers", "t2v", "pro", 5,
                 "nabla", "Pro text-to-video, pretrain weights, ~5 s, HD"),
        _flavour("t2v-pro-pretrain-10s-hd", "Kandinsky-5.0-T2V-Pro-pretrain-10s-Diffusers", "t2v", "pro", 10,
                 "nabla", "Pro text-to-video, pretrain weights, ~10 s, HD"),
        _flavour("i2v-lite-5s", "Kandinsky-5.0-I2V-Lite-5s-Diffusers", "i2v", "lite", 5, "regular",
                 "Lite image-to-video, ~5 s (needs conditioning images)"),
        _flavour("i2v-pro-sft-5s", "Kandinsky-5.0-I2V-Pro-sft-5s-Diffusers", "i2v", "pro", 5, "regular",
                 "Pro image-to-video SFT, ~5 s (needs conditioning images)"),
    )
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
