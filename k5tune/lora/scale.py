"""The scale of each LoRA module: the peft config diffusers stores in the file header, or the per-module
alpha tensors ComfyUI stores, and the exact translation between the two."""

from __future__ import annotations

import json
import math
import re
from collections import Counter

from k5tune.errors import K5TuneError
from k5tune.lora.layouts import LoraModule

METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY
_PACK_PREFIX = "transformer."  # diffusers packs the peft config keys with the component name


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


def module_alphas(modules: dict[str, LoraModule], metadata: dict[str, str] | None, source: str) -> dict[str, float]:
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


def config_matches(config: dict, modules: dict[str, LoraModule], alphas: dict[str, float]) -> bool:
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


def fresh_config(base: dict | None, modules: dict[str, LoraModule], alphas: dict[str, float]) -> dict:
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
