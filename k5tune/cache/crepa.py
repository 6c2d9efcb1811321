"""The CREPA phase of caching: each clip's teacher features, once, from the frames its latents come from.

The clip is decoded as for its latents (same crop and start: the same per-clip generator), one pixel
frame per latent frame goes through DINOv2 (models/dinov2.py), and the patch features, resampled to
the transformer's token grid, L2-normalised and stored in fp16, go into the clip's latent store under
their own content key (keys.feature_key: sample, encoder, image size, pooling, grid). A second run,
or another run with the same encoder settings, reuses them; the training loop never runs DINOv2.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from k5tune.cache.keys import encoder_identity, feature_key, record_generator
from k5tune.cache.store import TensorStore
from k5tune.config.frames import SPATIAL_MULTIPLE, latent_frames
from k5tune.models.vision_encoders import encoder_source
from k5tune.progress import Progress
from k5tune.runtime import Runtime

FEATURES = "features"  # the tensor's name in an entry: (latent frames, tokens, channels) fp16


@dataclass
class FeaturePhase:
    keys: dict[str, str]  # record key -> feature entry key
    width: int = 0  # feature channels (the projection head's output)
    encoded: int = 0
    seconds: float = 0.0
    peak_gib: float | None = None
    bytes_per_clip: float = 0.0  # mean size of the clips' entries on disk
    unusable: list = field(default_factory=list)  # clips whose features came out NaN/inf


def token_grid(record, pooling: int = 1) -> tuple[int, int, int]:
    """(latent frames, token rows, token columns) of a record's bucket, after pooling."""
    bucket = record.bucket
    rows, columns = bucket.height // SPATIAL_MULTIPLE, bucket.width // SPATIAL_MULTIPLE
    return latent_frames(bucket.frames), -(-rows // pooling), -(-columns // pooling)


def cache_features(cfg, records, stores: dict[str, TensorStore], runtime: Runtime, progress: Progress,
                   dist) -> FeaturePhase:
    """Encode this process's share of the clips without features; after the barrier all agree."""
    started = time.perf_counter()
    identity = encoder_identity(cfg.crepa_encoder, encoder_source(cfg.crepa_encoder))
    keys = {r.key: feature_key(r, identity, cfg.crepa_encoder_image_size, cfg.crepa_feature_pooling,
                               token_grid(r), cfg.seed) for r in records}
    missing_anywhere = [r for r in records if stores[r.backend_id].problem(keys[r.key]) is not None]
    missing = missing_anywhere[dist.rank :: dist.world]
    phase = FeaturePhase(keys, encoded=len(missing))
    if missing:
        runtime.reset_peak_memory()
        _encode(missing, cfg, stores, keys, runtime, progress)
        phase.peak_gib = runtime.peak_memory_gib()
        runtime.empty_cache()
    dist.barrier()
    phase.unusable = [r for r in missing_anywhere if not stores[r.backend_id].has(keys[r.key])]
    present = [stores[r.backend_id].path(keys[r.key]) for r in records if stores[r.backend_id].has(keys[r.key])]
    if present:
        from safetensors import safe_open

        with safe_open(present[0], framework="pt") as handle:
            phase.width = handle.get_slice(FEATURES).get_shape()[-1]
        phase.bytes_per_clip = sum(p.stat().st_size for p in present) / len(present)
    phase.seconds = time.perf_counter() - started
    return phase


def _encode(missing, cfg, stores, keys, runtime: Runtime, progress: Progress) -> None:
    from k5tune.data.frames import load_clip_frames
    from k5tune.models.dinov2 import frame_indices, load_dinov2, teacher_features

    model = load_dinov2(cfg.crepa_encoder, runtime.device, runtime.compute_dtype)
    progress.start("caching CREPA features", len(missing))
    try:
        for record in missing:
            pixels = load_clip_frames(record, generator=record_generator(cfg.seed, record.key))  # (3, F, H, W)
            frames, rows, columns = token_grid(record)
            chosen = pixels[:, frame_indices(pixels.shape[1], frames)].transpose(0, 1)
            features = teacher_features(model, chosen, cfg.crepa_encoder_image_size, (rows, columns),
                                        cfg.crepa_feature_pooling)
            if torch.isfinite(features).all():  # (NaN/inf: never stored; the clip is left out)
                stores[record.backend_id].put(keys[record.key], {FEATURES: features},
                                              {"clip": str(record.path), "crepa": cfg.crepa_encoder,
                                               "image_size": cfg.crepa_encoder_image_size})
            progress.advance(1)
    finally:
        for store in stores.values():
            store.save_manifest()
        del model
    progress.end()
