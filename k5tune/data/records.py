"""The records the data pipeline hands to the cache: one per usable clip, with its bucket."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# Bump when decoding, resampling, rotation, resizing or cropping changes what a record's pixels look
# like: it is part of `ClipRecord.sample_signature()`, so cached latents made the old way are rebuilt.
FRAME_PIPELINE_VERSION = 1


@dataclass(frozen=True, order=True)
class Bucket:
    """Sample shape shared by every clip of a batch: WIDTH x HEIGHT pixels, FRAMES frames."""

    width: int
    height: int
    frames: int

    @property
    def name(self) -> str:
        """`WIDTHxHEIGHT@FRAMES`, e.g. `768x512@61` (width first, as in `1920x1080`)."""
        return f"{self.width}x{self.height}@{self.frames}"

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class ClipRecord:
    """A clip (or image) that passed probing and filtering, with everything needed to load it."""

    key: str  # stable id: "<backend id>/<path relative to instance_data_dir>" (posix separators)
    backend_id: str
    path: Path
    media_type: Literal["video", "image"]
    captions: tuple[str, ...]  # one is drawn per epoch with pick_caption()
    fps: float  # source average frame rate (0 for images)
    num_source_frames: int
    duration: float  # seconds (num_source_frames / fps); 0 for images
    width: int  # display size, after rotation
    height: int
    rotation: int  # counter-clockwise degrees (0/90/180/270) turning decoded frames into display frames
    available_frames: int  # frames after resampling to target_fps (1 for images)
    bucket: Bucket
    content_hash: str  # sha256 of the file bytes, hex
    crop_style: Literal["center", "random"]
    random_start: bool
    target_fps: float
    repeats: int

    @property
    def relative_path(self) -> str:
        return self.key.split("/", 1)[1]

    def sample_signature(self) -> str:
        """A hex digest of everything that decides this record's pixels (for cache keys).

        Captions are left out on purpose: they affect text embeddings, not latents.
        """
        payload = {
            "content": self.content_hash,
            "bucket": self.bucket.name,
            "target_fps": round(self.target_fps, 6),
            "crop_style": self.crop_style,
            "random_start": self.random_start,
            "rotation": self.rotation,
            "pipeline": FRAME_PIPELINE_VERSION,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def to_dict(self) -> dict:
        return {
            "key": self.key,
            "backend_id": self.backend_id,
            "path": str(self.path),
            "media_type": self.media_type,
            "captions": list(self.captions),
            "fps": self.fps,
            "num_source_frames": self.num_source_frames,
            "duration": self.duration,
            "width": self.width,
            "height": self.height,
            "rotation": self.rotation,
            "available_frames": self.available_frames,
            "bucket": self.bucket.name,
            "content_hash": self.content_hash,
            "crop_style": self.crop_style,
            "random_start": self.random_start,
            "target_fps": self.target_fps,
            "repeats": self.repeats,
        }


def file_sha256(path: Path, chunk_size: int = 1 << 20) -> str:
    """sha256 of a file, read in chunks so multi-GB clips never sit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
