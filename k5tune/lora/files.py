"""LoRA files: the one name training writes, reading any .safetensors LoRA (with PEFT's sidecar config),
and writing atomically with diffusers' header."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from k5tune.errors import K5TuneError
from k5tune.lora.adapter import lora_state_dict
from k5tune.lora.scale import METADATA_KEY, pack_adapter_config

LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"


def adapter_metadata(transformer) -> str:
    """The adapter's peft config, packed as diffusers' `load_lora_weights` expects (rank, alpha, ...), with
    lora_dropout 0 (see scale.pack_adapter_config; the training value is in k5tune.lora_dropout)."""
    return pack_adapter_config(transformer.peft_config["default"].to_dict())


def save_lora(
    transformer, directory: str | Path, metadata: dict[str, object], dtype: torch.dtype = torch.float32,
    state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write `pytorch_lora_weights.safetensors` atomically.

    Metadata: diffusers' `lora_adapter_metadata` (so alpha != rank loads right) plus k5tune's own
    training facts under `k5tune.*` keys (flavour, rank, alpha, targets, steps, trigger word).
    `state` is the adapter's `lora_state_dict` when the caller gathered it already (FSDP2).
    """
    from k5tune.atomic import atomic_save_safetensors

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.to(dtype) for k, v in (lora_state_dict(transformer) if state is None else state).items()}
    header = {"format": "pt", "lora_adapter_metadata": adapter_metadata(transformer)}
    header.update({f"k5tune.{k}": v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()})
    return atomic_save_safetensors(directory / LORA_WEIGHTS_NAME, tensors, header)


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
