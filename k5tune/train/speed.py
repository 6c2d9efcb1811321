"""Applying the speed side of a TrainingPlan (plan.py) to the transformer: the fused fast path, the
attention kernel, compiled blocks, and how much is recomputed in backward.
"""

from __future__ import annotations

import contextlib
from functools import partial
from typing import TYPE_CHECKING

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from k5tune.train.activation_offload import SavedActivationOffload

if TYPE_CHECKING:
    from k5tune.train.plan import TrainingPlan

# Preference per `attention_backend`. cuDNN first on Hopper: measured ~1.6x faster than flash at
# head dim 64 (SPEC §10); SDPA falls through the list when a kernel cannot take the inputs (e.g. a mask).
_BACKENDS = {
    "auto": [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH],
    "cudnn": [SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH],
    "flash": [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH],
    "sdpa": None,  # PyTorch's own choice
}

_ATTENTION_OPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
    torch.ops.aten._scaled_dot_product_cudnn_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention.default,
    torch.ops.aten._scaled_dot_product_efficient_attention.default,
}


def attention_context(attention: str):
    """The SDPA kernel preference of `attention_backend` (a context for the forward and backward)."""
    backends = _BACKENDS.get(attention)
    if backends is None:
        return contextlib.nullcontext()
    return sdpa_kernel(backends, set_priority=True)


# FlexAttention (NABLA) as a compiled block traces it: a higher-order op selective checkpointing can keep
_FLEX_ATTENTION = torch.ops.higher_order.flex_attention

# Attention with fewer keys than this (the cross-attention to ~100-256 text tokens) is cheap to redo.
_CHEAP_KEYS = 1024


def _is_block_mask_index(op, args, kwargs) -> bool:
    """NABLA's block mask, as a compiled block traces it: its index tensors are the int64 -> int32 casts
    that end the mask's sorts and sums (FlexAttention's BlockMask holds int32). No other op of a
    Kandinsky block makes one, so keeping these keeps exactly the mask (nabla.py builds it)."""
    return (op is torch.ops.aten._to_copy.default and kwargs.get("dtype") is torch.int32
            and isinstance(args[0], torch.Tensor) and args[0].dtype is torch.int64)


def _keep_attention(ctx, op, *args, **kwargs):
    """Selective checkpointing: self-attention outputs are saved (attention is ~2/3 of the FLOPs at 24k
    tokens); everything else, cross-attention included, is recomputed in backward."""
    if op in _ATTENTION_OPS and args[1].shape[-2] >= _CHEAP_KEYS:
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


# Compiled blocks only: an eager recomputation replays the kept outputs in the order the forward made
# them, and an eager NABLA block reuses its forward's mask instead of building it again (nabla.share_masks).
def _keep_attention_and_mask(ctx, op, *args, **kwargs):
    """Selective checkpointing in a compiled block: under NABLA, FlexAttention's output is the attention
    output kept, and the block mask is kept with it (never rebuilt in backward)."""
    if op is _FLEX_ATTENTION or _is_block_mask_index(op, args, kwargs):
        return CheckpointPolicy.MUST_SAVE
    return _keep_attention(ctx, op, *args, **kwargs)


def _keep_block_mask(ctx, op, *args, **kwargs):
    """Full checkpointing in a compiled block: everything is recomputed but NABLA's block mask."""
    return CheckpointPolicy.MUST_SAVE if _is_block_mask_index(op, args, kwargs) else CheckpointPolicy.PREFER_RECOMPUTE


def _full_region(module, *args):
    return checkpoint(module.__call__, *args, use_reentrant=False)


def _selective_region(module, *args):
    return checkpoint(module.__call__, *args, use_reentrant=False,
                      context_fn=partial(create_selective_checkpoint_contexts, _keep_attention))


def _compiled_selective_region(module, *args):
    return checkpoint(module.__call__, *args, use_reentrant=False,
                      context_fn=partial(create_selective_checkpoint_contexts, _keep_attention_and_mask))


def _compiled_full_region(module, *args):
    return checkpoint(module.__call__, *args, use_reentrant=False,
                      context_fn=partial(create_selective_checkpoint_contexts, _keep_block_mask))


def _keeps_attention(module, keep_blocks: int | None) -> bool:
    """Selective: every block keeps its attention, or only the first `keep_blocks` visual ones."""
    return keep_blocks is None or getattr(module, "_k5_visual_index", -1) < keep_blocks


def _checkpoint_selective(module, *args, keep_blocks: int | None = None):
    return (_selective_region if _keeps_attention(module, keep_blocks) else _full_region)(module, *args)


# One compiled function per kind of region, made on first use: dynamo keeps one graph per block kind
# and input shape (text/visual block, whether the input needs a gradient, TREAD's shorter sequence),
# shared by all blocks of that kind. A second sequence length (another bucket, a caption of another
# length) makes that dimension dynamic instead of compiling once per length; a NABLA block's visual token
# count stays static (_static_visual_tokens): one graph per bucket.
_compiled_regions: dict = {}


def graphs_for_buckets(buckets: int) -> None:
    """Let each compiled NABLA region (and FlexAttention compiled alone) keep a graph for every bucket of
    the run. A NABLA block compiles once per bucket (with and without an input gradient: 2 graphs); past
    dynamo's limit it would run eagerly for the later buckets (slower, not wrong), so the limit follows
    the bucket count (64 serves ~24). Limits only ever rise, so a region compiled later keeps this one."""
    _raise_graph_limit(max(64, 2 * buckets + 16))


def _raise_graph_limit(wanted: int) -> None:
    """dynamo's graphs per compiled region at least `wanted`: ~6 for a region (text/visual block, input
    with or without gradient, dynamic lengths), 2 more per bucket for NABLA's static visual blocks;
    torch 2.6 calls the limit cache_size_limit."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), wanted))
    # and the cap over all of a code object's graphs (256 by default; the compiled regions share code)
    total = "accumulated_recompile_limit" if hasattr(config, "accumulated_recompile_limit") else \
        "accumulated_cache_size_limit"
    if hasattr(config, total):
        setattr(config, total, max(getattr(config, total), 4 * wanted))


def _compiled_region(selective: bool, backend: str, nabla_tiling: str | None = None):
    """`nabla_tiling`: NABLA's blocks (TrainingPlan.flex_tiling, which picks the compile mode for the
    FlexAttention traced into them: nabla.flex_compile_mode); None for dense blocks."""
    nabla = nabla_tiling is not None
    if (selective, backend, nabla_tiling) not in _compiled_regions:
        _raise_graph_limit(64 if nabla else 16)
        if nabla:  # the policies that keep the block mask (and, selective, FlexAttention's output)
            region = _compiled_selective_region if selective else _compiled_full_region
        else:
            region = _selective_region if selective else _full_region
        settings = {"backend": backend}
        if nabla and backend == "inductor":
            settings.update(_nabla_block_compile_settings(nabla_tiling))
        _compiled_regions[selective, backend, nabla_tiling] = torch.compile(region, **settings)
    return _compiled_regions[selective, backend, nabla_tiling]


def _nabla_block_compile_settings(tiling: str) -> dict:
    """torch.compile's settings for a NABLA block (nabla.flex_compile_mode picks FlexAttention's).

    Autotuned tiles: in max-autotune mode the whole block failed on an H100 (torch 2.11, session 8:
    benchmarks/results/2026-12-07-s8-h100.md): the block's matmuls were autotuned too (Triton candidates
    over the shared-memory limit, then an illegal memory access), and the retry, at a dynamic token count,
    found no FlexAttention backward tiling. So only FlexAttention autotunes (the matmuls keep cuBLAS, as
    dense compiled blocks do), and the visual token count stays static (_static_visual_tokens)."""
    from k5tune.models.kandinsky5.nabla import flex_compile_mode

    if flex_compile_mode(tiling) is None:
        return {}
    return {"options": {"max_autotune": True, "max_autotune_gemm_backends": "ATEN"}}


def _static_visual_tokens(args: tuple) -> None:
    """A visual NABLA block compiles once per visual token count (a bucket), never for a symbolic one:
    FlexAttention's kernels are chosen for the mask's block grid (at a dynamic count, torch 2.11 found no
    backward tiling on an H100). The caption length may still vary within one graph (dynamic), so
    captions of new lengths do not recompile a block per length."""
    visual_embed, rope = args[0], args[3]
    torch._dynamo.mark_static(visual_embed)
    torch._dynamo.mark_static(rope)


def _checkpoint_compiled(module, *args, selective: bool, keep_blocks: int | None, backend: str,
                         nabla_tiling: str | None, offload: SavedActivationOffload | None = None):
    region = _compiled_region(selective and _keeps_attention(module, keep_blocks), backend, nabla_tiling)
    if nabla_tiling is not None and hasattr(module, "_k5_visual_index"):
        _static_visual_tokens(args)
    with offload.around(module, args) if offload is not None else contextlib.nullcontext():
        return region(module, *args)


def apply_speed_plan(transformer, plan: TrainingPlan, on_gpu: bool | None = None) -> None:
    """Wire the blocks as `plan` says: fused kernels, compiled regions, the checkpointing policy, and
    (compiled blocks) the saved-tensor offload. `on_gpu`: the training device, not where the weights
    are now (with offload or FSDP2 they are still in CPU memory here); default: where they are."""
    from k5tune.models.kandinsky5.fast import enable_fast_path

    if on_gpu is None:
        on_gpu = next(transformer.parameters()).is_cuda
    compiled = plan.compiles_blocks(on_gpu)
    if plan.fused_kernels:
        from k5tune.train.fused_lora import enable_fused_lora

        # (compiled blocks trace the element-wise groups into their own graph; the groups' own compiled
        # versions still serve the eager paths: validation, offload)
        enable_fast_path(transformer, plan.compiles_kernels(on_gpu))
        enable_fused_lora(transformer)
    for index, block in enumerate(transformer.visual_transformer_blocks):
        block._k5_visual_index = index
    if compiled:
        offload = None
        if plan.offloads_through_hooks(on_gpu):
            offload = SavedActivationOffload(first_block=[*transformer.text_transformer_blocks,
                                                          *transformer.visual_transformer_blocks][0])
        transformer._k5_activation_offload = offload  # (None without it; for tests and diagnostics)
        transformer.enable_gradient_checkpointing(gradient_checkpointing_func=partial(
            _checkpoint_compiled, selective=plan.checkpointing == "selective", keep_blocks=plan.keep_attention_blocks,
            backend=plan.compile_backend, offload=offload,
            nabla_tiling=None if plan.nabla is None else plan.flex_tiling))
    elif plan.checkpointing == "none":
        transformer.disable_gradient_checkpointing()
    elif plan.checkpointing == "full":
        transformer.enable_gradient_checkpointing(gradient_checkpointing_func=_full_region)
    elif plan.checkpointing == "selective":
        transformer.enable_gradient_checkpointing(
            gradient_checkpointing_func=partial(_checkpoint_selective, keep_blocks=plan.keep_attention_blocks))
    else:
        raise ValueError(f"unknown checkpointing mode '{plan.checkpointing}'")
