"""Content keys of cache entries: a hash of everything that changes a result, so a second run encodes
nothing, a new resolution re-encodes only latents, and an edited caption only that caption."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from k5tune.cache.store import content_key
from k5tune.models.kandinsky5.encoding import MAX_CAPTION_TOKENS


def _files_digest(paths) -> str:
    """A local folder's weights as a cache key sees them: names, sizes and times, and the configs."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        if path.suffix == ".json":
            digest.update(path.read_bytes())
    return digest.hexdigest()


def folder_identity(source, subfolder: str) -> dict:
    """What identifies one component's weights: hub id + revision, or a local folder's files."""
    identity = {"source": source.path_or_id, "revision": source.revision, "part": subfolder}
    folder = Path(source.path_or_id) / subfolder
    if folder.is_dir():
        identity["files"] = _files_digest(folder.iterdir())
    return identity


def encoder_identity(name: str, source: str) -> dict:
    """What identifies CREPA's encoder: its hub id, or a local folder's files (names, sizes, times, configs)."""
    identity = {"encoder": source}
    folder = Path(source).expanduser()
    if folder.is_dir():
        identity["files"] = _files_digest(p for p in folder.iterdir() if p.is_file())
    return identity


def feature_key(record, encoder: dict, image_size: int, pooling: int, grid: tuple[int, int, int], seed: int) -> str:
    """CREPA's teacher features of a clip: the same frames as its latents (same sample signature and seed
    rule), the encoder, its input size, the pooling and the token grid they are stored at."""
    random_choice = record.crop_style == "random" or record.random_start
    return content_key(kind="crepa", sample=record.sample_signature(), encoder=encoder, image_size=image_size,
                       pooling=pooling, grid=list(grid), seed=seed if random_choice else None)


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


def record_generator(seed: int, record_key: str) -> torch.Generator:
    """A per-clip generator, so random crops/starts do not depend on the order clips are cached in."""
    mixed = int.from_bytes(hashlib.sha256(f"{seed}:{record_key}".encode()).digest()[:8], "little")
    return torch.Generator().manual_seed(mixed)
