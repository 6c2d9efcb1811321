"""The transformer's training forward: diffusers' Kandinsky5Transformer3DModel.forward (the same ops in
the same order), with the visual token stream open to two training-only changes: TREAD routing
(tread.py: a share of the tokens skips a span of blocks) and the sequence split (sequence_parallel.py:
each process of a group runs a chunk of the tokens). With neither active (validation, inference, the
eval loss, rollout forwards: the model in eval mode) the stock forward runs."""

from __future__ import annotations

import types

import torch
from diffusers.models.transformers.transformer_kandinsky import fractal_flatten, fractal_unflatten

from k5tune.models.kandinsky5.sequence_parallel import active_group
from k5tune.models.kandinsky5.tread import (
    Route,
    TreadState,
    draw_scores,
    gather_tokens,
    keep_indices,
    scatter_tokens,
)


def install_forward(transformer) -> None:
    """Route `transformer.forward` through k5tune_forward (idempotent)."""
    if not hasattr(transformer, "_k5_stock_forward"):
        transformer._k5_stock_forward = transformer.forward
        transformer.forward = types.MethodType(k5tune_forward, transformer)


def _active_tread(model, sparse_params) -> TreadState | None:
    state: TreadState | None = getattr(model, "_k5_tread", None)
    if state is None or not model.training or sparse_params is not None or state.generator is None:
        return None
    return state


def _run_block(model, block, *args):
    if torch.is_grad_enabled() and model.gradient_checkpointing:
        return model._gradient_checkpointing_func(block, *args)
    return block(*args)


def k5tune_forward(self, hidden_states, encoder_hidden_states, timestep, pooled_projections, visual_rope_pos,
                   text_rope_pos, scale_factor=(1.0, 1.0, 1.0), sparse_params=None, return_dict=True):
    tread, group = _active_tread(self, sparse_params), active_group(self)
    if tread is None and group is None:
        return self._k5_stock_forward(hidden_states, encoder_hidden_states, timestep, pooled_projections,
                                      visual_rope_pos, text_rope_pos, scale_factor, sparse_params, return_dict)
    text_embed = self.text_embeddings(encoder_hidden_states)
    time_embed = self.time_embeddings(timestep) + self.pooled_text_embeddings(pooled_projections)
    visual_embed = self.visual_embeddings(hidden_states)
    text_rope = self.text_rope_embeddings(text_rope_pos).unsqueeze(dim=0)
    for block in self.text_transformer_blocks:
        text_embed = _run_block(self, block, text_embed, time_embed, text_rope)
    visual_shape = visual_embed.shape[:-1]
    visual_rope = self.visual_rope_embeddings(visual_shape, visual_rope_pos, scale_factor)
    to_fractal = sparse_params["to_fractal"] if sparse_params is not None else False
    visual_embed, visual_rope = fractal_flatten(visual_embed, visual_rope, visual_shape, block_mask=to_fractal)
    if group is not None:  # this process's chunk of the tokens, and of their RoPE
        visual_embed, visual_rope = group.split(visual_embed), group.split(visual_rope)
    if tread is not None:
        visual_embed = _routed_blocks(self, tread, visual_embed, visual_rope, text_embed, time_embed, visual_shape)
    else:
        for block in self.visual_transformer_blocks:
            visual_embed = _run_block(self, block, visual_embed, text_embed, time_embed, visual_rope, sparse_params)
    if group is not None:
        visual_embed = group.gather(visual_embed)
    visual_embed = fractal_unflatten(visual_embed, visual_shape, block_mask=to_fractal)
    out = self.out_layer(visual_embed, text_embed, time_embed)
    if not return_dict:
        return out
    from diffusers.models.modeling_outputs import Transformer2DModelOutput

    return Transformer2DModelOutput(sample=out)


def _routed_blocks(self, state: TreadState, visual_embed, visual_rope, text_embed, time_embed, visual_shape):
    """The visual blocks with TREAD's routes: at a route's start a share of the tokens leaves the stream,
    after its end they return unchanged (tread.py)."""
    batch, tokens = visual_embed.shape[:2]
    protected = None
    if state.protect_first_frame:  # I2V: the conditioning frame's tokens always stay
        per_frame = tokens // visual_shape[1]
        protected = torch.zeros(batch, tokens, dtype=torch.bool, device=visual_embed.device)
        protected[:, :per_frame] = True
    full_embed = full_rope = index = None
    active: Route | None = None
    for position, block in enumerate(self.visual_transformer_blocks):
        if active is None and position in state.routes:
            active = state.routes[position]
            scores = draw_scores(state.generator, batch, tokens).to(visual_embed.device)
            index = state.kept = keep_indices(scores, active.ratio, protected)
            full_embed, full_rope = visual_embed, visual_rope
            visual_embed = gather_tokens(visual_embed, index)
            visual_rope = gather_tokens(visual_rope.expand(batch, *visual_rope.shape[1:]), index)
        visual_embed = _run_block(self, block, visual_embed, text_embed, time_embed, visual_rope, None)
        if active is not None and position == active.end:
            visual_embed = scatter_tokens(full_embed, index, visual_embed)  # routed tokens return unchanged
            visual_rope, active, state.kept = full_rope, None, None
    return visual_embed
