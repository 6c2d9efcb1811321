"""Buckets (the WxH@frames a clip is trained at) and batches that never mix them.

Rules, decided here once:
- Aspect snapping: a clip's display aspect is snapped to the nearest of COMMON_ASPECTS (in log space, so
  2:1 and 1:2 are equally far from 1:1). Clips of nearly the same shape share a bucket, and the crop
  that makes a clip fit its bucket stays small: at most about 12% of one side for aspects between 1:1
  and 3:1 (more only for panoramas wider than 3:1). Both bucket strategies snap: resolution_frames
  differs only in how frames are counted.
- Size: resolution_type `pixel` makes the shorter side `resolution` (512, 2:3 -> 512x768); `area` makes
  width*height about resolution^2. Each side is then rounded to the NEAREST multiple of 16 (the VAE's
  8x times the transformer's 2x2 patch), never below 16.
- Frames: `aspect_ratio` uses video.num_frames for every clip. `resolution_frames` uses as many frames
  as the clip has after resampling, on the grid num_frames + k*frame_interval (so always 4k+1, never
  below num_frames, never above the clip's length or max_frames). Images are 1 frame.
- Partial batches are kept: the last batch of a bucket may be smaller than batch_size, so no clip is
  silently never trained (a bucket with 1 clip and batch size 4 still trains).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from fractions import Fraction

import numpy as np

from k5tune.config.frames import SPATIAL_MULTIPLE, is_valid_frame_count
from k5tune.data.discovery import stable_int
from k5tune.data.records import Bucket, ClipRecord

_LANDSCAPE = ((1, 1), (5, 4), (4, 3), (3, 2), (16, 10), (16, 9), (2, 1), (21, 9), (3, 1))
COMMON_ASPECTS: tuple[tuple[int, int], ...] = _LANDSCAPE + tuple((h, w) for w, h in _LANDSCAPE if w != h)
"""Width:height ratios buckets snap to: the landscape ones and their portrait twins."""


def snap_aspect(width: int, height: int) -> tuple[int, int]:
    """The COMMON_ASPECTS entry (w, h) closest to width/height in log space."""
    if width <= 0 or height <= 0:
        raise ValueError(f"cannot snap the aspect of a {width}x{height} frame")
    target = math.log(width / height)
    return min(COMMON_ASPECTS, key=lambda wh: abs(math.log(wh[0] / wh[1]) - target))


def round_to_multiple(value: float, multiple: int = SPATIAL_MULTIPLE) -> int:
    """Nearest multiple (halves round up, not to even), never below `multiple`."""
    return max(multiple, int(math.floor(value / multiple + 0.5)) * multiple)


def bucket_size(width: int, height: int, resolution: int, resolution_type: str = "pixel",
                multiple: int = SPATIAL_MULTIPLE) -> tuple[int, int]:
    """(bucket width, bucket height) for a clip of display size width x height; sides are multiples of
    `multiple` (16: the VAE's 8x times the 2x2 patch; 128 under NABLA, whose 8x8-patch blocks must tile)."""
    aspect_w, aspect_h = snap_aspect(width, height)
    ratio = aspect_w / aspect_h
    if resolution_type == "pixel":
        out_w, out_h = (resolution * ratio, resolution) if ratio >= 1 else (resolution, resolution / ratio)
    elif resolution_type == "area":
        out_w, out_h = resolution * math.sqrt(ratio), resolution / math.sqrt(ratio)
    else:
        raise ValueError(f"unknown resolution_type {resolution_type!r}; use 'pixel' or 'area'")
    return round_to_multiple(out_w, multiple), round_to_multiple(out_h, multiple)


def resampled_frame_count(num_source_frames: int, source_fps: Fraction | float, target_fps: float) -> int:
    """How many frames a clip gives at target_fps: output frame j shows time j/target_fps, and exists
    while that time is inside the clip (before num_source_frames/source_fps). Exact (fractions), so
    48 frames at 24 fps give exactly 48, and 60 at 30 fps give 48 at 24 fps."""
    duration = Fraction(num_source_frames) / Fraction(source_fps).limit_denominator(100_000)
    return math.ceil(duration * Fraction(target_fps).limit_denominator(100_000))


def bucket_frames(
    available: int,
    *,
    num_frames: int,
    strategy: str,
    frame_interval: int = 4,
    max_frames: int | None = None,
) -> int:
    """Frames a clip is trained with (see the module rules). `available` must be >= num_frames."""
    if available < num_frames:
        raise ValueError(f"{available} frames cannot fill a {num_frames}-frame sample")
    if strategy == "aspect_ratio":
        return num_frames
    if strategy != "resolution_frames":
        raise ValueError(f"unknown bucket_strategy {strategy!r}")
    usable = min(available, max_frames) if max_frames is not None else available
    frames = num_frames + (usable - num_frames) // frame_interval * frame_interval
    assert is_valid_frame_count(frames), (frames, num_frames, frame_interval)  # interval is a multiple of 4
    return frames


def make_bucket(
    width: int,
    height: int,
    frames: int,
    resolution: int,
    resolution_type: str = "pixel",
    multiple: int = SPATIAL_MULTIPLE,
) -> Bucket:
    bucket_w, bucket_h = bucket_size(width, height, resolution, resolution_type, multiple)
    return Bucket(bucket_w, bucket_h, frames)


def batches_for_epoch(
    records: Sequence[ClipRecord],
    batch_size: int,
    epoch: int,
    seed: int,
    *,
    drop_partial: bool = False,
) -> list[list[int]]:
    """Batches of indices into `records` for one epoch; every batch lies within one bucket.

    Each record appears 1 + record.repeats times. Within a bucket every pass over the clips is shuffled
    on its own (so copies of one clip rarely share a batch), the passes are cut into batches, and then
    the batches of all buckets are shuffled together. The same (records, batch_size, epoch, seed)
    always gives the same batches; another epoch gives another order. Partial batches are kept unless
    drop_partial is set.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if epoch < 0:
        raise ValueError(f"epoch must be 0 or more, got {epoch}")
    rng = np.random.default_rng([stable_int("batches", seed) & 0xFFFFFFFF, epoch])
    by_bucket: dict[Bucket, list[int]] = defaultdict(list)
    for index, record in enumerate(records):
        by_bucket[record.bucket].append(index)
    batches: list[list[int]] = []
    for bucket in sorted(by_bucket):  # sorted: the rng draws must not depend on dict order
        members = by_bucket[bucket]
        passes = 1 + max(records[i].repeats for i in members)
        order: list[int] = []
        for pass_index in range(passes):
            in_pass = [i for i in members if records[i].repeats >= pass_index]
            order += [in_pass[j] for j in rng.permutation(len(in_pass))]
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            if len(batch) == batch_size or not drop_partial:
                batches.append(batch)
    return [batches[j] for j in rng.permutation(len(batches))]
