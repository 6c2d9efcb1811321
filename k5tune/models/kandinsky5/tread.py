"""TREAD token routing for training (`tread_config`).

At a route's start block a random share (`selection_ratio`) of the video tokens leaves the stream;
the remaining tokens (in their original order, with their own RoPE positions) go through the blocks
up to the route's end; after the end block the routed tokens are put back in place, unchanged. Text
tokens and the time/text conditioning are never routed, nor are I2V conditioning-frame tokens. Each
sample draws its routing from its own seeded generator (the one its noise came from), so a resumed run
routes exactly as the uninterrupted one, and a sample routes the same whichever process trains it.
Routing happens only in training (model.train() and a router installed); validation and inference
run the dense model.
"""

from __future__ import annotations

import types
from dataclasses import dataclass

import torch
from diffusers.models.transformers.transformer_kandinsky import fractal_flatten, fractal_unflatten

from k5tune.errors import ConfigError


@dataclass(frozen=True)
class Route:
    ratio: float
    start: int  # first routed block (resolved, non-negative)
    end: int  # last routed block (inclusive)


def resolve_routes(tread, num_blocks: int) -> list[Route]:
    """Resolve negative indices against the model's visual blocks and check the routes. `tread`: a
    tread_config, or its routes as (selection ratio, start, end) tuples (TrainingPlan.tread)."""
    given = [(r.selection_ratio, r.start_layer_idx, r.end_layer_idx) for r in tread.routes] if hasattr(
        tread, "routes") else list(tread)
    routes = []
    for position, (ratio, first, last) in enumerate(given):
        start = first + num_blocks if first < 0 else first
        end = last + num_blocks if last < 0 else last
        where = f"tread_config.routes.{position}"
        if not (0 <= start < num_blocks and 0 <= end < num_blocks):
            raise ConfigError(f"start_layer_idx {first} / end_layer_idx {last} fall outside the model's "
                              f"{num_blocks} visual blocks (valid: -{num_blocks}..{num_blocks - 1})", key=where)
        if start >= end:
            raise ConfigError(f"start_layer_idx ({first} = block {start}) must come before end_layer_idx ({last} = "
                              f"block {end})", key=where)
        routes.append(Route(ratio, start, end))
    routes.sort(key=lambda r: r.start)
    for earlier, later in zip(routes, routes[1:], strict=False):
        if later.start <= earlier.end:
            raise ConfigError(f"routes overlap: blocks {earlier.start}-{earlier.end} and {later.start}-{later.end}; "
                              "routes must not share blocks", key="tread_config.routes")
    return routes


def keep_indices(scores: torch.Tensor, ratio: float, protected: torch.Tensor | None) -> torch.Tensor:
    """(B, K) sorted indices of the tokens that stay, K the same for every sample.

    `scores` (B, S) are uniform draws; protected tokens (conditioning) always stay.
    """
    batch, tokens = scores.shape
    routable = tokens if protected is None else tokens - int(protected[0].sum())
    routed = int(round(ratio * routable))
    if protected is not None:
        scores = scores.masked_fill(protected, -1.0)
    kept = torch.topk(scores, tokens - routed, dim=1, largest=False).indices
    return kept.sort(dim=1).values


def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    expanded = index.view(*index.shape, *([1] * (x.dim() - 2))).expand(*index.shape, *x.shape[2:])
    return torch.gather(x, 1, expanded)


def _scatter(full: torch.Tensor, index: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
    expanded = index.view(*index.shape, *([1] * (full.dim() - 2))).expand(*index.shape, *full.shape[2:])
    return full.scatter(1, expanded, part)


class TreadState:
    """What the routed forward needs for one step: the routes, the generator(s), protected tokens."""

    def __init__(self, routes: list[Route]):
        self.routes = {r.start: r for r in routes}
        # one generator per sample of the micro-batch, or one for the whole batch (k5tune bench)
        self.generator: torch.Generator | list[torch.Generator] | None = None
        self.protect_first_frame = False
        self.kept: torch.Tensor | None = None  # (B, K) positions of the tokens in the active route (CREPA reads it)


def _draw_scores(generator: torch.Generator | list[torch.Generator], batch: int, tokens: int) -> torch.Tensor:
    if isinstance(generator, torch.Generator):
        return torch.rand(batch, tokens, generator=generator)
    if len(generator) != batch:
        raise ValueError(f"TREAD needs one generator per sample: got {len(generator)} for a batch of {batch}")
    return torch.stack([torch.rand(tokens, generator=g) for g in generator])


def _routed_forward(self, hidden_states, encoder_hidden_states, timestep, pooled_projections, visual_rope_pos,
                    text_rope_pos, scale_factor=(1.0, 1.0, 1.0), sparse_params=None, return_dict=True):
    state: TreadState | None = getattr(self, "_k5_tread", None)
    if state is None or not self.training or sparse_params is not None or state.generator is None:
        return self._k5_dense_forward(hidden_states, encoder_hidden_states, timestep, pooled_projections,
                                      visual_rope_pos, text_rope_pos, scale_factor, sparse_params, return_dict)
    # the stock forward, with the visual loop routed
    text_embed = self.text_embeddings(encoder_hidden_states)
    time_embed = self.time_embeddings(timestep) + self.pooled_text_embeddings(pooled_projections)
    visual_embed = self.visual_embeddings(hidden_states)
    text_rope = self.text_rope_embeddings(text_rope_pos).unsqueeze(dim=0)
    for block in self.text_transformer_blocks:
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            text_embed = self._gradient_checkpointing_func(block, text_embed, time_embed, text_rope)
        else:
            text_embed = block(text_embed, time_embed, text_rope)
    visual_shape = visual_embed.shape[:-1]
    visual_rope = self.visual_rope_embeddings(visual_shape, visual_rope_pos, scale_factor)
    visual_embed, visual_rope = fractal_flatten(visual_embed, visual_rope, visual_shape, block_mask=False)
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
            scores = _draw_scores(state.generator, batch, tokens).to(visual_embed.device)
            index = state.kept = keep_indices(scores, active.ratio, protected)
            full_embed, full_rope = visual_embed, visual_rope
            visual_embed, visual_rope = _gather(visual_embed, index), _gather(visual_rope.expand(batch, *visual_rope.shape[1:]), index)
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            visual_embed = self._gradient_checkpointing_func(block, visual_embed, text_embed, time_embed, visual_rope,
                                                             sparse_params)
        else:
            visual_embed = block(visual_embed, text_embed, time_embed, visual_rope, sparse_params)
        if active is not None and position == active.end:
            visual_embed = _scatter(full_embed, index, visual_embed)  # routed tokens return unchanged
            visual_rope, active, state.kept = full_rope, None, None
    visual_embed = fractal_unflatten(visual_embed, visual_shape, block_mask=False)
    out = self.out_layer(visual_embed, text_embed, time_embed)
    if not return_dict:
        return out
    from diffusers.models.modeling_outputs import Transformer2DModelOutput

    return Transformer2DModelOutput(sample=out)


def install_tread(transformer, routes: list[Route]) -> TreadState:
    if not hasattr(transformer, "_k5_dense_forward"):
        transformer._k5_dense_forward = transformer.forward
        transformer.forward = types.MethodType(_routed_forward, transformer)
    transformer._k5_tread = TreadState(routes)
    return transformer._k5_tread


def set_tread_step(transformer, generator: torch.Generator | list[torch.Generator] | None,
                   protect_first_frame: bool = False) -> None:
    state = getattr(transformer, "_k5_tread", None)
    if state is not None:
        state.generator = generator
        state.protect_first_frame = protect_first_frame
