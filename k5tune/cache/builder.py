"""The caching stage: encode every clip's latents and every caption's embedding once.

Runs before training; the training loop reads only what this writes. Keys are content hashes of
everything that changes a result, so a second run encodes nothing, a new resolution re-encodes only
latents, and an edited caption re-encodes only that caption.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import torch

from k5tune.cache.result import EMPTY_CAPTION, CacheResult
from k5tune.cache.store import TensorStore, content_key
from k5tune.models.kandinsky5.encoding import (
    MAX_CAPTION_TOKENS,
    caption_tokens,
    encode_prompts,
    encode_video,
    text_pipeline,
)
from k5tune.models.kandinsky5.patch_conv import enable_patch_conv
from k5tune.models.kandinsky5.text_stream import (
    free_gpu_bytes,
    module_bytes,
    should_stream_text_encoder,
    stream_text_encoder,
)
from k5tune.progress import Progress, SilentProgress
from k5tune.runtime import Runtime

CAPTION_BATCH = 8
# Prefetching the next streamed Qwen layer on a side CUDA stream is off: that path needs a GPU to be
# exercised at all (CPU tests cannot reach it), and caching a few captions gains nothing from it (the
# first pass of diffusers' prefetching is a blocking trace anyway). benchmarks/text_encode_stream.py
# measures both ways; switch it on once that shows it exact and faster.
TEXT_STREAM_PREFETCH = False


def _folder_identity(source, subfolder: str) -> dict:
    """What identifies one component's weights: hub id + revision, or a local folder's files."""
    identity = {"source": source.path_or_id, "revision": source.revision, "part": subfolder}
    folder = Path(source.path_or_id) / subfolder
    if folder.is_dir():
        digest = hashlib.sha256()
        for path in sorted(folder.iterdir()):
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
            if path.suffix == ".json":
                digest.update(path.read_bytes())
        identity["files"] = digest.hexdigest()
    return identity


def latent_key(record, vae_identity: dict, vae_dtype: torch.dtype, seed: int, first_frame: bool = False) -> str:
    random_choice = record.crop_style == "random" or record.random_start
    return content_key(
        kind="latent+first_frame" if first_frame else "latent",
        sample=record.sample_signature(),  # clip bytes, bucket, fps, crop, rotation, frame pipeline
        vae=vae_identity,
        dtype=str(vae_dtype),
        seed=seed if random_choice else None,  # the random crop/start is drawn from the seed
    )


def text_key(caption: str, text_identity: dict, text_dtype: torch.dtype, start_index: int,
             max_tokens: int = MAX_CAPTION_TOKENS) -> str:
    return content_key(
        kind="text", caption=caption, model=text_identity, dtype=str(text_dtype), start=start_index,
        max_tokens=max_tokens,
    )


def _record_generator(seed: int, record_key: str) -> torch.Generator:
    """A per-clip generator, so random crops/starts do not depend on the order clips are cached in."""
    mixed = int.from_bytes(hashlib.sha256(f"{seed}:{record_key}".encode()).digest()[:8], "little")
    return torch.Generator().manual_seed(mixed)


def long_captions(records, components, max_tokens: int) -> list[tuple[object, int]]:
    """(record, tokens) of every clip with a caption longer than `max_tokens` Qwen tokens: training cuts it
    there, as inference does (the dataset report lists them)."""
    captions = sorted({c for r in records for c in r.captions})
    if not captions:
        return []
    counts = dict(zip(captions, caption_tokens(text_pipeline(components, None, None), captions), strict=True))
    return [(r, max(counts[c] for c in r.captions)) for r in records
            if any(counts[c] > max_tokens for c in r.captions)]


def _reset_peak(runtime: Runtime) -> None:
    if runtime.is_cuda:
        torch.cuda.reset_peak_memory_stats(runtime.device)


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


def build_caches(
    train_config,
    media_backends,
    text_backend,
    records,
    components,
    runtime: Runtime,
    extra_prompts: list[str] | None = None,
    progress: Progress | None = None,
    dist=None,
) -> CacheResult:
    """Encode what is missing: text first, then latents (never both encoders needlessly on the GPU).

    With several processes (`dist`), each encodes its share of what is missing, once; after a
    barrier every process sees the whole cache.
    """
    from k5tune.data.frames import load_clip_frames
    from k5tune.distributed import Dist

    dist = dist or Dist()
    progress = progress or SilentProgress()
    started = time.perf_counter()

    def open_stores(clean: bool):
        return (TensorStore(text_backend.cache_dir, clean_leftovers=clean),
                {b.id: TensorStore(b.vae_cache_dir, clean_leftovers=clean) for b in media_backends})

    # only the first process removes leftover temporary files: another's may be in flight
    if dist.is_main:
        text_store, latent_stores = open_stores(True)
    dist.barrier()
    if not dist.is_main:
        text_store, latent_stores = open_stores(False)

    # 1. Text embeddings: every caption variant, the empty caption and the validation prompts.
    captions = sorted({c for r in records for c in r.captions} | {EMPTY_CAPTION} | set(extra_prompts or []))
    text_identity = {"qwen": _folder_identity(components.source, "text_encoder"),
                     "clip": _folder_identity(components.source, "text_encoder_2")}
    text_keys = {c: text_key(c, text_identity, runtime.text_dtype, components.prompt_start_index,
                             train_config.caption_max_tokens) for c in captions}
    missing_captions = [c for c in captions if not text_store.verified(text_keys[c])][dist.rank :: dist.world]
    #   (an unreadable or NaN/inf text entry is deleted by verified() and encoded again like a new one)
    streamed, text_peak = False, None
    if missing_captions:
        _reset_peak(runtime)
        streamed = _encode_captions(missing_captions, text_store, text_keys, components, runtime, train_config,
                                    progress)
        text_peak = runtime.peak_memory_gib()
    if train_config.offload_during_startup:
        # The text encoders are done: free them before the VAE comes to the GPU.
        components.unload("text_encoder", "text_encoder_2")
        runtime.empty_cache()
    elif streamed:  # its weights are in CPU memory already; this hooked copy serves nothing else
        components.unload("text_encoder")

    # 2. VAE latents, one clip at a time (the memory peak of the whole run).
    vae_identity = _folder_identity(components.source, "vae")
    # I2V: the first frame is also encoded alone, as the I2V pipeline encodes its image at inference.
    i2v = components.source.flavour.is_i2v
    latent_keys = {r.key: latent_key(r, vae_identity, runtime.vae_dtype, train_config.seed, i2v) for r in records}
    dist.barrier()  # every caption is cached before anyone checks the latents (verified() may delete)
    missing_anywhere = []
    for record in records:
        problem = latent_stores[record.backend_id].problem(latent_keys[record.key])
        if problem is not None:
            missing_anywhere.append(record)
        if problem not in (None, "missing") and dist.is_main:
            progress.log(f"warning: the cached latents of {record.path} were {problem}: deleted, encoded again")
    missing = missing_anywhere[dist.rank :: dist.world]
    latent_peak = None
    if missing:
        _reset_peak(runtime)
        vae = components.vae(dtype=runtime.vae_dtype, device=runtime.device)
        if train_config.vae_enable_patch_conv:
            enable_patch_conv(vae)
        if train_config.vae_enable_tiling:
            vae.enable_tiling()
        progress.start("caching video latents", len(missing))
        try:
            for record in missing:
                pixels = load_clip_frames(record, generator=_record_generator(train_config.seed, record.key))
                tensors = {"latents": encode_video(vae, pixels.unsqueeze(0))[0]}
                if i2v:  # the first frame alone, as the I2V pipeline encodes its image
                    tensors["first_frame"] = encode_video(vae, pixels[None, :, :1])[0]
                if all(torch.isfinite(t).all() for t in tensors.values()):  # (NaN/inf: never stored)
                    latent_stores[record.backend_id].put(latent_keys[record.key], tensors,
                                                         {"clip": str(record.path), "bucket": record.bucket.name})
                progress.advance(1)
        finally:  # interrupted or failed: the entries already written are described too
            for store in latent_stores.values():
                store.save_manifest()
        progress.end()
        latent_peak = runtime.peak_memory_gib()
    if train_config.offload_during_startup or missing:
        components.unload("vae")
        runtime.empty_cache()
    dist.barrier()  # every share is written: from here on each process reads the whole cache
    # what is still missing was encoded to NaN/inf (by whichever process): every process agrees on it
    unusable = [r for r in missing_anywhere if not latent_stores[r.backend_id].has(latent_keys[r.key])]

    return CacheResult(
        latent_keys=latent_keys,
        latent_stores=latent_stores,
        text_keys=text_keys,
        text_store=text_store,
        encoded_latents=len(missing),
        encoded_captions=len(missing_captions),
        seconds=time.perf_counter() - started,
        extra_prompts=list(extra_prompts or []),
        text_peak_gib=text_peak,
        latent_peak_gib=latent_peak,
        text_encoder_streamed=streamed,
        unusable=unusable,
    )


def report_path(text_backend, media_backends) -> Path:
    """The dataset report goes beside the caches: their common parent folder."""
    folders = [os.path.abspath(text_backend.cache_dir), *(os.path.abspath(b.vae_cache_dir) for b in media_backends)]
    common = Path(os.path.commonpath(folders))
    return common / "dataset_report.json"
