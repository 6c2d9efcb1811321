"""The memory and speed plan of a training step: what is recomputed, what is offloaded, what compiles.

One object, three readers: `k5tune train` builds it from config.json (`from_config`), `k5tune bench`
from a scenario, and `k5tune estimate` (with the wizard and the web UI through its recommender) tries
candidates of it. Every decision derived from the settings (which offload mechanism runs, whether
blocks compile, whether selective checkpointing still holds) is a method here, so the trainer, the
bench and the memory model cannot disagree.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # (nabla.py imports torch: the wizard and estimate read plans without it)
    from k5tune.models.kandinsky5.nabla import NablaSettings

Checkpointing = Literal["selective", "full", "none"]


@dataclass(frozen=True)
class TrainingPlan:
    checkpointing: Checkpointing = "selective"  # gradient_checkpointing(_policy)
    keep_attention_blocks: int | None = None  # selective: only the first N visual blocks keep attention
    fused_kernels: bool = True  # k5tune's fused blocks; False: diffusers' stock blocks, run op by op
    attention: str = "auto"  # attention_backend
    group_offload_blocks: int | None = None  # enable_group_offload: blocks per group (None: off)
    group_offload_stream: bool = True  # group_offload_use_stream: prefetch the next group
    group_offload_leaf: bool = False  # group_offload_type leaf_level
    offload_activations: bool = False
    base_precision: str = "no_change"  # base_model_precision
    modulation_fp32: bool = False  # modulation_precision fp32 (auto stores them in the compute dtype)
    fsdp_processes: int = 1  # fsdp_enable over this many processes (1: not sharded)
    fsdp_reshard: bool = True  # fsdp_reshard_after_forward
    fsdp_asked: bool = False  # fsdp_enable, even on one process (where it does not shard)
    tread: tuple[tuple[float, int, int], ...] = ()  # TREAD routes as given (negative indices unresolved)
    nabla: NablaSettings | None = None  # sparse NABLA attention (None: dense); resolved by attention.py
    crepa_block: int | None = None  # CREPA aligns this visual block's hidden states (None: off)
    sequence_parallel: int = 1  # sequence_parallel_size: processes sharing each clip's tokens
    # how the step executes; None: decided by the device (compiled on a GPU). Tests compile with
    # "aot_eager" (the same graphs, no code generation); the bench can switch compilation off.
    compile_kernels: bool | None = None  # the fused element-wise groups
    compile_blocks: bool | None = None  # each checkpointed block whole, its checkpoint inside
    compile_backend: str = "inductor"
    # how FlexAttention (NABLA) finds its tiles on the GPU: "heuristic" takes torch's own tiling narrowed
    # to NABLA's 64-token blocks, 4 warps each (nabla.clamp_flex_tiles: no autotuning; compiles inside
    # whole blocks; Lite 10 s on an H100: 5.57 s a step, first step 55 s); "autotune" benchmarks
    # inductor's candidates once per clip length (max-autotune; its first step ~2 minutes longer, and in
    # whole blocks it did not build on torch 2.11: nabla.flex_compile_mode)
    flex_tiling: str = "heuristic"

    @classmethod
    def from_config(cls, cfg, processes: int = 1, nabla: NablaSettings | None = None) -> TrainingPlan:
        """The plan config.json asks for, over `processes` processes (FSDP2 shards only over several);
        `nabla`: the attention resolved for the model (train/attention.py)."""
        offload = cfg.enable_group_offload
        sharded = cfg.fsdp_enable and processes > 1
        tread = () if cfg.tread_config is None else tuple(
            (r.selection_ratio, r.start_layer_idx, r.end_layer_idx) for r in cfg.tread_config.routes)
        return cls(
            checkpointing=cfg.gradient_checkpointing_policy if cfg.gradient_checkpointing else "none",
            fused_kernels=cfg.fused_kernels, attention=cfg.attention_backend,
            group_offload_blocks=cfg.group_offload_blocks_per_group if offload else None,
            group_offload_stream=cfg.group_offload_use_stream or not offload,
            group_offload_leaf=offload and cfg.group_offload_type == "leaf_level",
            offload_activations=cfg.activations_offloaded, base_precision=cfg.base_model_precision,
            modulation_fp32=cfg.modulation_precision == "fp32",
            fsdp_processes=processes if sharded else 1,
            fsdp_reshard=cfg.fsdp_reshard_after_forward or not sharded, fsdp_asked=cfg.fsdp_enable,
            tread=tread, nabla=nabla, crepa_block=cfg.crepa_block_index if cfg.crepa_enabled else None,
            sequence_parallel=cfg.sequence_parallel_size,
        )

    # --- decisions derived from the settings -----------------------------------------------------

    @property
    def group_offload(self) -> bool:
        return self.group_offload_blocks is not None

    @property
    def sharded(self) -> bool:
        return self.fsdp_processes > 1

    @property
    def quantized(self) -> bool:
        return self.base_precision != "no_change"

    @property
    def blocks_may_compile(self) -> bool:
        """Group offload and FSDP2 wrap each block in their own checkpoint; torchao's int8/fp8 weights
        inside a compiled block are not measured yet. (Activation offload alone compiles.)"""
        return not (self.group_offload or self.sharded or self.quantized)

    def compiles_kernels(self, on_gpu: bool) -> bool:
        return on_gpu if self.compile_kernels is None else self.compile_kernels

    def compiles_blocks(self, on_gpu: bool) -> bool:
        # (sequence parallelism: the exchange's collectives are not traced into a compiled block)
        if (self.checkpointing == "none" or not self.fused_kernels or not self.blocks_may_compile
                or self.sequence_parallel > 1):
            return False
        # NABLA's blocks compile as dense ones do: the mask and FlexAttention traced into the block's graph,
        # FlexAttention's output kept by the selective policy (speed.py). Lite 10 s on an H100: 5.57 s a step
        # against 6.79 s eager (FlexAttention compiled alone, autotuned), +9 GiB (the kept outputs)
        return on_gpu if self.compile_blocks is None else self.compile_blocks

    def compiles_anything(self, on_gpu: bool) -> bool:
        """Whether torch.compile runs at all: the fused kernels, whole blocks, or NABLA's FlexAttention
        (compiled on every GPU run)."""
        return self.compiles_kernels(on_gpu) or self.compiles_blocks(on_gpu) or (on_gpu and self.nabla is not None)

    def offloads_through_hooks(self, on_gpu: bool) -> bool:
        """Compiled blocks move what they save for backward themselves (activation_offload.py) and keep
        their checkpointing policy."""
        return self.offload_activations and self.compiles_blocks(on_gpu)

    def needs_offloader(self, on_gpu: bool) -> bool:
        """Whether offload.py's block offloader runs: for weights (group offload), or for activations of
        eager blocks (which it checkpoints itself, recomputing each block whole)."""
        return self.group_offload or (self.offload_activations and not self.offloads_through_hooks(on_gpu))

    def recomputes_fully(self, on_gpu: bool = True) -> bool:
        """Blocks run through the offloader's checkpoint recompute whole, whatever the policy says."""
        return self.needs_offloader(on_gpu)

    def effective(self, on_gpu: bool = True) -> TrainingPlan:
        """This plan as training runs it (offloaded blocks recompute fully whatever the policy)."""
        if self.recomputes_fully(on_gpu) and self.checkpointing == "selective":
            return replace(self, checkpointing="full", keep_attention_blocks=None)
        return self

    def problems(self) -> list[tuple[str, str]]:
        """(config key, why) for each combination that cannot train."""
        found = []
        if (self.sharded or self.fsdp_asked) and self.group_offload:
            found.append(("fsdp_enable", "fsdp_enable and enable_group_offload cannot be combined: shard over "
                                         "several GPUs, or offload on one"))
        if self.sharded and self.quantized:
            found.append(("fsdp_enable", f"base_model_precision {self.base_precision} cannot be combined with "
                                         "fsdp_enable"))
        if self.nabla and self.tread:
            found.append(("tread_config", "tread_config cannot be combined with NABLA attention (routed tokens break "
                                          "its 8x8-patch blocks); set sparse_attention to dense, or remove tread_config"))
        return found + self._sequence_problems()

    def _sequence_problems(self) -> list[tuple[str, str]]:
        if self.sequence_parallel == 1:
            return []
        key = "sequence_parallel_size"
        chunk = "and each process holds a chunk of it"
        found = []
        if self.tread:
            found.append((key, f"sequence_parallel_size cannot be combined with tread_config yet: TREAD draws its "
                               f"routed tokens from the whole sequence, {chunk}"))
        if self.crepa_block is not None:
            found.append((key, f"sequence_parallel_size cannot be combined with crepa_enabled yet: CREPA aligns the "
                               f"whole sequence's hidden states, {chunk}"))
        if not self.fused_kernels:
            found.append((key, "sequence_parallel_size needs fused_kernels: true (the token exchange lives in "
                               "k5tune's fast attention processors)"))
        return found

    def problem(self) -> str | None:
        """Why this combination cannot train, or None."""
        return self.problems()[0][1] if self.problems() else None

    def attention_context(self):
        from k5tune.train.speed import attention_context

        return attention_context(self.attention) if self.attention else contextlib.nullcontext()

    # --- presentation: a one-line label, and the config.json keys that select it -------------------

    def label(self) -> str:
        parts = [] if self.recomputes_fully() else [
            "no gradient checkpointing" if self.checkpointing == "none" else f"{self.checkpointing} checkpointing"]
        if self.keep_attention_blocks is not None and not self.recomputes_fully():
            parts.append(f"attention kept in {self.keep_attention_blocks} blocks")
        if self.quantized:
            parts.append(f"{self.base_precision} base")
        if self.group_offload:
            stream = "stream" if self.group_offload_stream else "no stream"
            parts.append(f"group offload ({self.group_offload_blocks} block/group, {stream})")
        if self.offload_activations:
            parts.append("activation offload")
        if self.modulation_fp32 and not self.quantized:
            parts.append("fp32 modulation")
        if self.sharded:
            parts.append(f"FSDP2 over {self.fsdp_processes} GPUs" + ("" if self.fsdp_reshard else ", no reshard"))
        if self.tread:
            parts.append("TREAD " + ", ".join(f"({r}, {a}..{b})" for r, a, b in self.tread))
        if self.nabla:
            parts.append(f"NABLA (P {self.nabla.P}, STA {self.nabla.wT}x{self.nabla.wH}x{self.nabla.wW})")
        if self.crepa_block is not None:
            parts.append(f"CREPA at block {self.crepa_block}")
        if self.sequence_parallel > 1:
            parts.append(f"each clip's tokens over {self.sequence_parallel} processes")
        return ", ".join(parts)

    def config_keys(self) -> dict[str, Any]:
        """The config.json keys that select this plan's memory settings."""
        keys: dict[str, Any] = {"gradient_checkpointing": self.checkpointing != "none"}
        if not self.recomputes_fully() and self.checkpointing != "none":
            keys["gradient_checkpointing_policy"] = self.checkpointing
        keys["base_model_precision"] = self.base_precision
        keys["enable_group_offload"] = self.group_offload
        if self.group_offload:
            keys["group_offload_blocks_per_group"] = self.group_offload_blocks
            keys["group_offload_use_stream"] = self.group_offload_stream
        keys["offload_activations"] = self.offload_activations
        keys["modulation_precision"] = "fp32" if self.modulation_fp32 else "auto"
        keys["fsdp_enable"] = self.sharded
        return keys

    def describe(self, on_gpu: bool) -> dict[str, Any]:
        """What `train --dry-run` and the bench report say about the plan."""
        return {"label": self.label(), "compiled_blocks": self.compiles_blocks(on_gpu),
                "activation_offload": ("saved-tensor hooks" if self.offloads_through_hooks(on_gpu) else
                                       "block offloader" if self.offload_activations else None),
                "recomputes_blocks_whole": self.recomputes_fully(on_gpu),
                "config_keys": json.loads(json.dumps(self.config_keys()))}
