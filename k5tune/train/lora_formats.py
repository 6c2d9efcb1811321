"""LoRA key layouts for Kandinsky 5, and exact conversion between them.

Module names are the same everywhere. The original Kandinsky-5 code (ai-forever/Kandinsky-5,
`kandinsky/models/dit.py` and `nn.py`), ComfyUI's native model (`comfy/ldm/kandinsky5/model.py`) and
diffusers' `Kandinsky5Transformer3DModel` all use `text_transformer_blocks.N` / `visual_transformer_blocks.N`
with `self_attention` / `cross_attention` (`to_query`, `to_key`, `to_value`, `out_layer`) and
`feed_forward` (`in_layer`, `out_layer`). diffusers 0.42.1 has no single-file converter for Kandinsky 5
because no module is renamed. So a conversion only changes the key prefix, the LoRA suffixes and where
the scale (alpha) is stored:

- `diffusers` (what k5tune writes): `transformer.<module>.lora_A.weight` / `.lora_B.weight`. The scale
  comes from the `lora_adapter_metadata` header (peft config packed with `transformer.` prefixes).
- `comfyui`: `diffusion_model.<module>.lora_down.weight` / `.lora_up.weight` plus a scalar
  `diffusion_model.<module>.alpha`. ComfyUI's `model_lora_keys_unet` maps `diffusion_model.<module>` for
  every model. Its LoRA adapter reads `lora_up`/`lora_down` (and `lora_B`/`lora_A`) and uses
  scale = alpha / rank, or 1.0 when there is no `.alpha`. It never reads the header.
- `peft`: `base_model.model.<module>.lora_A.weight` (PeftModel.save_pretrained).
- `original`: bare `<module>.lora_A.weight`, with no prefix.

diffusers' `load_lora_weights` silently loads nothing for the last two (SPEC §10), so
`normalize_for_diffusers` rewrites any of them into the `diffusers` layout.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from k5tune.errors import K5TuneError
from k5tune.train.lora import LORA_WEIGHTS_NAME

Layout = Literal["diffusers", "comfyui", "peft", "original", "unknown"]
Target = Literal["diffusers", "comfyui"]

METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY
_PACK_PREFIX = "transformer."  # diffusers packs the peft config keys with the component name

# key prefix -> layout (longest first, so "base_model.model." wins over shorter matches)
_PREFIXES: dict[str, Layout] = {
    "base_model.model.": "peft",
    "diffusion_model.": "comfyui",
    "transformer.": "diffusers",
    "": "original",
}
# LoRA suffix -> which factor it holds; down/A is (rank, in), up/B is (out, rank)
_SUFFIXES = {
    ".lora_A.weight": "down",
    ".lora_B.weight": "up",
    ".lora_down.weight": "down",
    ".lora_up.weight": "up",
    ".alpha": "alpha",
}
# Top-level modules of the Kandinsky 5 transformer (the same in all three code bases).
_ROOTS = (
    "text_transformer_blocks.",
    "visual_transformer_blocks.",
    "time_embeddings.",
    "text_embeddings.",
    "pooled_text_embeddings.",
    "visual_embeddings.",
    "out_layer.",
)


@dataclass
class LoraModule:
    """One adapted Linear: down (A, rank x in), up (B, out x rank) and the alpha stored with it, if any."""

    down: torch.Tensor | None = None
    up: torch.Tensor | None = None
    alpha: float | None = None

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])


# --- reading keys ---------------------------------------------------------------------------------


def _split_key(key: str) -> tuple[Layout, str, str] | None:
    """`transformer.x.lora_A.weight` -> ("diffusers", "x", "down"); None if not a Kandinsky 5 LoRA key."""
    suffix = next((s for s in _SUFFIXES if key.endswith(s)), None)
    if suffix is None:
        return None
    stem = key[: -len(suffix)]
    for prefix, layout in _PREFIXES.items():
        if stem.startswith(prefix) and stem[len(prefix):].startswith(_ROOTS):
            return layout, stem[len(prefix):], _SUFFIXES[suffix]
    return None


def detect_format(state_dict: dict[str, torch.Tensor]) -> Layout:
    """The layout of a LoRA state dict, from its key prefixes. "unknown" if keys are unknown or mixed."""
    layouts = set()
    for key in state_dict:
        parts = _split_key(key)
        if parts is None:
            return "unknown"
        layouts.add(parts[0])
    return layouts.pop() if len(layouts) == 1 else "unknown"


def _example_keys(state_dict: dict[str, torch.Tensor]) -> str:
    # show the keys we could not read first: they say most about the file
    keys = sorted(state_dict, key=lambda k: (_split_key(k) is not None, k))
    return ", ".join(f"'{k}'" for k in keys[:2]) or "none (the file holds no tensors)"


def _unknown_layout(state_dict: dict[str, torch.Tensor], source: str) -> K5TuneError:
    return K5TuneError(
        f"{source}: not a Kandinsky 5 LoRA in a known key layout (diffusers 'transformer.', ComfyUI "
        f"'diffusion_model.', PEFT 'base_model.model.' or unprefixed module names with lora_A/lora_B or "
        f"lora_down/lora_up); example keys: {_example_keys(state_dict)}"
    )


def _modules(state_dict: dict[str, torch.Tensor], source: str) -> dict[str, LoraModule]:
    """Group the tensors by module; check that every module has both factors of matching rank."""
    if detect_format(state_dict) == "unknown":
        raise _unknown_layout(state_dict, source)
    modules: dict[str, LoraModule] = {}
    for key, tensor in state_dict.items():
        _, name, part = _split_key(key)
        module = modules.setdefault(name, LoraModule())
        if part == "alpha":
            module.alpha = float(tensor.item())
        else:
            setattr(module, part, tensor)
    for name, module in modules.items():
        if module.down is None or module.up is None:
            raise K5TuneError(f"{source}: module '{name}' lacks its lora_A/lora_down or lora_B/lora_up weight")
        if module.down.ndim != 2 or module.up.ndim != 2 or module.up.shape[1] != module.down.shape[0]:
            raise K5TuneError(
                f"{source}: module '{name}' has LoRA factors of shapes {tuple(module.down.shape)} and "
                f"{tuple(module.up.shape)}, which do not make a rank-r product"
            )
    return dict(sorted(modules.items()))


# --- the scale: peft config (diffusers) <-> per-module alpha (ComfyUI) --------------------------------


def unpack_adapter_config(metadata: dict[str, str] | None) -> dict | None:
    """The peft LoraConfig dict stored in a file's `lora_adapter_metadata`, without the `transformer.` prefixes."""
    raw = (metadata or {}).get(METADATA_KEY)
    if not raw:
        return None
    packed = json.loads(raw)
    return {k.removeprefix(_PACK_PREFIX): v for k, v in packed.items()}


def pack_adapter_config(config: dict) -> str:
    """The same packing as diffusers' save_lora_adapter. Every LoRA file k5tune writes says lora_dropout 0:
    dropout only regularises training, and a loader given a non-zero value builds dropout layers in
    training mode, so the same seed would give different videos."""
    config = {**config, "lora_dropout": 0.0}
    packed = {f"{_PACK_PREFIX}{k}": (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}
    return json.dumps(packed, indent=2, sort_keys=True, default=str)


def _pattern_value(patterns: dict, name: str, default):
    """peft's own lookup (peft.utils.other.get_pattern_key): the first key matching the end of the name."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def _config_entry(config: dict, name: str, module: LoraModule) -> tuple[int, float]:
    """(rank, alpha) peft would give this module under the config: pattern entries, else r / lora_alpha."""
    rank = _pattern_value(config.get("rank_pattern"), name, config.get("r", module.rank))
    alpha = _pattern_value(config.get("alpha_pattern"), name, config.get("lora_alpha", rank))
    return rank, alpha


def _config_scale(config: dict, name: str, module: LoraModule) -> float:
    """peft's scale for the module: alpha / r, or alpha / sqrt(r) with rsLoRA."""
    rank, alpha = _config_entry(config, name, module)
    return alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)


def _alpha_from_config(config: dict, name: str, module: LoraModule) -> float:
    """ComfyUI's alpha (scale = alpha / tensor rank) giving the same scale as the peft config."""
    rank, alpha = _config_entry(config, name, module)
    if rank == module.rank and not config.get("use_rslora"):
        return float(alpha)  # the usual case: no arithmetic, so no rounding
    return _config_scale(config, name, module) * module.rank


def _check_supported(config: dict, source: str) -> None:
    if config.get("use_dora"):
        raise K5TuneError(f"{source}: DoRA adapters cannot be converted (only plain LoRA is supported)")


def _json_number(value: str | None) -> float | None:
    try:
        number = json.loads(value) if value is not None else None
    except json.JSONDecodeError:
        return None
    return float(number) if isinstance(number, int | float) else None


def _module_alphas(modules: dict[str, LoraModule], metadata: dict[str, str] | None, source: str) -> dict[str, float]:
    """Each module's alpha in ComfyUI's sense (scale = alpha / rank).

    Alpha tensors in the file win (a module without one has scale 1, as in ComfyUI); then the peft config
    in the header; then k5tune's own `k5tune.alpha`; else alpha = rank (scale 1, diffusers' default).
    """
    if any(m.alpha is not None for m in modules.values()):
        return {n: (m.alpha if m.alpha is not None else float(m.rank)) for n, m in modules.items()}
    config = unpack_adapter_config(metadata)
    if config is not None:
        _check_supported(config, source)
        return {n: _alpha_from_config(config, n, m) for n, m in modules.items()}
    alpha = _json_number((metadata or {}).get("k5tune.alpha"))
    return {n: (alpha if alpha is not None else float(m.rank)) for n, m in modules.items()}


def _config_matches(config: dict, modules: dict[str, LoraModule], alphas: dict[str, float]) -> bool:
    """True when a stored peft config gives every module the tensor's rank and the wanted scale.

    The tolerance absorbs the float32 rounding of ComfyUI's alpha tensors (alpha 0.1 -> 0.10000000149).
    """
    if config.get("r") is None or config.get("use_dora") or not _targets_cover(config.get("target_modules"), modules):
        return False
    return all(
        _config_entry(config, n, m)[0] == m.rank
        and math.isclose(_config_scale(config, n, m), alphas[n] / m.rank, rel_tol=1e-6)
        for n, m in modules.items()
    )


def _targets_cover(targets, modules: dict[str, LoraModule]) -> bool:
    """peft's target_modules semantics: a regex string must fullmatch, a list entry must match a name's end."""
    if isinstance(targets, str):
        return all(re.fullmatch(targets, name) for name in modules)
    if isinstance(targets, list | tuple | set):
        return all(any(name == t or name.endswith(f".{t}") for t in targets) for name in modules)
    return False


def _whole(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def _anchored(name: str) -> str:
    # a pattern key for exactly one module: peft matches r"(.*\.)?(KEY)$", so "^" forbids any prefix
    return "^" + re.escape(name)


def _fresh_config(base: dict | None, modules: dict[str, LoraModule], alphas: dict[str, float]) -> dict:
    """A peft config giving each module its rank and alpha; rare values go to rank_pattern/alpha_pattern."""
    from peft import LoraConfig

    ranks = {n: m.rank for n, m in modules.items()}
    r = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(alphas.values()).most_common(1)[0][0]
    config = LoraConfig(
        r=r,
        lora_alpha=_whole(alpha),
        target_modules=sorted(modules),
        rank_pattern={_anchored(n): v for n, v in ranks.items() if v != r},
        alpha_pattern={_anchored(n): _whole(v) for n, v in alphas.items() if v != alpha},
    ).to_dict()
    # keep training facts of the old config (init, bias) but not what decides the scale
    kept = {k: v for k, v in (base or {}).items() if k in ("init_lora_weights", "bias")}
    return {**config, **kept, "use_rslora": False, "use_dora": False}


# --- the two conversions --------------------------------------------------------------------------


def to_comfyui(
    state_dict: dict[str, torch.Tensor], metadata: dict[str, str] | None, source: str = "LoRA"
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Any known layout -> ComfyUI's: `diffusion_model.` keys, lora_down/lora_up and a float32 `.alpha` each.

    The factor tensors are passed through untouched (same dtype, same bits). The header is kept (ComfyUI
    ignores it), so that converting back can reuse the original peft config.
    """
    modules = _modules(state_dict, source)
    alphas = _module_alphas(modules, metadata, source)
    out: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        out[f"diffusion_model.{name}.lora_down.weight"] = module.down
        out[f"diffusion_model.{name}.lora_up.weight"] = module.up
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
    modules = _modules(state_dict, source)
    alphas = _module_alphas(modules, metadata, source)
    out: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        out[f"transformer.{name}.lora_A.weight"] = module.down
        out[f"transformer.{name}.lora_B.weight"] = module.up
    header = {"format": "pt", **(metadata or {})}
    config = unpack_adapter_config(metadata)
    if config is None or not _config_matches(config, modules, alphas):
        config = _fresh_config(config, modules, alphas)
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
        raise _unknown_layout(state_dict, source)
    return to_diffusers(state_dict, metadata, source)


# --- files ----------------------------------------------------------------------------------------


def resolve_lora_path(path: str | Path) -> Path:
    """A LoRA file, or a folder holding `pytorch_lora_weights.safetensors` (what `k5tune train` writes)."""
    path = Path(path)
    if path.is_dir():
        path = path / LORA_WEIGHTS_NAME
    if not path.is_file():
        raise K5TuneError(f"{path}: no such LoRA file")
    return path


def _sidecar_config(path: Path) -> dict | None:
    """PEFT's save_pretrained keeps the config (with lora_alpha) in adapter_config.json, not in the header."""
    sidecar = path.with_name("adapter_config.json")
    try:
        config = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return config if isinstance(config, dict) and "r" in config else None


def read_lora(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str], Path]:
    """Tensors, header and resolved path of a LoRA file (a PEFT adapter_config.json beside it is used too)."""
    from safetensors import SafetensorError, safe_open

    path = resolve_lora_path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            state_dict = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise K5TuneError(f"{path}: not a readable .safetensors file ({first_line})") from None
    if METADATA_KEY not in metadata and (config := _sidecar_config(path)) is not None:
        metadata[METADATA_KEY] = pack_adapter_config(config)
    return state_dict, metadata, path


def write_lora(state_dict: dict[str, torch.Tensor], metadata: dict[str, str], destination: str | Path) -> Path:
    """Write atomically (k5tune.atomic): never a half-written LoRA, and a full disk named as such."""
    from k5tune.atomic import atomic_save_safetensors

    return atomic_save_safetensors(destination, {k: v.contiguous() for k, v in state_dict.items()}, metadata)


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
