"""Exact conversion between the LoRA layouts (the tensors are passed through bit for bit), and loading a
LoRA of any layout into a diffusers transformer."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from k5tune.errors import K5TuneError
from k5tune.lora.files import LORA_WEIGHTS_NAME, read_lora, write_lora
from k5tune.lora.layouts import Layout, LoraModule, Target, detect_format, lora_modules, unknown_layout
from k5tune.lora.scale import (
    METADATA_KEY,
    config_matches,
    fresh_config,
    module_alphas,
    pack_adapter_config,
    unpack_adapter_config,
)

# target layout -> (key prefix, down suffix, up suffix) of each module's two factor tensors
_FACTOR_KEYS: dict[Target, tuple[str, str, str]] = {
    "comfyui": ("diffusion_model.", "lora_down", "lora_up"),
    "diffusers": ("transformer.", "lora_A", "lora_B"),
}


def _factors(name: str, module: LoraModule, to: Target) -> dict[str, torch.Tensor]:
    """One module's two factor tensors, untouched, under the key names of layout `to`."""
    prefix, down, up = _FACTOR_KEYS[to]
    return {f"{prefix}{name}.{down}.weight": module.down, f"{prefix}{name}.{up}.weight": module.up}


def to_comfyui(
    state_dict: dict[str, torch.Tensor], metadata: dict[str, str] | None, source: str = "LoRA"
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Any known layout -> ComfyUI's: `diffusion_model.` keys, lora_down/lora_up and a float32 `.alpha` each.

    The factor tensors are passed through untouched (same dtype, same bits). The header is kept (ComfyUI
    ignores it), so that converting back can reuse the original peft config.
    """
    modules = lora_modules(state_dict, source)
    alphas = module_alphas(modules, metadata, source)
    out: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        out.update(_factors(name, module, "comfyui"))
        out[f"diffusion_model.{name}.alpha"] = torch.tensor(alphas[name], dtype=torch.float32)
    return out, {"format": "pt", **(metadata or {})}


def to_diffusers(
    state_dict: dict[str, torch.Tensor], metadata: dict[str, str] | None, source: str = "LoRA"
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Any known layout -> diffusers': `transformer.` keys, lora_A/lora_B, and the scale in `lora_adapter_metadata`.

    A peft config already in the header is kept when it gives every module the same rank and scale as
    the file's alphas (so diffusers -> comfyui -> diffusers gives back the same header). Otherwise a new
    config is written, with `rank_pattern`/`alpha_pattern` for modules that differ from the most common
    rank/alpha. diffusers' loader passes these straight to peft's LoraConfig.
    """
    modules = lora_modules(state_dict, source)
    alphas = module_alphas(modules, metadata, source)
    out: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        out.update(_factors(name, module, "diffusers"))
    header = {"format": "pt", **(metadata or {})}
    config = unpack_adapter_config(metadata)
    if config is None or not config_matches(config, modules, alphas):
        config = fresh_config(config, modules, alphas)
    header[METADATA_KEY] = pack_adapter_config(config)
    return out, header


def normalize_for_diffusers(
    state_dict: dict[str, torch.Tensor], metadata: dict[str, str] | None, source: str = "LoRA"
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Any known layout (diffusers, ComfyUI, PEFT, unprefixed) -> a state dict and header diffusers loads.

    Raises K5TuneError naming `source` and showing two keys when the layout is unknown, instead of
    letting `load_lora_weights` load nothing with only a log line.
    """
    if detect_format(state_dict) == "unknown":
        raise unknown_layout(state_dict, source)
    return to_diffusers(state_dict, metadata, source)


def default_output_name(source: Path, to: Target) -> str:
    if to == "diffusers":
        return LORA_WEIGHTS_NAME  # so that load_lora_weights(folder) finds it
    return f"{source.stem}_comfyui.safetensors"


def convert_file(src: str | Path, dst: str | Path, to: Target) -> tuple[Path, Layout, int]:
    """Convert a LoRA file; returns (written path, layout read, number of modules).

    `src` may be a folder with pytorch_lora_weights.safetensors; `dst` may be an existing folder. All
    header entries (the `k5tune.*` training facts included) are kept.
    """
    if to not in ("diffusers", "comfyui"):
        raise K5TuneError(f"unknown LoRA layout '{to}': use 'diffusers' or 'comfyui'")
    state_dict, metadata, path = read_lora(src)
    layout = detect_format(state_dict)
    convert = to_comfyui if to == "comfyui" else to_diffusers
    converted, header = convert(state_dict, metadata, source=str(path))
    destination = Path(dst)
    if destination.is_dir():
        destination = destination / default_output_name(path, to)
    count = sum(1 for key in converted if key.endswith((".lora_A.weight", ".lora_down.weight")))
    return write_lora(converted, header, destination), layout, count


def load_lora_into_transformer(transformer, path: str | Path, adapter_name: str | None = None) -> str:
    """Load a LoRA of any known layout into a diffusers Kandinsky 5 transformer; returns the adapter name.

    A state dict handed to `load_lora_weights` loses the header (diffusers then assumes alpha = rank), so
    the normalized config is passed to `load_lora_adapter` explicitly.
    """
    from diffusers.utils.peft_utils import get_adapter_name

    state_dict, metadata, path = read_lora(path)
    state_dict, header = normalize_for_diffusers(state_dict, metadata, source=str(path))
    adapter_name = adapter_name or get_adapter_name(transformer)
    packed = json.loads(header[METADATA_KEY])
    transformer.load_lora_adapter(state_dict, prefix="transformer", metadata=packed, adapter_name=adapter_name)
    return adapter_name
