"""The model a training step runs, set up once for `k5tune train` and `k5tune bench` alike.

From a loaded transformer (real weights, or the bench's random full-size ones) and a TrainingPlan:
the modulation layers stored in the compute dtype, the base placed (or left in CPU memory for group
offload, FSDP2 and quantisation, which move it themselves), quantised, LoRA added in fp32, the blocks
wired as the plan says, sharded or offloaded, and the text mask and TREAD routes installed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from k5tune.lora.adapter import add_lora, lora_parameters
from k5tune.models.kandinsky5 import nabla
from k5tune.models.kandinsky5.modulation import store_modulation_in
from k5tune.models.kandinsky5.quantize import QuantReport, quantize_base
from k5tune.models.kandinsky5.text_mask import install_text_mask
from k5tune.models.kandinsky5.tread import install_tread, resolve_routes
from k5tune.runtime import Runtime, keep_compiled_kernels
from k5tune.train import fsdp
from k5tune.train.offload import enable_group_offload, place_for_offload
from k5tune.train.plan import TrainingPlan
from k5tune.train.speed import apply_speed_plan


@dataclass(frozen=True)
class LoraSettings:
    rank: int
    alpha: float
    targets: tuple[str, ...]
    dropout: float = 0.0
    seed: int = 0

    @classmethod
    def from_config(cls, cfg) -> LoraSettings:
        return cls(cfg.lora_rank, cfg.effective_lora_alpha, tuple(cfg.lora_target_modules), cfg.lora_dropout,
                   cfg.seed)


@dataclass
class TrainingModel:
    transformer: torch.nn.Module
    params: list[torch.nn.Parameter]  # the LoRA weights (fp32): what the optimizer updates
    adapted: list[str]  # names of the adapted modules
    quantized: QuantReport | None = None  # what base_model_precision quantised (None: nothing)


def build_training_model(transformer, plan: TrainingPlan, lora: LoraSettings, runtime: Runtime,
                         log: Callable[[str], None] = lambda message: None) -> TrainingModel:
    """Set `transformer` (loaded in the compute dtype, in CPU memory or already placed) up for training."""
    on_gpu = runtime.is_cuda
    # The modulation layers (fp32 in diffusers) are stored in the compute dtype before anything reaches
    # the GPU: autocast rounds them to it anyway (modulation.py). Quantisation replaces them.
    if not plan.modulation_fp32 and not plan.quantized and runtime.compute_dtype != torch.float32:
        saved = store_modulation_in(transformer, runtime.compute_dtype)
        log(f"modulation layers stored in {str(runtime.compute_dtype).removeprefix('torch.')} (computed in "
            f"fp32): {saved / 2**30:.2f} GiB less")
    # Group offload keeps the blocks off the GPU; FSDP2 keeps only a shard; a quantised base is quantised
    # block by block on the GPU, so its bf16 blocks are never all there at once.
    if not (plan.group_offload or plan.sharded or plan.quantized):
        transformer.to(runtime.device)
    quantized = quantize_base(transformer, plan.base_precision, runtime.device, offload=plan.group_offload,
                              sharded=plan.sharded, log=log)
    # LoRA weights train in fp32 under autocast, which keeps their small updates from being rounded away.
    adapted = add_lora(transformer, lora.rank, lora.alpha, lora.dropout, list(lora.targets), lora.seed)
    for p in lora_parameters(transformer):
        p.data = p.data.float()
    if on_gpu and plan.compiles_anything(on_gpu):
        folder = keep_compiled_kernels()  # (before anything compiles)
        if folder:
            log(f"compiled kernels are kept in {folder}: later runs at the same shapes skip compiling and autotuning")
    apply_speed_plan(transformer, plan, on_gpu)
    if plan.nabla is not None:  # (after the fast path, whose processors it wraps)
        nabla.install(transformer, plan.nabla, plan.flex_tiling)
    if plan.compiles_blocks(on_gpu):
        log("note: the first steps also compile the transformer blocks (torch.compile: ~40 s for Lite on an "
            "H100); fused_kernels false skips it")
    if plan.sharded:
        fsdp.shard_transformer(transformer, runtime.compute_dtype, plan.fsdp_reshard)
        log(f"FSDP2: the transformer is sharded over {plan.fsdp_processes} processes "
            f"({fsdp.local_weight_gib(transformer):.2f} GiB of weights each)")
    _offload(transformer, plan, runtime, log)
    install_text_mask(transformer)
    if plan.sequence_parallel > 1:
        from k5tune.models.kandinsky5 import sequence_parallel

        sequence_parallel.install(transformer, sequence_parallel.sequence_group(plan.sequence_parallel))
        log(f"sequence parallel: each clip's tokens split over {plan.sequence_parallel} processes")
    if plan.tread:
        install_tread(transformer, resolve_routes(plan.tread, len(transformer.visual_transformer_blocks)))
    transformer.train()
    return TrainingModel(transformer, lora_parameters(transformer), adapted, quantized)  # (after sharding)


def _offload(transformer, plan: TrainingPlan, runtime: Runtime, log: Callable[[str], None]) -> None:
    """Group offload (weights), and activation offload of eager blocks: offload.py's block offloader.
    (Compiled blocks offload what they save themselves and keep the checkpointing policy.)"""
    if plan.group_offload:
        if plan.group_offload_stream and not runtime.is_cuda:
            log("note: group_offload_use_stream has no effect without a CUDA GPU")
        place_for_offload(transformer, runtime.device)
    if plan.needs_offloader(runtime.is_cuda):
        # alone, activation offload copies on a side stream: the copies hide behind the compute
        enable_group_offload(transformer, plan.group_offload_blocks or 1, plan.group_offload_stream,
                             offload_activations=plan.offload_activations, offload_weights=plan.group_offload,
                             compute=runtime.device, leaf_level=plan.group_offload_leaf)
