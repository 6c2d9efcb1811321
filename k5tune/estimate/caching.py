"""Caching: two phases, text then video, and its peak is the larger.

The text encoders' weights are counted from the real classes (Qwen2.5-VL-7B 15.4 GiB, or one streamed
part of it at a time, see k5tune/models/kandinsky5/text_stream.py) plus the activations of a caption
batch; the VAE encode is scaled from three measured anchors (plain, patch conv, tiling; VAE_ANCHORS).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from k5tune.estimate.shape import TrainingShape
from k5tune.estimate.weights import GIB
from k5tune.models.fullsize import QWEN25_VL_7B_TEXT, QWEN_VOCAB

# VAE encode of one 61x512x768 clip in bf16, full-size AutoencoderKLHunyuanVideo with random weights,
# one H100 (benchmarks/tools/vae_encode.py; benchmarks/results/2026-11-27-h100-run11/vae.jsonl). Each is
# the whole peak of the encode, the VAE weights and the clip on the GPU included.
VAE_ANCHOR_SHAPE = (61, 512, 768)  # frames, height, width
VAE_ANCHORS = {"plain": 12.2, "patch_conv": 10.42, "tiling": 2.59}
CAPTION_BATCH = 8  # k5tune.cache.builder encodes captions 8 at a time
CAPTION_TOKENS = 128 + 512  # the prompt template plus the longest caption kept (caption_max_tokens' default)


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


# diffusers' AutoencoderKLHunyuanVideo encodes a clip of more than 16 frames in temporal tiles of 17
# frames (use_framewise_encoding, on by default; tile_sample_min_num_frames 16, +1 causal frame): the
# encoder's working set is one tile's, whatever the clip's length. Only the clip itself grows with it.
VAE_TEMPORAL_TILE_FRAMES = 17


def vae_encoder_frames(frames: int) -> int:
    """The frames the VAE's encoder sees at once for a clip of `frames` frames."""
    return frames if frames <= VAE_TEMPORAL_TILE_FRAMES - 1 else VAE_TEMPORAL_TILE_FRAMES


def vae_encode_peak_gib(shape: TrainingShape, variant: str) -> float:
    """Peak of encoding one clip, scaled from the anchor of `variant`: the VAE weights, the clip (bf16
    RGB), and the working set of one encoder call.

    plain and patch conv: the working set is proportional to the pixels of one temporal tile (every
    activation of the encoder is), so a 10 s clip (241 frames) needs barely more than a 61-frame one.
    Tiling: diffusers also cuts each temporal tile into fixed 256x256 tiles, so the working set is the
    anchor's whatever the size.
    """
    weights = encoder_weight_gib()["vae"]
    frames, height, width = VAE_ANCHOR_SHAPE
    clip_gib = 3 * 2 / GIB  # bf16 RGB, per pixel-frame
    anchor_clip, clip = frames * height * width * clip_gib, shape.frames * shape.height * shape.width * clip_gib
    working = VAE_ANCHORS[variant] - weights - anchor_clip
    if variant != "tiling":
        working *= (vae_encoder_frames(shape.frames) * shape.height * shape.width
                    / (vae_encoder_frames(frames) * height * width))
    return weights + clip + working


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
            return ["caching: config.json: " + ", ".join(f'"{k}": true' for k in keys)]
    return ["caching: does not fit even with offload_during_startup and vae_enable_tiling"]
