"""`k5tune estimate`: predict the peak GPU memory of caching and training, and propose settings.

The training model is built from counts, not guesses: weight bytes from the real model class on the
meta device (bf16 blocks, fp32 modulation as diffusers keeps them), LoRA weights with their gradient
and AdamW state, one checkpointed input per block, the attention outputs that selective
checkpointing keeps, and the working set of the block being recomputed. That last term is the only
fitted constant: TRANSIENT_PER_TOKEN_DIM, fitted on ONE measurement (Lite, full checkpointing,
H100, benchmarks/results/2026-11-27-h100.md); every other measured figure is a prediction and the
tests compare them. Caching is two phases, text then video, and its peak is the larger: the text
encoders' weights are counted from the real classes (Qwen2.5-VL-7B 15.4 GiB, or one streamed part of
it at a time, see k5tune/models/kandinsky5/text_stream.py) plus the activations of a caption batch;
the VAE encode is scaled from three measured anchors (plain, patch conv, tiling; see VAE_ANCHORS).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from k5tune.config.frames import latent_frames
from k5tune.models.flavours import FLAVOURS
from k5tune.models.fullsize import QWEN25_VL_7B_TEXT, QWEN_VOCAB

GIB = 2**30
# Working memory of recomputing + back-propagating one block, per token per model_dim (bytes):
# 2.47 GiB at Lite's 24,576 tokens x 1792 (10.11 GiB measured minus the counted terms).
TRANSIENT_PER_TOKEN_DIM = 2.47 * GIB / (24576 * 1792)
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


# --- caching ----------------------------------------------------------------------------------------
# VAE encode of one 61x512x768 clip in bf16, full-size AutoencoderKLHunyuanVideo with random weights,
# one H100 (benchmarks/vae_encode.py; benchmarks/results/2026-11-27-h100-run11/vae.jsonl). Each is
# the whole peak of the encode, the VAE weights and the clip on the GPU included.
VAE_ANCHOR_SHAPE = (61, 512, 768)  # frames, height, width
VAE_ANCHORS = {"plain": 12.2, "patch_conv": 10.42, "tiling": 2.59}
CAPTION_BATCH = 8  # k5tune.cache.builder encodes captions 8 at a time
CAPTION_TOKENS = 128 + 256  # the prompt template plus the longest caption kept (the worst case)


@lru_cache(maxsize=1)
def encoder_weight_gib() -> dict[str, float]:
    """bf16 weights (GiB) of the caching models, counted from the real classes on the meta device."""
    from diffusers import AutoencoderKLHunyuanVideo
    from transformers import CLIPTextModel, Qwen2_5_VLForConditionalGeneration

    from k5tune.models.fullsize import clip_l_text_config, meta_parameter_bytes, qwen25_vl_7b_config

    qwen = qwen25_vl_7b_config()
    head = QWEN_VOCAB * QWEN25_VL_7B_TEXT["hidden_size"] * 2  # lm_head (and the embedding): the largest part
    return {
        "qwen": meta_parameter_bytes(lambda: Qwen2_5_VLForConditionalGeneration(qwen)) / GIB,
        "qwen_largest_part": head / GIB,
        "clip": meta_parameter_bytes(lambda: CLIPTextModel(clip_l_text_config())) / GIB,
        "vae": meta_parameter_bytes(AutoencoderKLHunyuanVideo) / GIB,
    }


def text_activation_gib(batch: int = CAPTION_BATCH, tokens: int = CAPTION_TOKENS) -> float:
    """One caption batch through Qwen: its logits (the head runs on every token) and the hidden state
    of every layer, which the pipeline asks for (output_hidden_states)."""
    hidden, layers = QWEN25_VL_7B_TEXT["hidden_size"], QWEN25_VL_7B_TEXT["num_hidden_layers"]
    logits = batch * tokens * QWEN_VOCAB * 2
    hidden_states = (layers + 1) * batch * tokens * hidden * 2
    return (logits + hidden_states) / GIB


def vae_variant(patch_conv: bool, tiling: bool) -> str:
    return "tiling" if tiling else "patch_conv" if patch_conv else "plain"  # tiles are too small to slice


def vae_encode_peak_gib(shape: TrainingShape, variant: str) -> float:
    """Peak of encoding one clip, scaled from the anchor of `variant`.

    plain and patch conv: weights plus working memory proportional to the clip's pixels x frames
    (every activation of the encoder is). Tiling: diffusers encodes fixed 256x256x16-frame tiles, so
    only the clip itself grows with the shape; the tile working set is the anchor's remainder.
    """
    weights = encoder_weight_gib()["vae"]
    frames, height, width = VAE_ANCHOR_SHAPE
    anchor_pixels, pixels = frames * height * width, shape.frames * shape.height * shape.width
    clip_gib = 3 * 2 / GIB  # bf16 RGB, per pixel-frame
    anchor = VAE_ANCHORS[variant]
    if variant == "tiling":
        tile_set = anchor - weights - anchor_pixels * clip_gib
        return weights + tile_set + pixels * clip_gib
    return weights + (anchor - weights) * pixels / anchor_pixels


@dataclass
class CachingEstimate:
    text_gib: float  # encoding the captions
    vae_gib: float  # encoding the clips (with whatever stays resident from the text phase)
    streamed: bool  # Qwen streamed from CPU memory
    variant: str  # VAE: plain, patch_conv or tiling

    @property
    def peak_gib(self) -> float:
        return max(self.text_gib, self.vae_gib)


def caching_estimate(shape: TrainingShape, offload_during_startup: bool, patch_conv: bool, tiling: bool = False,
                     gpu_gib: float | None = None) -> CachingEstimate:
    """Both phases of caching, with the cache stage's own rule for streaming the text encoder."""
    from k5tune.models.kandinsky5.text_stream import should_stream_text_encoder

    weights = encoder_weight_gib()
    free = gpu_gib * GIB if gpu_gib else None
    streamed = should_stream_text_encoder(offload_during_startup, int(weights["qwen"] * GIB), free)
    qwen_on_gpu = weights["qwen_largest_part"] if streamed else weights["qwen"]
    text = qwen_on_gpu + weights["clip"] + text_activation_gib()
    resident = 0.0 if offload_during_startup else weights["clip"] + (0.0 if streamed else weights["qwen"])
    variant = vae_variant(patch_conv, tiling)
    return CachingEstimate(text, resident + vae_encode_peak_gib(shape, variant), streamed, variant)


def caching_peak_gib(shape: TrainingShape, offload_during_startup: bool, patch_conv: bool, tiling: bool = False,
                     gpu_gib: float | None = None) -> float:
    return caching_estimate(shape, offload_during_startup, patch_conv, tiling, gpu_gib).peak_gib


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
                    patch_conv: bool, tiling: bool = False) -> str:
    lines = [f"k5tune estimate — {flavour}, {shape.height}x{shape.width}, {shape.frames} frames "
             f"({shape.tokens} tokens), batch {shape.batch}, LoRA rank {shape.rank}", "",
             "training peak (GiB), by setting:"]
    for settings in candidate_settings(flavour):
        lines.append(f"  {training_peak_gib(flavour, shape, settings):6.1f}  {settings.label()}")
    cache = caching_estimate(shape, offload_during_startup, patch_conv, tiling, gpu_gib)
    text_how = ("Qwen2.5-VL streamed from CPU memory a layer at a time" if cache.streamed
                else "Qwen2.5-VL whole on the GPU")
    vae_how = {"plain": "plain VAE", "patch_conv": "vae_enable_patch_conv", "tiling": "vae_enable_tiling"}[cache.variant]
    together = "" if offload_during_startup else ", text encoders still on the GPU"
    lines += ["", f"caching peak (GiB): {cache.peak_gib:.1f}, the larger of",
              f"  {cache.text_gib:6.1f}  text embeddings ({text_how})",
              f"  {cache.vae_gib:6.1f}  video latents ({vae_how}{together})"]
    if gpu_gib:
        lines.append("")
        proposal = propose(flavour, shape, gpu_gib)
        if proposal is None:
            lines.append(f"nothing modelled fits {gpu_gib} GiB; use several GPUs or a smaller model")
        else:
            chosen_shape, settings, peak = proposal
            lines.append(f"fits {gpu_gib} GiB: {settings.label()} at {chosen_shape.height}x{chosen_shape.width}, "
                         f"{chosen_shape.frames} frames -> {peak:.1f} GiB")
        lines += caching_advice(shape, gpu_gib, offload_during_startup, patch_conv, tiling)
    return "\n".join(lines)


def caching_advice(shape: TrainingShape, gpu_gib: float, offload_during_startup: bool, patch_conv: bool,
                   tiling: bool, margin_gib: float = 1.0) -> list[str]:
    """The fewest caching settings to add so that caching fits the card (the fastest first)."""
    if caching_peak_gib(shape, offload_during_startup, patch_conv, tiling, gpu_gib) + margin_gib <= gpu_gib:
        return []
    for offload, conv, tile in ((True, patch_conv, tiling), (True, True, tiling), (True, patch_conv, True)):
        if caching_peak_gib(shape, offload, conv, tile, gpu_gib) + margin_gib <= gpu_gib:
            keys = [key for key, now, before in (("offload_during_startup", offload, offload_during_startup),
                                                 ("vae_enable_patch_conv", conv, patch_conv),
                                                 ("vae_enable_tiling", tile, tiling)) if now and not before]
            return [f"caching: set {' and '.join(f'{k}=true' for k in keys)}"]
    return ["caching: does not fit even with offload_during_startup and vae_enable_tiling"]
