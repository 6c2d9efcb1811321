"""THE recommender: which memory plan to train with, for `k5tune estimate`, the wizard and the web UI.

One rule (`first_fitting`): of candidates given fastest first, the first whose memory need fits the
card. `estimate` applies it to candidates of k5tune/train/plan.py's TrainingPlan, their need the
predicted peak at the config's shape (`propose`); the wizard and the web UI to the same plans as named
presets (estimate/presets.py; `k5tune estimate --gpu-memory` names that preset too). When nothing fits
a shape, both try shorter clips at the same size, then smaller shapes (`smaller_shapes`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any, NamedTuple, TypeVar

from k5tune.estimate.shape import TrainingShape
from k5tune.estimate.training import pinned_cpu_gib, training_peak_gib
from k5tune.train.plan import TrainingPlan

T = TypeVar("T")

# the plan's memory choices a candidate makes; every other field (TREAD, modulation, kernels, attention) is the user's
MEMORY_FIELDS = ("checkpointing", "keep_attention_blocks", "group_offload_blocks", "group_offload_stream",
                 "group_offload_leaf", "offload_activations", "base_precision", "fsdp_processes", "fsdp_reshard",
                 "fsdp_asked")


def _option(user: TrainingPlan, checkpointing: str, **memory: Any) -> TrainingPlan:
    """The user's plan with these memory choices (the others at the plan's defaults)."""
    defaults = TrainingPlan()
    return replace(user, **({k: getattr(defaults, k) for k in MEMORY_FIELDS} | {"checkpointing": checkpointing}
                            | memory))


def candidate_settings(processes: int = 1, user: TrainingPlan | None = None) -> list[TrainingPlan]:
    """What `estimate` tries in turn, fastest first. Step times measured on an H100 at 512x768x61
    (Lite / Pro): selective 1.73 / 7.68 s (blocks compiled); selective with activation offload 1.74 /
    7.69 s; int8 base 1.96 s (fp8 1.91); full checkpointing 2.03 s; full with activation offload
    2.10 / 8.67 s; group offload with stream and activation offload 2.17 / 9.34 s; int8 base
    with activation offload - / 9.75 s; group offload without stream 2.33 s. Where the speed is about
    the same, the exact bf16 base comes before int8, and less CPU memory before less GPU memory. FSDP2
    (processes > 1) comes last: 12.52 s per step on 2 GPUs (Pro, full checkpointing), slower than each
    GPU training its own clips with group offload (9.34 s) — but it needs no pinned CPU memory.
    `user`: the config's plan, whose TREAD routes, modulation_precision, fused_kernels (eager blocks)
    and attention every option keeps (choices the search leaves to the user)."""
    user = user or TrainingPlan()
    group = {"group_offload_blocks": 1, "offload_activations": True}  # activation offload: group offload's default
    options = [
        ("selective", {}),
        ("selective", {"offload_activations": True}),
        ("selective", {"base_precision": "int8"}),
        ("full", {}),
        ("full", {"offload_activations": True}),
        ("full", group),
        ("full", {"base_precision": "int8"}),
        ("full", {"base_precision": "int8", "offload_activations": True}),
        ("full", {"base_precision": "int8", **group}),
        ("full", {"base_precision": "int8", "group_offload_stream": False, **group}),
    ]
    if processes > 1:
        options += [(policy, {"fsdp_processes": processes, "fsdp_asked": True}) for policy in ("selective", "full")]
    return [_option(user, policy, **memory) for policy, memory in options]


def first_fitting(candidates: Iterable[T], need_gib: Callable[[T], float | None], gpu_gib: float,
                  margin_gib: float = 0.0) -> T | None:
    """THE rule every recommendation follows: of candidates given fastest first, the first whose memory
    need (None: never recommended) plus the margin fits the card."""
    for candidate in candidates:
        need = need_gib(candidate)
        if need is not None and need + margin_gib <= gpu_gib:
            return candidate
    return None


SMALLER_SHAPES = [(512, 768, 49), (480, 848, 49), (480, 848, 33), (384, 640, 33)]
SHORTER_FRAMES = (181, 121, 97, 81, 61)  # a long clip (10 s: 241 frames) first gets shorter at its own size


def smaller_shapes(shape: TrainingShape) -> list[TrainingShape]:
    """What `propose` tries when nothing fits `shape`, in order: shorter clips at the same size, then the
    guide's smaller shapes (those with fewer tokens than `shape`)."""
    sizes = [(shape.height, shape.width, f) for f in SHORTER_FRAMES if f < shape.frames] + SMALLER_SHAPES
    shapes = [TrainingShape(h, w, f, shape.batch, shape.rank, shape.targets) for h, w, f in sizes]
    return [s for s in shapes if s.tokens < shape.tokens]


def dataset_change(shape: TrainingShape, fits: TrainingShape) -> str:
    """The dataset keys that take a clip of `shape` to `fits` (the shorter side is `resolution`)."""
    if (fits.height, fits.width) == (shape.height, shape.width):
        return f"video.num_frames {fits.frames}"
    return f"resolution {min(fits.height, fits.width)}, video.num_frames {fits.frames}"


class Proposal(NamedTuple):
    shape: TrainingShape
    settings: TrainingPlan
    peak_gib: float


def propose(flavour: str, shape: TrainingShape, gpu_gib: float, margin_gib: float = 1.0, processes: int = 1,
            smaller: bool = True, max_pinned_gib: float | None = None,
            user: TrainingPlan | None = None) -> Proposal | None:
    """The first (fastest) setting that fits, then, if none fits and `smaller`, smaller shapes
    (smaller_shapes: shorter clips, then the guide's advice).
    `max_pinned_gib`: leave out settings that need more pinned CPU memory per process than this; `user`:
    see candidate_settings."""
    for candidate in [shape, *(smaller_shapes(shape) if smaller else [])]:
        options = [s for s in candidate_settings(processes, user)
                   if max_pinned_gib is None or pinned_cpu_gib(flavour, candidate, s) <= max_pinned_gib]
        chosen = first_fitting(options, lambda s, c=candidate: training_peak_gib(flavour, c, s), gpu_gib, margin_gib)
        if chosen is not None:
            return Proposal(candidate, chosen, training_peak_gib(flavour, candidate, chosen))
    return None


def config_advice(proposed: TrainingPlan, current: TrainingPlan | None) -> str:
    """The config.json lines to paste: the keys whose value differs from the config's."""
    now: dict[str, Any] = {}
    if current is not None:  # (the config's policy counts even where offload makes training ignore it)
        now = current.config_keys() | {"gradient_checkpointing_policy": current.checkpointing}
    changed = {k: v for k, v in proposed.config_keys().items() if now.get(k) != v}
    if not changed:
        return "config.json as it is"
    return "config.json: " + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in changed.items())
