"""`k5tune estimate`: predict the peak GPU memory of caching and training, and propose settings.

The training model is built from counts, not guesses: weight bytes from the real model class on the
meta device (bf16 blocks, fp32 modulation as diffusers keeps them), LoRA weights with their gradient
and AdamW state, one checkpointed input per block, the attention outputs that selective
checkpointing keeps, and the working set of the block being recomputed. That last term is the only
fitted constant: TRANSIENT_PER_TOKEN_DIM, fitted on ONE measurement (Lite, full checkpointing,
H100, benchmarks/results/2026-11-27-h100.md); every other measured figure is a prediction and the
tests compare them. The caching figures come from the anchors measured in the memory issue (stock
VAE encode 12.2 GiB for 61x512x768 in bf16; Qwen2.5-VL-7B 15 GiB in bf16).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from k5tune.config.frames import latent_frames
from k5tune.models.flavours import FLAVOURS

GIB = 2**30
# Working memory of recomputing + back-propagating one block, per token per model_dim (bytes):
# 2.47 GiB at Lite's 24,576 tokens x 1792 (10.11 GiB measured minus the counted terms).
TRANSIENT_PER_TOKEN_DIM = 2.47 * GIB / (24576 * 1792)
TEXT_ENCODER_GIB = 15.2 + 0.25  # Qwen2.5-VL-7B and CLIP-L in bf16
VAE_WEIGHTS_GIB = 0.5
VAE_ENCODE_GIB_PER_PIXEL_FRAME = (12.2 - VAE_WEIGHTS_GIB) / (61 * 512 * 768)  # stock, bf16, plain
ADAM_BYTES_PER_LORA_PARAM = 16  # fp32 weight + gradient + two AdamW moments


@lru_cache(maxsize=4)
def weight_bytes(flavour: str) -> tuple[int, int, int]:
    """(all weights, block weights, weights of one visual block) in bytes, bf16 with fp32 modulation."""
    import torch
    from diffusers import Kandinsky5Transformer3DModel

    with torch.device("meta"):
        model = Kandinsky5Transformer3DModel(**FLAVOURS[flavour].transformer_config)
    keep = model._keep_in_fp32_modules

    def size(named) -> int:
        return sum(p.numel() * (4 if any(k in n for k in keep) else 2) for n, p in named)

    total = size(model.named_parameters())
    blocks = size((n, p) for n, p in model.named_parameters() if "transformer_blocks" in n)
    one = size(model.visual_transformer_blocks[0].named_parameters())
    return total, blocks, one


def lora_parameter_count(config: dict, rank: int, targets: list[str]) -> int:
    d, f = config["model_dim"], config["ff_dim"]
    per_block = 0
    attention_targets = sum(t in targets for t in ("to_query", "to_key", "to_value", "out_layer"))
    per_block += attention_targets * 2 * rank * (d + d)  # self- and cross-attention
    if "feed_forward" in targets:
        per_block += rank * (d + f) * 2
    text_blocks = config["num_text_blocks"] * (attention_targets * rank * 2 * d + (rank * (d + f) * 2
                                                                                   if "feed_forward" in targets else 0))
    return config["num_visual_blocks"] * per_block + text_blocks


@dataclass
class TrainingShape:
    height: int = 512
    width: int = 768
    frames: int = 61
    batch: int = 1
    rank: int = 32
    targets: list[str] = field(default_factory=lambda: ["to_query", "to_key", "to_value", "out_layer", "feed_forward"])

    @property
    def tokens(self) -> int:
        return latent_frames(self.frames) * (self.height // 16) * (self.width // 16)


@dataclass
class TrainingSettings:
    checkpointing: str = "selective"  # selective | full | none
    keep_attention_blocks: int | None = None
    group_offload_blocks: int | None = None  # blocks per group when offloading
    tread_ratio: float = 0.0
    tread_span: tuple[int, int] | None = None  # (first, last) routed visual block

    def label(self) -> str:
        parts = [f"checkpointing={self.checkpointing}"]
        if self.keep_attention_blocks is not None:
            parts.append(f"keep_attention_blocks={self.keep_attention_blocks}")
        if self.group_offload_blocks:
            parts.append(f"group_offload(blocks_per_group={self.group_offload_blocks})")
        if self.tread_span:
            parts.append(f"tread({self.tread_ratio}, {self.tread_span[0]}..{self.tread_span[1]})")
        return ", ".join(parts)


def training_peak_gib(flavour: str, shape: TrainingShape, settings: TrainingSettings) -> float:
    config = FLAVOURS[flavour].transformer_config
    d, blocks = config["model_dim"], config["num_visual_blocks"]
    total, block_weights, one_block = weight_bytes(flavour)
    weights = total
    if settings.group_offload_blocks:  # the current group and the prefetched one are on the GPU
        weights = total - block_weights + 2 * settings.group_offload_blocks * one_block
    lora = lora_parameter_count(config, shape.rank, shape.targets) * ADAM_BYTES_PER_LORA_PARAM
    tokens_per_block = [shape.tokens * shape.batch] * blocks
    if settings.tread_span:
        first, last = settings.tread_span
        for index in range(first, last + 1):
            tokens_per_block[index] = round(tokens_per_block[index] * (1 - settings.tread_ratio))
    activation = 2 * d  # bytes per token of one bf16 hidden state
    if settings.checkpointing == "none":
        raise ValueError("no checkpointing is not modelled (it needs tens of GiB; use selective or full)")
    inputs = sum(tokens_per_block) * activation
    kept = 0
    if settings.checkpointing == "selective":
        keep = blocks if settings.keep_attention_blocks is None else min(blocks, settings.keep_attention_blocks)
        kept = sum(tokens_per_block[:keep]) * activation
    if settings.tread_span:
        inputs += shape.tokens * shape.batch * activation  # the full stream waits beside the route
    transient = TRANSIENT_PER_TOKEN_DIM * max(tokens_per_block) * d
    return (weights + lora + inputs + kept + transient) / GIB


def caching_peak_gib(shape: TrainingShape, offload_during_startup: bool, patch_conv: bool) -> float:
    vae = VAE_WEIGHTS_GIB + VAE_ENCODE_GIB_PER_PIXEL_FRAME * shape.frames * shape.height * shape.width
    if patch_conv:
        vae = None  # not measured yet: see estimate_report
    if offload_during_startup:
        return max(TEXT_ENCODER_GIB, vae) if vae is not None else TEXT_ENCODER_GIB
    return TEXT_ENCODER_GIB + (vae if vae is not None else 0)


def candidate_settings(flavour: str) -> list[TrainingSettings]:
    """From fastest to slowest (measured order on an H100): what `estimate` tries in turn."""
    blocks = FLAVOURS[flavour].transformer_config["num_visual_blocks"]
    options = [TrainingSettings("selective")]
    options += [TrainingSettings("selective", keep_attention_blocks=k) for k in (blocks * 3 // 4, blocks // 2, blocks // 4)]
    options += [TrainingSettings("full")]
    options += [TrainingSettings("full", group_offload_blocks=g) for g in (4, 1)]
    return options


SMALLER_SHAPES = [(512, 768, 49), (480, 848, 49), (480, 848, 33), (384, 640, 33)]


def propose(flavour: str, shape: TrainingShape, gpu_gib: float, margin_gib: float = 1.0):
    """The first (fastest) setting that fits, then, if none fits, smaller shapes (the guide's advice)."""
    for settings in candidate_settings(flavour):
        peak = training_peak_gib(flavour, shape, settings)
        if peak + margin_gib <= gpu_gib:
            return shape, settings, peak
    for height, width, frames in SMALLER_SHAPES:
        smaller = TrainingShape(height, width, frames, shape.batch, shape.rank, shape.targets)
        if smaller.tokens >= shape.tokens:
            continue
        for settings in candidate_settings(flavour):
            peak = training_peak_gib(flavour, smaller, settings)
            if peak + margin_gib <= gpu_gib:
                return smaller, settings, peak
    return None


def estimate_report(flavour: str, shape: TrainingShape, gpu_gib: float | None, offload_during_startup: bool,
                    patch_conv: bool) -> str:
    lines = [f"k5tune estimate — {flavour}, {shape.height}x{shape.width}, {shape.frames} frames "
             f"({shape.tokens} tokens), batch {shape.batch}, LoRA rank {shape.rank}", "",
             "training peak (GiB), by setting:"]
    for settings in candidate_settings(flavour):
        lines.append(f"  {training_peak_gib(flavour, shape, settings):6.1f}  {settings.label()}")
    cache = caching_peak_gib(shape, offload_during_startup, patch_conv)
    lines += ["", f"caching peak (GiB): {cache:.1f} "
              f"({'text encoders and VAE one after the other' if offload_during_startup else 'text encoders and VAE together'})"]
    if patch_conv:
        lines.append("  note: vae_enable_patch_conv memory is not measured yet; the VAE share is left out")
    if gpu_gib:
        lines.append("")
        proposal = propose(flavour, shape, gpu_gib)
        if proposal is None:
            lines.append(f"nothing modelled fits {gpu_gib} GiB; use several GPUs or a smaller model")
        else:
            chosen_shape, settings, peak = proposal
            lines.append(f"fits {gpu_gib} GiB: {settings.label()} at {chosen_shape.height}x{chosen_shape.width}, "
                         f"{chosen_shape.frames} frames -> {peak:.1f} GiB")
            if cache + 1.0 > gpu_gib and not offload_during_startup:
                lines.append("caching: set offload_during_startup=true")
    return "\n".join(lines)
