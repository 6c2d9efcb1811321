"""The fast training path for the Kandinsky 5 transformer: same maths as the diffusers blocks, fewer
passes over memory.

The stock blocks round-trip every LayerNorm, modulation, gated residual, q/k RMSNorm and RoPE through
separate fp32 kernels: at 24,576 tokens each is a full read and write of a ~88 MB tensor, dozens per
block. Here each of those groups is one function that `torch.compile` fuses into a single kernel
(on CUDA); attention runs through `F.scaled_dot_product_attention` so the attention backend chosen
for the card (cuDNN, flash, ...) applies; the linear layers (and their peft LoRA wrappers) are
untouched. The processor also takes an optional key-padding mask for text keys (see text_mask.py).

Numerics follow the stock modules: fp32 norms and modulation, bf16 rounding of the rotated q/k.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from diffusers.models.transformers.transformer_kandinsky import (
    Kandinsky5AttnProcessor,
    Kandinsky5TransformerDecoderBlock,
    Kandinsky5TransformerEncoderBlock,
)

# --- fused element-wise groups (eager definitions; compiled on CUDA by `enable_fast_path`) ---------


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """LayerNorm (no affine) in fp32, then x * (1 + scale) + shift, back in x's dtype."""
    normed = F.layer_norm(x.float(), (x.shape[-1],), eps=1e-5)
    return (normed * (scale.float() + 1.0) + shift.float()).type_as(x)


def gated_residual(x: torch.Tensor, gate: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return (x.float() + gate.float() * out.float()).type_as(x)


def norm_rope(x: torch.Tensor, weight: torch.Tensor, eps: float | None, rope: torch.Tensor | None) -> torch.Tensor:
    """Per-head RMSNorm in fp32, then RoPE with the stock rounding (to bf16), back in x's dtype."""
    x_float = x.float()
    variance = x_float.pow(2).mean(-1, keepdim=True)
    eps = torch.finfo(torch.float32).eps if eps is None else eps
    normed = x_float * torch.rsqrt(variance + eps) * weight.float()
    if rope is None:
        return normed.type_as(x)
    normed = normed.type_as(x).float()  # the stock processor rounds to x's dtype before rotating
    pairs = normed.reshape(*normed.shape[:-1], -1, 1, 2)
    rotated = (rope * pairs).sum(dim=-1).reshape(*x.shape)
    return rotated.to(torch.bfloat16).type_as(x)


_EAGER_KERNELS = {"modulate": modulate, "gated_residual": gated_residual, "norm_rope": norm_rope}
_kernels = dict(_EAGER_KERNELS)


def fused_kernel(name: str):
    """One fused group ("modulate", "gated_residual", "norm_rope") as the fast path runs it now: compiled
    on CUDA, the plain definition on the CPU and inside a compiled block (speed.py), which traces it into
    the block's own graph."""
    return _EAGER_KERNELS[name] if torch.compiler.is_compiling() else _kernels[name]


# --- attention ----------------------------------------------------------------------------------


class FastAttnProcessor(Kandinsky5AttnProcessor):
    """Kandinsky5AttnProcessor with fused q/k norm + RoPE, SDPA, and an optional text key mask."""

    def __init__(self) -> None:
        super().__init__()
        self.key_mask: torch.Tensor | None = None  # (B, L) bool, True = real token
        self.exchange = None  # visual self-attention under sequence parallelism (sequence_parallel.py)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, rotary_emb=None, sparse_params=None):
        if sparse_params is not None:  # nabla sparse attention: the stock path (flex attention)
            if self.exchange is not None and attn.training:  # (NablaAttnProcessor runs NABLA under the split)
                raise RuntimeError("sparse attention reached the fast processor under sequence parallelism")
            return super().__call__(attn, hidden_states, encoder_hidden_states, rotary_emb, sparse_params)
        source = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        query = attn.to_query(hidden_states)
        key = attn.to_key(source)
        value = attn.to_value(source)
        query = query.unflatten(-1, (attn.num_heads, -1))
        key = key.unflatten(-1, (attn.num_heads, -1))
        value = value.unflatten(-1, (attn.num_heads, -1))
        query = fused_kernel("norm_rope")(query, attn.query_norm.weight, attn.query_norm.eps, rotary_emb)
        key = fused_kernel("norm_rope")(key, attn.key_norm.weight, attn.key_norm.eps, rotary_emb)
        exchange = self.exchange if attn.training else None
        if exchange is not None:  # this chunk's tokens of every head -> every token of this process's heads
            query, key, value = exchange.to_heads(query), exchange.to_heads(key), exchange.to_heads(value)
        mask = None if self.key_mask is None else self.key_mask.to(query.device)[:, None, None, :]
        out = F.scaled_dot_product_attention(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_mask=mask
        ).transpose(1, 2)
        if exchange is not None:
            out = exchange.to_sequence(out)
        return attn.out_layer(out.flatten(-2, -1))


# --- blocks ---------------------------------------------------------------------------------------


def _decoder_forward(self, visual_embed, text_embed, time_embed, rope, sparse_params):
    self_params, cross_params, ff_params = torch.chunk(self.visual_modulation(time_embed).unsqueeze(dim=1), 3, dim=-1)
    shift, scale, gate = torch.chunk(self_params, 3, dim=-1)
    out = self.self_attention(fused_kernel("modulate")(visual_embed, shift, scale), rotary_emb=rope,
                              sparse_params=sparse_params)
    visual_embed = fused_kernel("gated_residual")(visual_embed, gate, out)
    shift, scale, gate = torch.chunk(cross_params, 3, dim=-1)
    out = self.cross_attention(fused_kernel("modulate")(visual_embed, shift, scale),
                               encoder_hidden_states=text_embed)
    visual_embed = fused_kernel("gated_residual")(visual_embed, gate, out)
    shift, scale, gate = torch.chunk(ff_params, 3, dim=-1)
    out = self.feed_forward(fused_kernel("modulate")(visual_embed, shift, scale))
    return fused_kernel("gated_residual")(visual_embed, gate, out)


def _encoder_forward(self, x, time_embed, rope):
    attn_params, ff_params = torch.chunk(self.text_modulation(time_embed).unsqueeze(dim=1), 2, dim=-1)
    shift, scale, gate = torch.chunk(attn_params, 3, dim=-1)
    attended = self.self_attention(fused_kernel("modulate")(x, shift, scale), rotary_emb=rope)
    x = fused_kernel("gated_residual")(x, gate, attended)
    shift, scale, gate = torch.chunk(ff_params, 3, dim=-1)
    fed = self.feed_forward(fused_kernel("modulate")(x, shift, scale))
    return fused_kernel("gated_residual")(x, gate, fed)


def enable_fast_path(transformer, compile_kernels: bool | None = None) -> None:
    """Swap in the fused blocks and processors (idempotent). Compiles the fused groups on CUDA."""
    if compile_kernels is None:
        compile_kernels = next(transformer.parameters()).is_cuda
    if not compile_kernels:
        _kernels.update(_EAGER_KERNELS)
    elif not getattr(_kernels["modulate"], "_k5_compiled", False):
        for name, fn in list(_kernels.items()):
            compiled = torch.compile(fn, dynamic=False, fullgraph=True)
            compiled._k5_compiled = True
            _kernels[name] = compiled
    for module in transformer.modules():
        if isinstance(module, Kandinsky5TransformerDecoderBlock):
            module.forward = types.MethodType(_decoder_forward, module)
        elif isinstance(module, Kandinsky5TransformerEncoderBlock):
            module.forward = types.MethodType(_encoder_forward, module)
    for module in transformer.modules():
        if hasattr(module, "set_processor") and hasattr(module, "to_query"):
            if not isinstance(module.processor, FastAttnProcessor):
                module.set_processor(FastAttnProcessor())
