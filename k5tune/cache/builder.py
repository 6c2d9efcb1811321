"""The caching stage's encoding: every clip's latents and every caption's embedding, once.

Runs before training; the training loop reads only what this writes (cache/result.py). Text first, then
latents, so both encoders are never needlessly on the GPU together (text.py, latents.py); entries are
content-addressed (keys.py) and written atomically (store.py).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from k5tune.cache.latents import cache_latents
from k5tune.cache.result import CacheResult
from k5tune.cache.store import TensorStore
from k5tune.cache.text import cache_text
from k5tune.progress import Progress, SilentProgress
from k5tune.runtime import Runtime


def _open_stores(text_backend, media_backends, dist) -> tuple[TensorStore, dict[str, TensorStore]]:
    """Only the first process removes leftover temporary files: another's may be in flight."""
    def open_stores(clean: bool):
        return (TensorStore(text_backend.cache_dir, clean_leftovers=clean),
                {b.id: TensorStore(b.vae_cache_dir, clean_leftovers=clean) for b in media_backends})

    stores = open_stores(True) if dist.is_main else None
    dist.barrier()
    return stores or open_stores(False)


def build_caches(train_config, media_backends, text_backend, records, components, runtime: Runtime,
                 extra_prompts: list[str] | None = None, progress: Progress | None = None, dist=None) -> CacheResult:
    """Encode what is missing. With several processes (`dist`), each encodes its share of what is
    missing, once; after a barrier every process sees the whole cache."""
    from k5tune.distributed import Dist

    dist, progress, started = dist or Dist(), progress or SilentProgress(), time.perf_counter()
    text_store, latent_stores = _open_stores(text_backend, media_backends, dist)
    text = cache_text(train_config, records, list(extra_prompts or []), text_store, components, runtime, progress,
                      dist)
    latents = cache_latents(train_config, records, latent_stores, components, runtime, progress, dist)
    features = None
    if train_config.crepa_enabled:  # CREPA's teacher features, after the VAE is gone (cache/crepa.py)
        from k5tune.cache.crepa import cache_features

        usable = [r for r in records if r.key not in {u.key for u in latents.unusable}]
        features = cache_features(train_config, usable, latent_stores, runtime, progress, dist)
        if train_config.crepa_drop_vae_encoder and not latents.unusable:
            components.unload("vae")  # every clip is cached: validation loads the VAE without its encoder
            components.drop_vae_encoder = True
    return CacheResult(
        latent_keys=latents.keys, latent_stores=latent_stores, text_keys=text.keys, text_store=text_store,
        encoded_latents=latents.encoded, encoded_captions=text.encoded, seconds=time.perf_counter() - started,
        extra_prompts=list(extra_prompts or []), text_peak_gib=text.peak_gib, latent_peak_gib=latents.peak_gib,
        text_encoder_streamed=text.streamed, unusable=latents.unusable + (features.unusable if features else []),
        features=features,
    )


def report_path(text_backend, media_backends) -> Path:
    """The dataset report goes beside the caches: their common parent folder."""
    folders = [os.path.abspath(text_backend.cache_dir), *(os.path.abspath(b.vae_cache_dir) for b in media_backends)]
    common = Path(os.path.commonpath(folders))
    return common / "dataset_report.json"
