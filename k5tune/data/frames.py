"""Decoding a record into the pixels the VAE encodes: (3, F, H, W) float32 in [-1, 1].

Steps: pick frames by time (resampling to the target frame rate), rotate to display orientation,
resize so the frame covers the bucket (aspect kept), crop to the bucket (center or seeded random).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import av
import numpy as np
import torch
import torch.nn.functional as F

from k5tune.data.discovery import stable_int
from k5tune.data.probe import pick_video_stream
from k5tune.data.records import ClipRecord
from k5tune.errors import DatasetError

T = TypeVar("T")


def target_times(start: int, count: int, target_fps: float) -> list[float]:
    """Seconds shown by output frames start..start+count-1: frame i shows time i / target_fps."""
    return [(start + i) / target_fps for i in range(count)]


def match_frames(timed: Iterable[tuple[float, T]], times: Sequence[float]) -> Iterator[tuple[int, T]]:
    """For each target time (ascending), yield (target index, the item whose time is nearest).

    Ties go to the earlier item. Lazy: it stops pulling from `timed` as soon as the last target is
    matched, so only the needed stretch of a clip is decoded. Targets past the last item get the last
    item (a decoder that returns a frame or two fewer than the container announced).
    """
    previous: tuple[float, T] | None = None
    next_target = 0
    for time, item in timed:
        while next_target < len(times) and times[next_target] <= time:
            wanted = times[next_target]
            # 1e-9: float times of an exact tie (1/60 between 0 and 1/30) must still go to the earlier
            if previous is not None and wanted - previous[0] <= time - wanted + 1e-9:
                yield next_target, previous[1]
            else:
                yield next_target, item
            next_target += 1
        if next_target == len(times):
            return
        previous = (time, item)
    while previous is not None and next_target < len(times):
        yield next_target, previous[1]
        next_target += 1


def cover_size(width: int, height: int, bucket_width: int, bucket_height: int) -> tuple[int, int]:
    """The smallest size with width/height's aspect that covers the bucket on both sides."""
    scale = max(bucket_width / width, bucket_height / height)
    return max(bucket_width, round(width * scale)), max(bucket_height, round(height * scale))


def resize(frames: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """(N, 3, h, w) in 0..255 -> (N, 3, height, width) float. Downscaling is antialiased (bilinear
    with antialias averages the source pixels under each output pixel, like area interpolation);
    upscaling uses bicubic, clamped because bicubic overshoots."""
    frames = frames.float()
    if frames.shape[-2:] == (height, width):
        return frames
    if height * width < frames.shape[-2] * frames.shape[-1]:
        return F.interpolate(
            frames, size=(height, width), mode="bilinear", antialias=True, align_corners=False
        )
    upscaled = F.interpolate(frames, size=(height, width), mode="bicubic", align_corners=False)
    return upscaled.clamp_(0.0, 255.0)


def crop_offsets(
    width: int, height: int, bucket_width: int, bucket_height: int, style: str, generator: torch.Generator
) -> tuple[int, int]:
    """(top, left) of the bucket-sized window: centred, or uniform at random for crop_style 'random'."""
    spare_w, spare_h = width - bucket_width, height - bucket_height
    if style == "random":
        top = int(torch.randint(0, spare_h + 1, (1,), generator=generator))
        left = int(torch.randint(0, spare_w + 1, (1,), generator=generator))
        return top, left
    return spare_h // 2, spare_w // 2


def default_generator(record: ClipRecord) -> torch.Generator:
    """A generator seeded from the clip's key, so a call without one is still repeatable."""
    return torch.Generator().manual_seed(stable_int("frames", record.key) & 0x7FFF_FFFF_FFFF_FFFF)


class _FramePrep:
    """Turns one decoded picture into a bucket-sized (3, H, W) float tensor in 0..255."""

    def __init__(self, record: ClipRecord, generator: torch.Generator):
        bucket = record.bucket
        # Images come upright from exif_transpose; only video frames still need their display turn.
        self.rotation_turns = record.rotation // 90 if record.media_type == "video" else 0
        self.size = cover_size(record.width, record.height, bucket.width, bucket.height)
        self.bucket = bucket
        self.top, self.left = crop_offsets(
            *self.size, bucket.width, bucket.height, record.crop_style, generator
        )

    def __call__(self, rgb: np.ndarray) -> torch.Tensor:
        picture = torch.from_numpy(np.array(rgb, copy=True)).permute(2, 0, 1)  # (3, h, w) uint8, owned
        if self.rotation_turns:
            # torch.rot90 turns from the first dim towards the second: counter-clockwise for (h, w).
            picture = torch.rot90(picture, self.rotation_turns, dims=(1, 2))
        resized = resize(picture.unsqueeze(0), *self.size)[0]
        return resized[:, self.top : self.top + self.bucket.height, self.left : self.left + self.bucket.width]


def load_clip_frames(record: ClipRecord, generator: torch.Generator | None = None) -> torch.Tensor:
    """The record's sample: (3, F, H, W) float32 in [-1, 1], F/H/W from record.bucket.

    Randomness (start frame when random_start, crop window when crop_style is 'random') comes from
    `generator`, drawn in that order; without one, a generator seeded from record.key is used.
    Raises DatasetError if the file cannot be decoded now.
    """
    generator = generator if generator is not None else default_generator(record)
    count = record.bucket.frames
    start = 0
    if record.random_start and record.available_frames > count:
        start = int(torch.randint(0, record.available_frames - count + 1, (1,), generator=generator))
    prep = _FramePrep(record, generator)
    try:
        if record.media_type == "image":
            pictures = [prep(_read_image(record.path))]
        else:
            pictures = _decode_video(record, prep, target_times(start, count, record.target_fps))
    except DatasetError:
        raise
    except Exception as exc:  # any decoder failure becomes one readable message naming the clip
        raise DatasetError(f"{record.path}: cannot decode ({exc})") from exc
    pixels = torch.stack(pictures, dim=1)  # (3, F, H, W)
    return pixels.div_(127.5).sub_(1.0).clamp_(-1.0, 1.0).contiguous()


def _decode_video(record: ClipRecord, prep: _FramePrep, times: list[float]) -> list[torch.Tensor]:
    out: list[torch.Tensor | None] = [None] * len(times)
    with av.open(str(record.path)) as container:
        stream = pick_video_stream(container)
        if stream is None:
            raise DatasetError(f"{record.path}: no video stream")
        stream.thread_type = "AUTO"
        last_frame, last_picture = None, None
        for index, frame in match_frames(_timed_frames(container, stream, record.fps), times):
            if frame is not last_frame:  # upsampling repeats a frame: convert it once
                last_frame, last_picture = frame, prep(frame.to_ndarray(format="rgb24"))
            out[index] = last_picture
    if any(picture is None for picture in out):
        raise DatasetError(f"{record.path}: no frame could be decoded")
    return out  # type: ignore[return-value]


def _timed_frames(
    container: av.container.InputContainer, stream, fps: float
) -> Iterator[tuple[float, av.VideoFrame]]:
    """Decoded frames with their time in seconds since the first frame (pts, else index / fps)."""
    first = None
    for index, frame in enumerate(container.decode(stream)):
        time = frame.time if frame.time is not None else index / fps
        first = time if first is None else first
        yield time - first, frame


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)  # EXIF orientation, mirrors included
        if "A" in image.getbands() or "transparency" in image.info:
            # Transparent pixels carry arbitrary colours; show them on white as viewers do.
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, rgba)
        return np.asarray(image.convert("RGB"))
