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

from dataclasses import dataclass

import torch

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


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    expanded = index.view(*index.shape, *([1] * (x.dim() - 2))).expand(*index.shape, *x.shape[2:])
    return torch.gather(x, 1, expanded)


def scatter_tokens(full: torch.Tensor, index: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
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


def draw_scores(generator: torch.Generator | list[torch.Generator], batch: int, tokens: int) -> torch.Tensor:
    if isinstance(generator, torch.Generator):
        return torch.rand(batch, tokens, generator=generator)
    if len(generator) != batch:
        raise ValueError(f"TREAD needs one generator per sample: got {len(generator)} for a batch of {batch}")
    return torch.stack([torch.rand(tokens, generator=g) for g in generator])


def install_tread(transformer, routes: list[Route]) -> TreadState:
    from k5tune.models.kandinsky5.forward import install_forward

    install_forward(transformer)
    transformer._k5_tread = TreadState(routes)
    return transformer._k5_tread


def set_tread_step(transformer, generator: torch.Generator | list[torch.Generator] | None,
                   protect_first_frame: bool = False) -> None:
    state = getattr(transformer, "_k5_tread", None)
    if state is not None:
        state.generator = generator
        state.protect_first_frame = protect_first_frame
