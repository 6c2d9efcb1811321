"""Keep caption padding out of attention when a batch mixes caption lengths.

The stock transformer takes no text mask: padding tokens would enter the text self-attention and
the visual->text cross-attention (the original model masks them). We swap in a processor that does
the same maths as diffusers' `Kandinsky5AttnProcessor` plus a key-padding mask for text keys. The
mask is set per step with `set_text_mask` and stays until the next call, so the recomputation of
gradient checkpointing in backward sees the same mask as the forward.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_kandinsky import Kandinsky5AttnProcessor


class MaskedTextAttnProcessor(Kandinsky5AttnProcessor):
    """Kandinsky5AttnProcessor whose keys (text tokens) can be masked."""

    def __init__(self) -> None:
        super().__init__()
        self.key_mask: torch.Tensor | None = None  # (B, L) bool, True = real token

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, rotary_emb=None, sparse_params=None):
        if self.key_mask is None:
            return super().__call__(attn, hidden_states, encoder_hidden_states, rotary_emb, sparse_params)
        keys_from = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        query = attn.to_query(hidden_states)
        key = attn.to_key(keys_from)
        value = attn.to_value(keys_from)
        query = query.reshape(*query.shape[:-1], attn.num_heads, -1)
        key = key.reshape(*key.shape[:-1], attn.num_heads, -1)
        value = value.reshape(*value.shape[:-1], attn.num_heads, -1)
        query = attn.query_norm(query.float()).type_as(query)
        key = attn.key_norm(key.float()).type_as(key)
        if rotary_emb is not None:
            query = _apply_rotary(query, rotary_emb).type_as(query)
            key = _apply_rotary(key, rotary_emb).type_as(key)
        mask = self.key_mask.to(query.device)[:, None, None, :]  # broadcast over heads and queries
        out = dispatch_attention_fn(query, key, value, attn_mask=mask, backend=self._attention_backend,
                                    parallel_config=self._parallel_config)
        return attn.out_layer(out.flatten(-2, -1))


def _apply_rotary(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    # same rounding as the stock processor (it casts to bf16 here, even in fp32 runs)
    pairs = x.reshape(*x.shape[:-1], -1, 1, 2).to(torch.float32)
    return (rope * pairs).sum(dim=-1).reshape(*x.shape).to(torch.bfloat16)


def text_attentions(transformer):
    """Attentions whose keys are text tokens: text self-attention and visual cross-attention."""
    for block in transformer.text_transformer_blocks:
        yield block.self_attention
    for block in transformer.visual_transformer_blocks:
        yield block.cross_attention


def install_text_mask(transformer) -> None:
    """Give every text-keyed attention a mask-capable processor (the fast path's already is one)."""
    for attention in text_attentions(transformer):
        if not hasattr(attention.processor, "key_mask"):
            attention.set_processor(MaskedTextAttnProcessor())


def set_text_mask(transformer, mask: torch.Tensor | None) -> None:
    """Mask (B, L) for the next forward/backward; None (all tokens real) uses the stock path."""
    for attention in text_attentions(transformer):
        if hasattr(attention.processor, "key_mask"):
            attention.processor.key_mask = mask
