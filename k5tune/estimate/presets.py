"""The wizard's memory presets: the recommender's plans (search.py) named for a card class, with the
caching settings each needs, and the choice among them at the config's shape (`choose_preset`), for
the wizard, the web UI and `k5tune estimate --gpu-memory`.

The presets' figures were measured on an H100 (benchmarks/results/2026-11-27-h100.md), Lite at
512x768, 61 frames, LoRA rank 32 on attention + feed-forward: selective checkpointing 1.73 s/step,
12.5 GiB; with activation offload 1.74 s, 7.2 GiB (`k5tune train`, run 25); full 2.03 s, 10.4 GiB; int8
base 1.96 s, 10.4 GiB; group offload 1 block/group + stream (+ activation offload) 2.17 s, 4.1 GiB.
Caching: VAE encode of one clip 12.2 GiB plain, 10.4 with patch conv, 2.6 with tiling (blended, not
exact); Qwen2.5-VL streamed from CPU memory with offload_during_startup (1.6 GiB). Past that shape (or
under NABLA) a preset's need is the estimator's predicted peak with room (`preset_need_gib`), within
the CPU memory the machine can pin (k5tune/hostmem.py).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from k5tune.estimate.caching import caching_peak_gib
from k5tune.estimate.search import MEMORY_FIELDS, first_fitting, smaller_shapes
from k5tune.estimate.shape import TrainingShape, estimate_problem
from k5tune.estimate.training import pinned_cpu_gib, training_peak_gib
from k5tune.models.flavours import FLAVOURS
from k5tune.train.plan import TrainingPlan

_GROUP = {"group_offload_blocks": 1, "offload_activations": True}  # 1 block/group + stream (+ activation offload)
PRO_MIN_GIB = 70.0  # one 80 GB card reports ~79 GiB; Pro selective, weights on the GPU: 66.2 GiB measured
# Pro selective + activation offload: 45.1 GiB measured (run 24); 48 GB cards report ~47.4 GiB
PRO_ACTIVATION_OFFLOAD_MIN_GIB = 47.0
PRO_OFFLOAD_MIN_GIB = 13.0  # Pro with group offload + stream: 11.4 GiB measured
PRO_FSDP_MIN_GIB = 42.0  # FSDP2 on 2 GPUs: 38.7 GiB per GPU with offload_activations; a 40 GB card (~39.4 GiB)
# leaves too little for the CUDA context and fragmentation, so those get group offload (still listed)
PRO_FSDP_OFFLOAD_BELOW_GIB = 44.0  # FSDP2 without offload_activations: 40.7 GiB (48 GB cards report ~47.5)
LITE_MIN_GIB = 5.5  # Lite with group offload: 4.1 GiB measured at 512x768x61
# the keys a preset decides: those it does not set go back to the schema's default
PRESET_KEYS = ("offload_during_startup", "vae_enable_patch_conv", "vae_enable_tiling", "gradient_checkpointing",
               "gradient_checkpointing_policy", "base_model_precision", "enable_group_offload",
               "group_offload_type", "group_offload_blocks_per_group", "group_offload_use_stream",
               "offload_activations", "fsdp_enable")


@dataclass(frozen=True)
class MemoryPreset:
    name: str
    title: str
    plan: TrainingPlan
    note: str
    # the smallest card (GiB as the card reports it) the preset is recommended for: its measured training
    # and caching peaks at 512x768x61 with room to spare (None: offered, never recommended)
    min_card_gib: float | None = 0.0
    requires: str | None = None  # an optional package the preset needs (offered only when importable)
    offload_during_startup: bool = True  # caching: the text encoder streamed, encoders off the GPU after
    vae: str = "patch_conv"  # caching: plain, patch_conv or tiling (caching.vae_variant)

    @property
    def settings(self) -> dict[str, Any]:
        """The config.json keys (of PRESET_KEYS) that select the preset."""
        plan = self.plan
        keys: dict[str, Any] = {"offload_during_startup": self.offload_during_startup}
        if self.vae == "tiling":
            keys["vae_enable_tiling"] = True
        else:
            keys["vae_enable_patch_conv"] = self.vae == "patch_conv"
        keys |= {"gradient_checkpointing": True, "gradient_checkpointing_policy": plan.checkpointing}
        if plan.group_offload:
            keys |= {"enable_group_offload": True, "group_offload_type": "block_level",
                     "group_offload_blocks_per_group": plan.group_offload_blocks,
                     "group_offload_use_stream": plan.group_offload_stream}
        elif plan.offload_activations:
            keys["offload_activations"] = True
        if plan.quantized:
            keys["base_model_precision"] = plan.base_precision
        if plan.sharded:
            keys["fsdp_enable"] = True
        return keys


# Each Lite preset leaves ~1 GiB spare on the smallest card of its row.
LITE_PRESETS: tuple[MemoryPreset, ...] = (
    MemoryPreset(
        "up-to-12gb", "12 GB card or smaller (RTX 3060 12GB, 4070, 8 GB cards)", TrainingPlan("full", **_GROUP),
        "least memory: group offload (one block on the GPU at a time, the next copied on a side stream) and "
        "activation offload, Lite 512x768x61 in 4.1 GiB at 2.17 s/step; caching encodes in VAE tiles "
        "(2.6 GiB; blended tiles, not exact: patch conv would need ~10.4 GiB)", vae="tiling", min_card_gib=0.0,
    ),
    MemoryPreset(
        "16gb", "16 GB card (RTX 4060 Ti 16GB, 4080, 5080)", TrainingPlan("selective", offload_activations=True),
        "activation offload: what each block keeps for backward waits in CPU memory, Lite 512x768x61 in "
        "7.2 GiB at 1.74 s/step (as fast as without; 6 GiB of pinned CPU memory); sliced VAE convolutions "
        "(caching 10.4 GiB)", min_card_gib=13.0,  # (caching with patch conv alone needs ~10.4 GiB)
    ),
    MemoryPreset(
        "16gb-int8", "16 GB card, int8 base (torchao installed)", TrainingPlan("selective", base_precision="int8"),
        "faster: the frozen transformer in int8 (output ~1 % off fp32; bf16: 0.7 %), Lite 512x768x61 in "
        "10.4 GiB at 1.96 s/step; the LoRA still loads into a bf16 pipeline",
        requires="torchao", min_card_gib=None,
    ),
    MemoryPreset(
        "24-32gb", "24-32 GB card (RTX 3090/4090/5090, A5000)", TrainingPlan("selective"),
        "selective checkpointing keeps attention outputs, Lite 512x768x61 in 12.5 GiB at 1.73 s/step; "
        "streamed text encoder and sliced VAE convolutions (caching 10.4 GiB)", min_card_gib=18.0,
    ),
    MemoryPreset(
        "40-48gb", "40-48 GB card (A100 40GB, A6000, L40S)", TrainingPlan("selective"),
        "selective checkpointing, streamed text encoder, plain VAE (caching 12.2 GiB)", vae="plain",
        min_card_gib=38.0,
    ),
    MemoryPreset(
        "80gb", "80 GB or more (A100/H100 80GB, H200)", TrainingPlan("selective"),
        "fastest: everything stays on the GPU, selective checkpointing", offload_during_startup=False, vae="plain",
        min_card_gib=PRO_MIN_GIB,
    ),
)
MEMORY_PRESETS: dict[str, MemoryPreset] = {p.name: p for p in LITE_PRESETS}


def preset_available(preset: MemoryPreset) -> bool:
    return preset.requires is None or importlib.util.find_spec(preset.requires) is not None


# The order the recommender tries the presets in: fastest first (training, then caching).
LITE_FASTEST_FIRST = ("80gb", "40-48gb", "24-32gb", "16gb", "up-to-12gb")
# (FSDP2 before pro-48gb: FSDP2 is measured on several GPUs; data-parallel Pro with compiled blocks is not yet)
PRO_FASTEST_FIRST = ("pro-80gb", "pro-fsdp2", "pro-48gb", "pro-group-offload")


PRESET_SHAPE = TrainingShape()  # where the presets' peaks were measured: 512x768x61, rank 32 on attention + FF


def preset_plan(preset: MemoryPreset, user: TrainingPlan | None = None) -> TrainingPlan:
    """The plan a preset trains: its memory choices over the user's others (attention, TREAD, kernels)."""
    if user is None:
        return preset.plan
    return replace(user, **{k: getattr(preset.plan, k) for k in MEMORY_FIELDS})


def preset_peak_gib(flavour: str, preset: MemoryPreset, shape: TrainingShape,
                    user: TrainingPlan | None = None) -> float | None:
    """The estimator's peak of a preset at `shape`: the larger of training and caching (its VAE and text
    encoder settings); None where the plan is refused (e.g. a combination the trainer does not run)."""
    plan = preset_plan(preset, user)
    if estimate_problem(plan) is not None:
        return None
    caching = caching_peak_gib(shape, preset.offload_during_startup, preset.vae == "patch_conv", preset.vae == "tiling")
    return max(training_peak_gib(flavour, shape, plan), caching)


# What a card needs beyond a preset's predicted peak: ~1 GiB for the CUDA context and fragmentation, and
# 5 % of whatever the shape adds over the presets' measured shape (the estimate's largest under-prediction
# among its --check rows is 5.2 %)
PRESET_ROOM_GIB = 1.0
PRESET_EXTRAPOLATION_ROOM = 0.05


def preset_need_gib(flavour: str, preset: MemoryPreset, shape: TrainingShape | None = None,
                    user: TrainingPlan | None = None) -> float | None:
    """The smallest card (GiB as the card reports it) to recommend `preset` for, training `shape` under
    the user's plan `user` (its attention, TREAD, ...): the card class its peaks were measured for at
    512x768x61, or the estimator's peak at `shape` with room, whichever is more. A Lite 10 s clip under
    NABLA (512x768x241) is predicted at ~49 GiB with selective checkpointing, so a 48 GB card is
    recommended activation offload rather than `40-48gb`. None: offered, never recommended."""
    if preset.min_card_gib is None or shape is None:
        return preset.min_card_gib
    here = preset_peak_gib(flavour, preset, shape, user)
    measured = preset_peak_gib(flavour, preset, PRESET_SHAPE)
    if here is None or measured is None:
        return None
    room = PRESET_ROOM_GIB + PRESET_EXTRAPOLATION_ROOM * max(0.0, here - measured)
    return max(preset.min_card_gib, here + room)


def _recommended(presets: list[MemoryPreset], order: tuple[str, ...], total_gib: float) -> str:
    """By the presets' measured card classes alone (below every class: the one that needs least)."""
    return _fitting_preset(presets, order, total_gib, lambda p: p.min_card_gib) or _in_order(presets, order)[-1].name


def _in_order(presets: list[MemoryPreset], order: tuple[str, ...]) -> list[MemoryPreset]:
    by_name = {p.name: p for p in presets}
    return [by_name[name] for name in order if name in by_name]


def _fitting_preset(presets: list[MemoryPreset], order: tuple[str, ...], total_gib: float,
                    need: Callable[[MemoryPreset], float | None]) -> str | None:
    chosen = first_fitting(_in_order(presets, order), need, total_gib)
    return chosen.name if chosen else None


def pro_presets(total_gib: float, processes: int) -> list[MemoryPreset]:
    """Pro (≈19B, 40 GiB of bf16 weights): measured on H100s at 512x768x61, rank 32."""
    presets = [MemoryPreset(
        "pro-group-offload", "Pro on one card of 16 GB or more", TrainingPlan("full", **_GROUP),
        "group offload + side stream + activation offload: 11.4 GiB at 9.3 s/step; the 40 GiB of weights wait "
        "in pinned CPU memory",
    )]
    if processes > 1:
        fsdp = TrainingPlan("full", fsdp_processes=processes, fsdp_asked=True,
                            offload_activations=total_gib < PRO_FSDP_OFFLOAD_BELOW_GIB)
        presets.append(MemoryPreset(
            "pro-fsdp2", f"Pro sharded over the {processes} GPUs (FSDP2)", fsdp,
            "each GPU holds its share of the weights: on 2 H100s 40.7 GiB per GPU (38.7 with "
            "offload_activations), 6.3 s per clip", min_card_gib=PRO_FSDP_MIN_GIB,
        ))
    presets.append(MemoryPreset(
        "pro-48gb", "Pro on one card of 48 GB or more", TrainingPlan("selective", offload_activations=True),
        "weights on the GPU, what each block keeps for backward in pinned CPU memory (24 GiB per process): "
        "45.1 GiB at 7.7 s/step", min_card_gib=PRO_ACTIVATION_OFFLOAD_MIN_GIB,
    ))
    presets.append(MemoryPreset(
        "pro-80gb", "Pro on 80 GB cards", TrainingPlan("selective"),
        "everything on the GPU, selective checkpointing: 66.2 GiB at 7.7 s/step", min_card_gib=PRO_MIN_GIB,
    ))
    return presets


class PresetChoice(NamedTuple):
    presets: list[MemoryPreset]  # offered, in the wizard's order
    recommended: str
    # the shape the recommendation fits: the config's, else the first shorter or smaller one where a preset
    # fits (smaller_shapes), else None (nothing fits: the card's class is recommended)
    fits_shape: TrainingShape | None
    # presets held back because they pin more CPU memory than `pinnable_gib`, with their pinned GiB (all
    # processes), at fits_shape (else the config's shape)
    held_back: dict[str, float]
    # whether CPU memory, not the card, kept every preset from the config's shape
    cpu_bound: bool = False


def choose_preset(flavour: str, total_gib: float, processes: int = 1, shape: TrainingShape | None = None,
                  user: TrainingPlan | None = None, pinnable_gib: float | None = None) -> PresetChoice:
    """The presets offered for the flavour on a card of `total_gib` (per GPU, `processes` of them), and
    the recommended one: the fastest whose need (preset_need_gib: at the config's `shape` under its plan
    `user` when given, else the measured card class) fits the card, and whose pinned CPU memory (all
    processes together) fits `pinnable_gib` when given (k5tune/hostmem.py). Where none fits the shape,
    the fastest that fits the first shorter clip (or smaller shape) that any preset fits; failing that,
    the card's class."""
    if FLAVOURS[flavour].size == "pro":
        presets, order = pro_presets(total_gib, processes), PRO_FASTEST_FIRST
    else:
        presets, order = [p for p in LITE_PRESETS if preset_available(p)], LITE_FASTEST_FIRST

    def pinned_over(at: TrainingShape | None) -> dict[str, float]:
        if pinnable_gib is None:
            return {}
        pinned = {p.name: preset_pinned_gib(flavour, p, at, user) * processes for p in presets}
        return {name: gib for name, gib in pinned.items() if gib > pinnable_gib}

    def fitting(at: TrainingShape | None, over: dict[str, float]) -> str | None:
        return _fitting_preset(presets, order, total_gib,
                               lambda p: None if p.name in over else preset_need_gib(flavour, p, at, user))

    over = pinned_over(shape)
    name = fitting(shape, over)
    if name is not None:
        return PresetChoice(presets, name, shape, over)
    cpu_bound = fitting(shape, {}) is not None  # the card holds a preset at this shape, the machine does not
    for candidate in smaller_shapes(shape) if shape is not None else []:
        held = pinned_over(candidate)
        name = fitting(candidate, held)
        if name is not None:
            return PresetChoice(presets, name, candidate, held, cpu_bound)
    return PresetChoice(presets, _recommended(presets, order, total_gib), None, over, cpu_bound)


def preset_pinned_gib(flavour: str, preset: MemoryPreset, shape: TrainingShape | None = None,
                      user: TrainingPlan | None = None) -> float:
    """The preset's pinned CPU memory per process at `shape` (default: the presets' measured shape)."""
    return pinned_cpu_gib(flavour, shape or PRESET_SHAPE, preset_plan(preset, user))
