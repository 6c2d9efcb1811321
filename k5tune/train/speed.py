"""Speed settings of the training step, decided in one place and shared by `k5tune train` and
`k5tune bench`: the fused fast path, the attention kernel, and how much is recomputed in backward.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import partial

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

# Preference per `attention_backend`. cuDNN first on Hopper: measured ~1.6x faster than flash at
# head dim 64 (SPEC §10); SDPA falls through the list when a kernel cannot take the inputs (e.g. a mask).
_BACKENDS = {
    "auto": [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH],
    "cudnn": [SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH],
    "flash": [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH],
    "sdpa": None,  # PyTorch's own choice
}

_ATTENTION_OPS = {
    torch.ops.aten._scaled_dot_product_cudnn_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention.default,
    torch.ops.aten._scaled_dot_product_efficient_attention.default,
}


@dataclass(frozen=True)
class SpeedPlan:
    fast_path: bool = True
    attention: str = "auto"  # key of _BACKENDS
    checkpointing: str = "selective"  # none | full | selective (keep attention outputs, recompute the rest)
    compile: bool | None = None  # compile the fused groups (default: on CUDA)
    keep_attention_blocks: int | None = None  # selective: only the first N visual blocks keep attention

    def attention_context(self):
        backends = _BACKENDS.get(self.attention)
        if backends is None:
            return contextlib.nullcontext()
        return sdpa_kernel(backends, set_priority=True)


# Attention with fewer keys than this (the cross-attention to ~100-256 text tokens) is cheap to redo.
_CHEAP_KEYS = 1024


def _keep_attention(ctx, op, *args, **kwargs):
    """Selective checkpointing: self-attention outputs are saved (attention is ~2/3 of the FLOPs at 24k
    tokens); everything else, cross-attention included, is recomputed in backward."""
    if op in _ATTENTION_OPS and args[1].shape[-2] >= _CHEAP_KEYS:
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


def _checkpoint_full(module, *args):
    return checkpoint(module.__call__, *args, use_reentrant=False)


def _checkpoint_selective(module, *args, keep_blocks: int | None = None):
    if keep_blocks is not None and getattr(module, "_k5_visual_index", -1) >= keep_blocks:
        return _checkpoint_full(module, *args)
    return checkpoint(module.__call__, *args, use_reentrant=False,
                      context_fn=partial(create_selective_checkpoint_contexts, _keep_attention))


def apply_speed_plan(transformer, plan: SpeedPlan) -> None:
    from k5tune.models.kandinsky5.fast import enable_fast_path

    if plan.fast_path:
        from k5tune.train.fused_lora import enable_fused_lora

        enable_fast_path(transformer, plan.compile)
        enable_fused_lora(transformer)
    if plan.checkpointing == "none":
        transformer.disable_gradient_checkpointing()
    elif plan.checkpointing == "full":
        transformer.enable_gradient_checkpointing(gradient_checkpointing_func=_checkpoint_full)
    elif plan.checkpointing == "selective":
        for index, block in enumerate(transformer.visual_transformer_blocks):
            block._k5_visual_index = index
        transformer.enable_gradient_checkpointing(
            gradient_checkpointing_func=partial(_checkpoint_selective, keep_blocks=plan.keep_attention_blocks))
    else:
        raise ValueError(f"unknown checkpointing mode '{plan.checkpointing}'")
