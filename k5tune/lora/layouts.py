"""LoRA key layouts for Kandinsky 5: reading which layout a file uses, and its modules.

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

from dataclasses import dataclass
from typing import Literal

import torch

from k5tune.errors import K5TuneError

Layout = Literal["diffusers", "comfyui", "peft", "original", "unknown"]
Target = Literal["diffusers", "comfyui"]

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


def unknown_layout(state_dict: dict[str, torch.Tensor], source: str) -> K5TuneError:
    return K5TuneError(
        f"{source}: not a Kandinsky 5 LoRA in a known key layout (diffusers 'transformer.', ComfyUI "
        f"'diffusion_model.', PEFT 'base_model.model.' or unprefixed module names with lora_A/lora_B or "
        f"lora_down/lora_up); example keys: {_example_keys(state_dict)}"
    )


def lora_modules(state_dict: dict[str, torch.Tensor], source: str) -> dict[str, LoraModule]:
    """Group the tensors by module; check that every module has both factors of matching rank."""
    if detect_format(state_dict) == "unknown":
        raise unknown_layout(state_dict, source)
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
