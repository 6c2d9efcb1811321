"""The text phase of caching: every caption variant, the empty caption and the validation prompts,
encoded once with Qwen2.5-VL (whole on the GPU, or streamed from CPU memory) and CLIP."""

from __future__ import annotations

from dataclasses import dataclass

from k5tune.cache.keys import folder_identity, text_key
from k5tune.cache.result import EMPTY_CAPTION
from k5tune.cache.store import TensorStore
from k5tune.models.kandinsky5.encoding import caption_tokens, encode_prompts, text_pipeline
from k5tune.models.kandinsky5.text_stream import (
    free_gpu_bytes,
    module_bytes,
    should_stream_text_encoder,
    stream_text_encoder,
)
from k5tune.progress import Progress
from k5tune.runtime import Runtime

CAPTION_BATCH = 8
# Prefetching the next streamed Qwen layer on a side CUDA stream is off: that path needs a GPU to be
# exercised at all (CPU tests cannot reach it), and caching a few captions gains nothing from it (the
# first pass of diffusers' prefetching is a blocking trace anyway). benchmarks/tools/text_encode_stream.py
# measures both ways; switch it on once that shows it exact and faster.
TEXT_STREAM_PREFETCH = False


@dataclass
class TextPhase:
    keys: dict[str, str]  # caption -> entry key
    encoded: int = 0
    peak_gib: float | None = None
    streamed: bool = False


def cache_text(train_config, records, extra_prompts: list[str], store: TensorStore, components, runtime: Runtime,
               progress: Progress, dist) -> TextPhase:
    """Encode this process's share of the missing captions; free the encoders as the settings ask."""
    captions = sorted({c for r in records for c in r.captions} | {EMPTY_CAPTION} | set(extra_prompts))
    identity = {"qwen": folder_identity(components.source, "text_encoder"),
                "clip": folder_identity(components.source, "text_encoder_2")}
    keys = {c: text_key(c, identity, runtime.text_dtype, components.prompt_start_index,
                        train_config.caption_max_tokens) for c in captions}
    # (an unreadable or NaN/inf entry is deleted by verified() and encoded again like a new one)
    missing = [c for c in captions if not store.verified(keys[c])][dist.rank :: dist.world]
    phase = TextPhase(keys, encoded=len(missing))
    if missing:
        runtime.reset_peak_memory()
        phase.streamed = _encode_captions(missing, store, keys, components, runtime, train_config, progress)
        phase.peak_gib = runtime.peak_memory_gib()
    if train_config.offload_during_startup:
        # The text encoders are done: free them before the VAE comes to the GPU.
        components.unload("text_encoder", "text_encoder_2")
        runtime.empty_cache()
    elif phase.streamed:  # its weights are in CPU memory already; this hooked copy serves nothing else
        components.unload("text_encoder")
    return phase


def _text_encoders(components, runtime: Runtime, offload_during_startup: bool, progress: Progress):
    """Qwen2.5-VL (streamed from CPU memory, or whole on the GPU), CLIP, and whether Qwen is streamed.

    Qwen is loaded on the CPU first (from_pretrained loads there anyway), so its size is known before
    anything of it reaches the GPU.
    """
    qwen = components.text_encoder(dtype=runtime.text_dtype)
    weights = module_bytes(qwen)
    streamed = should_stream_text_encoder(offload_during_startup, weights, free_gpu_bytes(runtime.device))
    if streamed:
        stream_text_encoder(qwen, runtime.device, use_stream=TEXT_STREAM_PREFETCH and runtime.is_cuda)
        reason = "offload_during_startup" if offload_during_startup else "it does not fit the free GPU memory"
        progress.log(f"text encoder: {weights / 2**30:.1f} GiB kept in CPU memory, its layers brought to "
                     f"{runtime.device.type} one at a time ({reason})")
    else:
        qwen = components.text_encoder(dtype=runtime.text_dtype, device=runtime.device)
    clip = components.text_encoder_2(dtype=runtime.text_dtype, device=runtime.device)
    return qwen, clip, streamed


def _encode_captions(captions: list[str], text_store: TensorStore, text_keys: dict[str, str], components,
                     runtime: Runtime, train_config, progress: Progress) -> bool:
    """Encode and store `captions`; returns whether the text encoder was streamed.

    The pipeline holding the encoders lives only in this function, so nothing keeps them alive once
    the caller unloads them.
    """
    qwen, clip, streamed = _text_encoders(components, runtime, train_config.offload_during_startup, progress)
    pipe = text_pipeline(components, qwen, clip)
    progress.start("caching text embeddings", len(captions))
    for offset in range(0, len(captions), CAPTION_BATCH):
        chunk = captions[offset : offset + CAPTION_BATCH]
        encoded = encode_prompts(pipe, chunk, runtime.device, runtime.text_dtype, train_config.caption_max_tokens)
        for caption, embedding in zip(chunk, encoded, strict=True):
            text_store.put(text_keys[caption], {"qwen": embedding.qwen, "clip": embedding.clip}, {"caption": caption})
        text_store.save_manifest()
        progress.advance(len(chunk))
    progress.end()
    return streamed


def long_captions(records, components, max_tokens: int) -> list[tuple[object, int]]:
    """(record, tokens) of every clip with a caption longer than `max_tokens` Qwen tokens: training cuts it
    there, as inference does (the dataset report lists them)."""
    captions = sorted({c for r in records for c in r.captions})
    if not captions:
        return []
    counts = dict(zip(captions, caption_tokens(text_pipeline(components, None, None), captions), strict=True))
    return [(r, max(counts[c] for c in r.captions)) for r in records
            if any(counts[c] > max_tokens for c in r.captions)]
