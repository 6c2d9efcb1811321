"""`k5tune estimate`: predict the peak GPU memory of caching and training, and propose settings.

The training model is built from counts, not guesses: weight bytes from the real model class on the
meta device (bf16 blocks, fp32 modulation as diffusers keeps them; int8/fp8 block linears counted with
the layer selection of k5tune/models/kandinsky5/quantize.py), LoRA weights with their gradient and
AdamW state, one checkpointed input per block, the attention outputs that selective checkpointing
keeps, and the working set of the block being recomputed. The memory settings change which of these
are on the GPU: group offload keeps only two groups of block weights there, offload_activations moves
the block inputs to pinned CPU memory, FSDP2 shards weights and LoRA state over the processes.

Three constants are fitted, each on ONE measurement (H100, benchmarks/results/2026-11-27-h100.md):
TRANSIENT_PER_TOKEN_DIM (the recompute working set; Lite, full checkpointing, run 3),
ACTIVATION_OFFLOAD_RESIDUE (what offload_activations leaves on the GPU with eager blocks; Lite, run 12)
and SAVED_OFFLOAD_RESIDUE (the same with compiled blocks, the default on a GPU; Lite, run 23). Every
other measured figure is a prediction: k5tune/estimate_check.py lists them and
`k5tune estimate --check` (and tests/test_estimate.py) compare. Caching is two phases, text then
video, and its peak is the larger: the text encoders' weights are counted from the real classes
(Qwen2.5-VL-7B 15.4 GiB, or one streamed part of it at a time, see
k5tune/models/kandinsky5/text_stream.py) plus the activations of a caption batch; the VAE encode is
scaled from three measured anchors (plain, patch conv, tiling; see VAE_ANCHORS).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, NamedTuple

from k5tune.config.frames import latent_frames
from k5tune.models.flavours import FLAVOURS
from k5tune.models.fullsize import QWEN25_VL_7B_TEXT, QWEN_VOCAB

GIB = 2**30
# Working memory of recomputing + back-propagating one block, per token per model_dim (bytes):
# 2.47 GiB at Lite's 24,576 tokens x 1792 (Lite, full checkpointing, run 3: 10.11 GiB measured minus
# the counted terms).
TRANSIENT_PER_TOKEN_DIM = 2.47 * GIB / (24576 * 1792)
# offload_activations: what stays on the GPU of the checkpointed block inputs, in hidden states (one
# block input each) — among it the input being recomputed, the one fetched ahead, the first visual
# block's input (it needs no gradient, so it is not moved) and copies still in flight. 7.1 = (8.05 GiB
# measured, Lite with offload_activations alone, run 12, minus the counted terms) / 84 MiB per hidden
# state; Pro (4096 wide, 60 blocks) is then predicted within 1.5 %.
ACTIVATION_OFFLOAD_RESIDUE = 7.1
# The same for compiled blocks, whose saved-tensor hooks move the block input and the kept attention
# outputs (k5tune/train/activation_offload.py): 2.1 hidden states' worth stays on the GPU (copies in
# flight, the block fetched ahead). Fitted on Lite, selective + offload_activations (run 23: 7.64 GiB);
# Pro (45.09 GiB, run 24) is then predicted within 0.3 %.
SAVED_OFFLOAD_RESIDUE = 2.1
ADAM_BYTES_PER_LORA_PARAM = 16  # fp32 weight + gradient + two AdamW moments
# Bytes per output row beside the 1-byte elements, as torchao stores weight-only int8 / fp8 (version 2
# tensors): an fp32 scale, and for int8 an int8 zero point. Counted this way the quantised bytes equal
# those measured (run 15: Lite 2,003,065,344 int8 and 2,001,750,016 fp8; Pro 19,305,283,584 int8).
QUANTISED_ROW_BYTES = {"int8": 4 + 1, "fp8": 4}


@dataclass(frozen=True)
class WeightCount:
    """Bytes of the transformer's weights as training holds them."""

    total: int
    blocks: int  # the text and visual blocks: what group offload moves and FSDP2 shards
    blocks_pinned: int  # the same as group offload pins them: packed in slabs (offload.py)
    largest_block: int  # one visual block: the unit group offload moves and FSDP2 gathers
    largest_linear: int  # elements of the largest quantised linear (dequantised to bf16 while it computes)

    @property
    def outside_blocks(self) -> int:
        return self.total - self.blocks


def _pinned_size(nbytes: int) -> int:
    """What torch's pinned-memory allocator takes for a request: the next power of two."""
    return 1 << max(nbytes - 1, 0).bit_length()


def _arena_bytes(tensor_bytes: list[int], slab_bytes: int | None = None) -> int:
    """Pinned memory of tensors placed in order into slabs as PinnedArena places them (1 GiB slabs
    unless given); a tensor larger than a slab gets its own allocation, rounded up to a power of two."""
    from k5tune.train.activation_offload import PinnedArena, first_fit

    slab_bytes = slab_bytes or PinnedArena.SLAB_BYTES
    used: list[int] = []
    oversized = 0
    for nbytes in tensor_bytes:
        if nbytes > slab_bytes:
            oversized += _pinned_size(nbytes)
        else:
            first_fit(used, nbytes, slab_bytes, PinnedArena.ALIGN)
    return len(used) * slab_bytes + oversized


@lru_cache(maxsize=8)
def weight_count(flavour: str, precision: str = "no_change", modulation_fp32: bool = True) -> WeightCount:
    """Count the weights of the real class on the meta device, quantised as `base_model_precision` would,
    with the modulation layers in fp32 (as diffusers keeps them) or in bf16 (`modulation_precision`)."""
    import torch
    from diffusers import Kandinsky5Transformer3DModel

    from k5tune.models.kandinsky5.quantize import base_linears
    from k5tune.train.activation_offload import slab_bytes_for

    with torch.device("meta"):
        model = Kandinsky5Transformer3DModel(**FLAVOURS[flavour].transformer_config)
    keep = model._keep_in_fp32_modules
    blocks = [*model.text_transformer_blocks, *model.visual_transformer_blocks]
    quantised = [m for block in blocks for m in base_linears(block)] if precision != "no_change" else []
    quantised_weights = {id(m.weight) for m in quantised}

    def sizes(named) -> list[int]:
        counted = []
        for name, p in named:
            if id(p) in quantised_weights:
                counted.append(p.numel() + p.shape[0] * QUANTISED_ROW_BYTES[precision])
            elif "modulation.out_layer" in name and not modulation_fp32 and precision == "no_change":
                counted.append(p.numel() * 2)
            else:
                counted.append(p.numel() * (4 if any(k in name for k in keep) else 2))
        return counted

    def size(named) -> int:
        return sum(sizes(named))

    block_sizes = [n for block in blocks for n in sizes(block.named_parameters())]
    return WeightCount(
        total=size(model.named_parameters()),
        blocks=sum(block_sizes),
        blocks_pinned=_arena_bytes(block_sizes, slab_bytes_for(block_sizes)),  # as GroupOffloader places them
        largest_block=size(model.visual_transformer_blocks[0].named_parameters()),
        largest_linear=max((m.weight.numel() for m in quantised), default=0),
    )


def lora_parameter_count(config: dict, rank: int, targets: list[str]) -> int:
    d, f = config["model_dim"], config["ff_dim"]
    attention_targets = sum(t in targets for t in ("to_query", "to_key", "to_value", "out_layer"))
    feed_forward = rank * (d + f) * 2 if "feed_forward" in targets else 0
    visual = attention_targets * 2 * rank * (d + d) + feed_forward  # self- and cross-attention
    text = attention_targets * rank * 2 * d + feed_forward  # self-attention only
    return config["num_visual_blocks"] * visual + config["num_text_blocks"] * text


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


@dataclass(frozen=True)
class TrainingSettings:
    checkpointing: str = "selective"  # selective | full | none (gradient_checkpointing_policy)
    keep_attention_blocks: int | None = None  # bench's --keep-attention-blocks (no config key)
    group_offload_blocks: int | None = None  # enable_group_offload: group_offload_blocks_per_group
    offload_stream: bool = True  # group_offload_use_stream: the next group is prefetched
    offload_activations: bool = False
    base_precision: str = "no_change"  # base_model_precision
    modulation_fp32: bool = False  # modulation_precision fp32; auto (the default) stores them in bf16
    fsdp_processes: int = 1  # fsdp_enable over this many processes (1: not sharded)
    fsdp_reshard: bool = True  # fsdp_reshard_after_forward
    tread: tuple[tuple[float, int, int], ...] = ()  # TREAD routes: (selection ratio, first, last visual block)
    # the blocks run op by op (fused_kernels false, or measured before blocks were compiled whole); by
    # default on a GPU each block is one compiled region
    eager_blocks: bool = False

    @property
    def recomputes_fully(self) -> bool:
        """Group offload, and activation offload of eager blocks (group offload, FSDP2 and an int8/fp8
        base keep blocks eager), run every block through the offloader's own checkpoint, which
        recomputes the whole block whatever gradient_checkpointing_policy says."""
        eager = self.eager_blocks or self.fsdp_processes > 1 or self.base_precision != "no_change"
        return bool(self.group_offload_blocks) or (self.offload_activations and eager)

    @property
    def offloads_saved_tensors(self) -> bool:
        """Compiled blocks with activation offload: what each block saves (input, kept attention) moves."""
        return self.offload_activations and not self.recomputes_fully

    def problem(self) -> str | None:
        """Why this combination cannot be estimated (or cannot train), or None."""
        if self.checkpointing == "none":
            return "gradient_checkpointing false is not modelled (it needs tens of GiB: Lite 78 GiB measured)"
        if self.fsdp_processes > 1 and self.group_offload_blocks:
            return "fsdp_enable and enable_group_offload cannot be combined"
        if self.fsdp_processes > 1 and self.base_precision != "no_change":
            return f"base_model_precision {self.base_precision} cannot be combined with fsdp_enable"
        return None

    def effective(self) -> TrainingSettings:
        """These settings as training runs them (offloaded blocks recompute fully whatever the policy)."""
        if self.recomputes_fully and self.checkpointing == "selective":
            return replace(self, checkpointing="full", keep_attention_blocks=None)
        return self

    def label(self) -> str:
        parts = [] if self.recomputes_fully else [
            "no gradient checkpointing" if self.checkpointing == "none" else f"{self.checkpointing} checkpointing"]
        if self.keep_attention_blocks is not None and not self.recomputes_fully:
            parts.append(f"attention kept in {self.keep_attention_blocks} blocks")
        if self.base_precision != "no_change":
            parts.append(f"{self.base_precision} base")
        if self.group_offload_blocks:
            stream = "stream" if self.offload_stream else "no stream"
            parts.append(f"group offload ({self.group_offload_blocks} block/group, {stream})")
        if self.offload_activations:
            parts.append("activation offload")
        if self.modulation_fp32 and self.base_precision == "no_change":
            parts.append("fp32 modulation")
        if self.fsdp_processes > 1:
            parts.append(f"FSDP2 over {self.fsdp_processes} GPUs" + ("" if self.fsdp_reshard else ", no reshard"))
        if self.tread:
            parts.append("TREAD " + ", ".join(f"({r}, {a}..{b})" for r, a, b in self.tread))
        return ", ".join(parts)

    def config_keys(self) -> dict[str, Any]:
        """The config.json keys that select these settings."""
        keys: dict[str, Any] = {"gradient_checkpointing": self.checkpointing != "none"}
        if not self.recomputes_fully and self.checkpointing != "none":
            keys["gradient_checkpointing_policy"] = self.checkpointing
        keys["base_model_precision"] = self.base_precision
        keys["enable_group_offload"] = bool(self.group_offload_blocks)
        if self.group_offload_blocks:
            keys["group_offload_blocks_per_group"] = self.group_offload_blocks
            keys["group_offload_use_stream"] = self.offload_stream
        keys["offload_activations"] = self.offload_activations
        keys["modulation_precision"] = "fp32" if self.modulation_fp32 else "auto"
        keys["fsdp_enable"] = self.fsdp_processes > 1
        return keys


def settings_from_config(cfg, processes: int | None = None, flavour: str | None = None) -> TrainingSettings:
    """The memory settings of a TrainConfig (processes: --num-processes, flavour: --flavour, else the
    config's)."""
    processes, flavour = processes or cfg.num_processes, flavour or cfg.model_flavour
    offload, sharded = cfg.enable_group_offload, cfg.fsdp_enable and processes > 1
    tread: tuple[tuple[float, int, int], ...] = ()
    if cfg.tread_config is not None:
        from k5tune.models.kandinsky5.tread import resolve_routes

        blocks = FLAVOURS[flavour].transformer_config["num_visual_blocks"]
        tread = tuple((r.ratio, r.start, r.end) for r in resolve_routes(cfg.tread_config, blocks))
    return TrainingSettings(
        eager_blocks=not cfg.fused_kernels,
        checkpointing=cfg.gradient_checkpointing_policy if cfg.gradient_checkpointing else "none",
        group_offload_blocks=cfg.group_offload_blocks_per_group if offload else None,
        offload_stream=cfg.group_offload_use_stream or not offload,  # (no effect without group offload)
        offload_activations=cfg.activations_offloaded,
        base_precision=cfg.base_model_precision,
        modulation_fp32=cfg.modulation_precision == "fp32",
        fsdp_processes=processes if sharded else 1,
        fsdp_reshard=cfg.fsdp_reshard_after_forward or not sharded,
        tread=tread,
    )


def shape_from_config(loaded, resolution: str | None = None, frames: int | None = None,
                      rank: int | None = None) -> TrainingShape:
    """The training shape of a loaded config: the first video dataset's resolution (the shorter side of
    a 2:3 clip, the guide's 512 -> 512x768) and frames, unless given (HEIGHTxWIDTH, frames, rank)."""
    from k5tune.config.frames import parse_resolution, snap_resolution

    cfg = loaded.train
    video = next((b for b in loaded.media_backends if b.dataset_type == "video"), None)
    if resolution:
        height, width = snap_resolution(*parse_resolution(resolution))
    else:
        short = video.resolution if video else 512
        height, width = snap_resolution(short, round(short * 1.5))
    frames = frames or (video.video.num_frames if video else cfg.validation_num_video_frames)
    return TrainingShape(height, width, frames, cfg.train_batch_size, rank or cfg.lora_rank,
                         list(cfg.lora_target_modules))


def _tokens_per_block(blocks: int, shape: TrainingShape, settings: TrainingSettings) -> list[int]:
    tokens = [shape.tokens * shape.batch] * blocks
    for ratio, first, last in settings.tread:
        for index in range(first, last + 1):
            tokens[index] = round(tokens[index] * (1 - ratio))
    return tokens


def _weights_on_gpu(weights: WeightCount, settings: TrainingSettings) -> float:
    if settings.group_offload_blocks:  # the group computing, and the next one when it is prefetched
        groups = 2 if settings.offload_stream else 1
        return weights.outside_blocks + groups * settings.group_offload_blocks * weights.largest_block
    if settings.fsdp_processes > 1 and settings.fsdp_reshard:
        # each process keeps its shard of every block, plus the block computing and the next one gathered
        return weights.outside_blocks + weights.blocks / settings.fsdp_processes + 2 * weights.largest_block
    return weights.total  # (FSDP2 without resharding: every block stays gathered from forward to backward)


def _block_inputs(tokens: list[int], full: int, hidden: int, settings: TrainingSettings) -> float:
    """The checkpointed input of every block (bytes), or what activation offload leaves of them.

    Under FSDP2 the one measurement of offload_activations (Pro on 2 H100s, run 13: 38.7 GiB) is far
    above what moving the inputs out predicts (30.1 GiB; 40.7 GiB measured without it, run 14). It ran
    an earlier build of the FSDP2 code than run 14 and the cause is not known, so until it is measured
    again the estimate takes activation offload to save nothing under FSDP2: the safe side."""
    if settings.offloads_saved_tensors:
        inputs = SAVED_OFFLOAD_RESIDUE * max(tokens) * hidden
    elif settings.offload_activations and settings.fsdp_processes == 1:
        inputs = ACTIVATION_OFFLOAD_RESIDUE * max(tokens) * hidden
    else:
        inputs = sum(tokens) * hidden
    if settings.tread:
        inputs += full * hidden  # the full stream waits beside the route (routes never nest)
    return inputs


def training_terms(flavour: str, shape: TrainingShape, settings: TrainingSettings) -> dict[str, float]:
    """The training peak per GPU, term by term (GiB); their sum is the peak."""
    problem = settings.problem()
    if problem:
        raise ValueError(problem)
    config = FLAVOURS[flavour].transformer_config
    d, blocks = config["model_dim"], config["num_visual_blocks"]
    weights = weight_count(flavour, settings.base_precision, settings.modulation_fp32)
    tokens = _tokens_per_block(blocks, shape, settings)
    hidden = 2 * d  # bytes per token of one bf16 hidden state
    lora = lora_parameter_count(config, shape.rank, shape.targets) * ADAM_BYTES_PER_LORA_PARAM
    kept = 0
    if settings.checkpointing == "selective" and not settings.recomputes_fully and not settings.offloads_saved_tensors:
        keep = blocks if settings.keep_attention_blocks is None else min(blocks, settings.keep_attention_blocks)
        kept = sum(tokens[:keep]) * hidden  # the self-attention output of each block
    working = TRANSIENT_PER_TOKEN_DIM * max(tokens) * d + 2 * weights.largest_linear  # + one dequantised weight
    return {
        "weights": _weights_on_gpu(weights, settings) / GIB,
        "LoRA + AdamW state": lora / settings.fsdp_processes / GIB,
        "block inputs": _block_inputs(tokens, shape.tokens * shape.batch, hidden, settings) / GIB,
        "kept attention": kept / GIB,
        "recompute working set": working / GIB,
    }


def training_peak_gib(flavour: str, shape: TrainingShape, settings: TrainingSettings) -> float:
    return sum(training_terms(flavour, shape, settings).values())


def pinned_cpu_gib(flavour: str, shape: TrainingShape, settings: TrainingSettings) -> float:
    """Pinned CPU memory per process, as allocated (in slabs, PinnedArena): the offloaded blocks' home
    copies and the offloaded activations: per visual block its input, and with compiled selective
    blocks the attention it keeps."""
    config = FLAVOURS[flavour].transformer_config
    pinned = (weight_count(flavour, settings.base_precision, settings.modulation_fp32).blocks_pinned
              if settings.group_offload_blocks else 0)
    if settings.offload_activations:
        hidden = 2 * config["model_dim"]
        tokens = _tokens_per_block(config["num_visual_blocks"], shape, settings)
        keep = 0
        if settings.offloads_saved_tensors and settings.checkpointing == "selective":
            keep = len(tokens) if settings.keep_attention_blocks is None else settings.keep_attention_blocks
        stashes = [n * hidden for index, n in enumerate(tokens) for _ in range(2 if index < keep else 1)]
        pinned += _arena_bytes(stashes)
    return pinned / GIB


# --- caching ----------------------------------------------------------------------------------------
# VAE encode of one 61x512x768 clip in bf16, full-size AutoencoderKLHunyuanVideo with random weights,
# one H100 (benchmarks/vae_encode.py; benchmarks/results/2026-11-27-h100-run11/vae.jsonl). Each is
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


def candidate_settings(processes: int = 1, user: TrainingSettings | None = None) -> list[TrainingSettings]:
    """What `estimate` tries in turn, fastest first. Step times measured on an H100 at 512x768x61
    (Lite / Pro): selective 1.73 / 7.68 s (blocks compiled); selective with activation offload 1.74 /
    7.69 s; int8 base 1.96 s (fp8 1.91); full checkpointing 2.03 s; full with activation offload
    2.10 / 8.67 s; group offload with stream and activation offload 2.17 / 9.34 s; int8 base
    with activation offload - / 9.75 s; group offload without stream 2.33 s. Where the speed is about
    the same, the exact bf16 base comes before int8, and less CPU memory before less GPU memory. FSDP2
    (processes > 1) comes last: 12.52 s per step on 2 GPUs (Pro, full checkpointing), slower than each
    GPU training its own clips with group offload (9.34 s) — but it needs no pinned CPU memory.
    `user`: the config's settings, whose TREAD routes, modulation_precision and fused_kernels (eager
    blocks) every option keeps (choices the search leaves to the user)."""
    group = {"group_offload_blocks": 1, "offload_activations": True}  # activation offload: group offload's default
    options = [
        TrainingSettings("selective"),
        TrainingSettings("selective", offload_activations=True),
        TrainingSettings("selective", base_precision="int8"),
        TrainingSettings("full"),
        TrainingSettings("full", offload_activations=True),
        TrainingSettings("full", **group),
        TrainingSettings("full", base_precision="int8"),
        TrainingSettings("full", base_precision="int8", offload_activations=True),
        TrainingSettings("full", base_precision="int8", **group),
        TrainingSettings("full", base_precision="int8", offload_stream=False, **group),
    ]
    if processes > 1:
        options += [TrainingSettings(policy, fsdp_processes=processes) for policy in ("selective", "full")]
    user = user or TrainingSettings()
    return [replace(option, tread=user.tread, modulation_fp32=user.modulation_fp32, eager_blocks=user.eager_blocks)
            for option in options]


SMALLER_SHAPES = [(512, 768, 49), (480, 848, 49), (480, 848, 33), (384, 640, 33)]


class Proposal(NamedTuple):
    shape: TrainingShape
    settings: TrainingSettings
    peak_gib: float


def propose(flavour: str, shape: TrainingShape, gpu_gib: float, margin_gib: float = 1.0, processes: int = 1,
            smaller_shapes: bool = True, max_pinned_gib: float | None = None,
            user: TrainingSettings | None = None) -> Proposal | None:
    """The first (fastest) setting that fits, then, if none fits, smaller shapes (the guide's advice).
    `max_pinned_gib`: leave out settings that need more pinned CPU memory per process than this; `user`:
    see candidate_settings."""
    shapes = [shape]
    if smaller_shapes:
        shapes += [TrainingShape(h, w, f, shape.batch, shape.rank, shape.targets) for h, w, f in SMALLER_SHAPES]
    for candidate in shapes:
        if candidate is not shape and candidate.tokens >= shape.tokens:
            continue
        for settings in candidate_settings(processes, user):
            if max_pinned_gib is not None and pinned_cpu_gib(flavour, candidate, settings) > max_pinned_gib:
                continue
            peak = training_peak_gib(flavour, candidate, settings)
            if peak + margin_gib <= gpu_gib:
                return Proposal(candidate, settings, peak)
    return None


def config_advice(proposed: TrainingSettings, current: TrainingSettings | None) -> str:
    """The config.json lines to paste: the keys whose value differs from the config's."""
    now: dict[str, Any] = {}
    if current is not None:  # (the config's policy counts even where offload makes training ignore it)
        now = current.config_keys() | {"gradient_checkpointing_policy": current.checkpointing}
    changed = {k: v for k, v in proposed.config_keys().items() if now.get(k) != v}
    if not changed:
        return "config.json as it is"
    return "config.json: " + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in changed.items())


def _proposal_lines(flavour: str, shape: TrainingShape, gpu_gib: float, processes: int,
                    current: TrainingSettings | None) -> list[str]:
    proposal = propose(flavour, shape, gpu_gib, processes=processes, user=current)
    if proposal is None:
        return [f"nothing modelled fits {gpu_gib} GiB; use several GPUs or a smaller model"]
    chosen, settings, peak = proposal
    lines = [f"fits {gpu_gib} GiB: {settings.label()} at {chosen.height}x{chosen.width}, {chosen.frames} frames "
             f"-> {peak:.1f} GiB", f"  {config_advice(settings, current)}"]
    if chosen is not shape:
        lines.append(f"  dataset: a smaller clip, resolution {chosen.height} ({chosen.height}x{chosen.width}), "
                     f"video.num_frames {chosen.frames}")
    pinned = pinned_cpu_gib(flavour, chosen, settings)
    if pinned:
        lines.append(f"  needs {pinned * processes:.1f} GiB of pinned CPU memory"
                     + (f" ({pinned:.1f} GiB in each of {processes} processes)" if processes > 1 else ""))
        alternative = propose(flavour, shape, gpu_gib, processes=processes, smaller_shapes=False,
                              max_pinned_gib=0, user=current)
        if alternative is not None:
            lines.append(f"  without pinned CPU memory: {alternative.settings.label()} -> {alternative.peak_gib:.1f} GiB; "
                         f"{config_advice(alternative.settings, current)}")
    return lines


def _table_lines(flavour: str, shape: TrainingShape, processes: int, current: TrainingSettings | None) -> list[str]:
    options = candidate_settings(processes, current)
    current = current.effective() if current is not None else None
    if current is not None and current not in options and current.problem() is None:
        options = [current, *options]
    lines = ["training peak per GPU and pinned CPU memory per process (GiB), fastest first (* your config):",
             "     GPU  pinned CPU  setting"]
    for settings in options:
        pinned = pinned_cpu_gib(flavour, shape, settings)
        mark = "*" if settings == current else " "
        lines.append(f"  {mark}{training_peak_gib(flavour, shape, settings):5.1f}  "
                     f"{f'{pinned:9.1f}' if pinned else '        -'}   {settings.label()}")
    return lines


def estimate_report(flavour: str, shape: TrainingShape, gpu_gib: float | None, offload_during_startup: bool,
                    patch_conv: bool, tiling: bool = False, current: TrainingSettings | None = None,
                    processes: int = 1) -> str:
    lines = [f"k5tune estimate — {flavour}, {shape.height}x{shape.width}, {shape.frames} frames "
             f"({shape.tokens} tokens), batch {shape.batch}, LoRA rank {shape.rank} on {' '.join(shape.targets)}"
             + (f", {processes} processes" if processes > 1 else ""), ""]
    if current is not None:
        problem = current.problem()
        peak = "not estimated: " + problem if problem else f"{training_peak_gib(flavour, shape, current):.1f} GiB"
        lines += [f"your config: {current.label()} -> training peak {peak}", ""]
    lines += _table_lines(flavour, shape, processes, current)
    cache = caching_estimate(shape, offload_during_startup, patch_conv, tiling, gpu_gib)
    text_how = ("Qwen2.5-VL streamed from CPU memory a layer at a time" if cache.streamed
                else "Qwen2.5-VL whole on the GPU")
    vae_how = {"plain": "plain VAE", "patch_conv": "vae_enable_patch_conv", "tiling": "vae_enable_tiling"}[cache.variant]
    together = "" if offload_during_startup else ", text encoders still on the GPU"
    lines += ["", f"caching peak (GiB): {cache.peak_gib:.1f}, the larger of",
              f"  {cache.text_gib:6.1f}  text embeddings ({text_how}; a batch of 8 of the longest captions)",
              f"  {cache.vae_gib:6.1f}  video latents ({vae_how}{together})"]
    if gpu_gib:
        lines.append("")
        lines += _proposal_lines(flavour, shape, gpu_gib, processes, current)
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
            return ["caching: config.json: " + ", ".join(f'"{k}": true' for k in keys)]
    return ["caching: does not fit even with offload_during_startup and vae_enable_tiling"]
