"""The latent phase of caching: each clip decoded and VAE-encoded once (the memory peak of a run), and
for I2V its first frame alone, as the I2V pipeline encodes its image. Latents that come out NaN/inf
are never stored: the clip is reported and left out."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from k5tune.cache.keys import folder_identity, latent_key, record_generator
from k5tune.cache.store import TensorStore
from k5tune.models.kandinsky5.encoding import encode_video
from k5tune.models.kandinsky5.patch_conv import enable_patch_conv
from k5tune.progress import Progress
from k5tune.runtime import Runtime


@dataclass
class LatentPhase:
    keys: dict[str, str]  # record key -> entry key
    encoded: int = 0
    peak_gib: float | None = None
    unusable: list = field(default_factory=list)  # clips encoded to NaN/inf (by any process)


def _missing(records, stores: dict[str, TensorStore], keys: dict[str, str], progress: Progress, dist) -> list:
    """Clips without a usable entry; a damaged entry (unreadable, NaN/inf) is deleted and named."""
    missing = []
    for record in records:
        problem = stores[record.backend_id].problem(keys[record.key])
        if problem is not None:
            missing.append(record)
        if problem not in (None, "missing") and dist.is_main:
            progress.log(f"warning: the cached latents of {record.path} were {problem}: deleted, encoded again")
    return missing


def cache_latents(train_config, records, stores: dict[str, TensorStore], components, runtime: Runtime,
                  progress: Progress, dist) -> LatentPhase:
    """Encode this process's share of the missing clips; after the barrier every process agrees on the
    clips that stayed missing (encoded to NaN/inf)."""
    i2v = components.source.flavour.is_i2v
    identity = folder_identity(components.source, "vae")
    keys = {r.key: latent_key(r, identity, runtime.vae_dtype, train_config.seed, i2v) for r in records}
    dist.barrier()  # every caption is cached before anyone checks the latents (problem() may delete)
    missing_anywhere = _missing(records, stores, keys, progress, dist)
    missing = missing_anywhere[dist.rank :: dist.world]
    phase = LatentPhase(keys, encoded=len(missing))
    if missing:
        runtime.reset_peak_memory()
        _encode_clips(missing, train_config, stores, keys, components, runtime, progress, i2v)
        phase.peak_gib = runtime.peak_memory_gib()
    if train_config.offload_during_startup or missing:
        components.unload("vae")
        runtime.empty_cache()
    dist.barrier()  # every share is written: from here on each process reads the whole cache
    phase.unusable = [r for r in missing_anywhere if not stores[r.backend_id].has(keys[r.key])]
    return phase


def _encode_clips(missing, train_config, stores, keys, components, runtime: Runtime, progress: Progress,
                  i2v: bool) -> None:
    from k5tune.data.frames import load_clip_frames

    vae = components.vae(dtype=runtime.vae_dtype, device=runtime.device)
    if train_config.vae_enable_patch_conv:
        enable_patch_conv(vae)
    if train_config.vae_enable_tiling:
        vae.enable_tiling()
    progress.start("caching video latents", len(missing))
    try:
        for record in missing:
            pixels = load_clip_frames(record, generator=record_generator(train_config.seed, record.key))
            tensors = {"latents": encode_video(vae, pixels.unsqueeze(0))[0]}
            if i2v:  # the first frame alone, as the I2V pipeline encodes its image
                tensors["first_frame"] = encode_video(vae, pixels[None, :, :1])[0]
            if all(torch.isfinite(t).all() for t in tensors.values()):  # (NaN/inf: never stored)
                stores[record.backend_id].put(keys[record.key], tensors,
                                              {"clip": str(record.path), "bucket": record.bucket.name})
            progress.advance(1)
    finally:  # interrupted or failed: the entries already written are described too
        for store in stores.values():
            store.save_manifest()
    progress.end()
