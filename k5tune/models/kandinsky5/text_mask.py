"""Keep caption padding out of attention when a batch mixes caption lengths.

The stock transformer takes no text mask: padding tokens would enter the text self-attention and
the visual->text cross-attention (the original model masks them). We swap in a processor that does
the same maths as diffusers' `Kandinsky5AttnProcessor` plus a key-padding mask for text keys. The
mask is set per step with `set_text_mask` and stays until the next call, so the recomputation of
gradient checkpointing in backward sees the same mask as the forward.
"""

from __future__ import annotations

import torch
from diffusers.models.transformers.transformer_kandinsky import Kandinsky5AttnProcessor

from k5tune.models.kandinsky5.fast import FastAttnProcessor


class MaskedTextAttnProcessor(FastAttnProcessor):
    """The stock processor while no mask is set; with a mask, the fast path's masked attention (the same
    maths as the stock processor, plus the key-padding mask)."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, rotary_emb=None, sparse_params=None):
        if self.key_mask is None:
            return Kandinsky5AttnProcessor.__call__(self, attn, hidden_states, encoder_hidden_states, rotary_emb,
                                                    sparse_params)
        return super().__call__(attn, hidden_states, encoder_hidden_states, rotary_emb, sparse_params)


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
