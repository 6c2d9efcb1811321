"""Builders shared by the tests of k5tune.data (plain functions; each test module makes its fixtures)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from k5tune.config.datasets import ImageBackend, VideoBackend
from k5tune.data.records import Bucket, ClipRecord
from k5tune.data.report import SkipReason
from k5tune.data.synthetic import write_audio_only, write_clip, write_image


def video_backend(folder: Path, **overrides) -> VideoBackend:
    video = {"num_frames": 17, **overrides.pop("video", {})}
    return VideoBackend(
        id=overrides.pop("id", "clips"), instance_data_dir=str(folder), video=video, **overrides
    )


def image_backend(folder: Path, **overrides) -> ImageBackend:
    return ImageBackend(id=overrides.pop("id", "stills"), instance_data_dir=str(folder), **overrides)


def caption(path: Path, text: str) -> Path:
    path.with_suffix(".txt").write_text(text, encoding="utf-8")
    return path


def make_mixed_dataset(folder: Path) -> dict[str, SkipReason | None]:
    """A folder of good and bad clips; returns relative path -> expected skip reason (None: used).

    Good: 24 and 30 fps, several aspects, .mov (mpeg4), upper-case extension, a rotated clip, a
    Matroska clip with the legacy rotate tag, one in a subfolder. Bad: corrupt bytes, 0 bytes,
    too short, audio only, no caption, empty caption. Litter that is not a clip is also written.
    """
    expected: dict[str, SkipReason | None] = {}

    def good(name: str, text: str = "a moving shape", **kwargs) -> None:
        caption(write_clip(folder / name, **kwargs), text)
        expected[name] = None

    good("a_24fps.mp4", frames=48, fps=24)
    good("b_30fps.mp4", "a red circle moving right\n\n  a small red ball rolling  \n", frames=60, fps=30)
    good("c_wide.mp4", frames=24, fps=12, width=96, height=48)
    good("d_portrait.mp4", frames=24, fps=24, width=48, height=64, motion="down")
    good("e_clip.mov", frames=24, fps=24, codec="mpeg4")
    good("f_UPPER.MP4", frames=24, fps=24)
    good("g_rotated.mp4", frames=24, fps=24, width=48, height=64, rotation=90)
    good("sub/h_tagged.mkv", frames=24, fps=24, width=48, height=64, rotation=270, rotation_as="tag")

    bad = folder / "x_corrupt.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    caption(bad, "corrupt")
    expected[bad.name] = SkipReason.UNREADABLE
    caption(folder / "x_empty.mp4", "empty").touch()
    expected["x_empty.mp4"] = SkipReason.EMPTY_FILE
    caption(write_clip(folder / "x_short.mp4", frames=8, fps=24), "too short")
    expected["x_short.mp4"] = SkipReason.TOO_SHORT
    caption(write_audio_only(folder / "x_audio.mp4", seconds=0.5), "audio")
    expected["x_audio.mp4"] = SkipReason.NO_VIDEO_STREAM
    write_clip(folder / "x_nocaption.mp4", frames=24)
    expected["x_nocaption.mp4"] = SkipReason.MISSING_CAPTION
    caption(write_clip(folder / "x_emptycaption.mp4", frames=24), " \n\t\n")
    expected["x_emptycaption.mp4"] = SkipReason.EMPTY_CAPTION

    # Not clips: never discovered, never reported.
    (folder / "notes.md").write_text("not a clip")
    (folder / "._a_24fps.mp4").write_bytes(b"\x00\x05\x16\x07")  # macOS resource fork
    (folder / ".cache").mkdir()
    write_clip(folder / ".cache" / "hidden.mp4", frames=24)
    return expected


def make_images(folder: Path) -> None:
    caption(write_image(folder / "wide.png", width=96, height=48), "a red circle")
    caption(write_image(folder / "square.JPG", width=64, height=64, color="blue"), "a blue circle")
    caption(write_image(folder / "turned.jpg", width=64, height=48, exif_orientation=6), "a turned picture")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    caption(folder / "broken.png", "broken")


def fake_record(key: str, bucket: Bucket, repeats: int = 0, **overrides) -> ClipRecord:
    """A ClipRecord for tests that only need bucket/repeats (batching)."""
    fields = dict(
        key=key,
        backend_id=key.split("/")[0],
        path=Path("/nonexistent") / key,
        media_type="video",
        captions=("caption",),
        fps=24.0,
        num_source_frames=bucket.frames,
        duration=bucket.frames / 24,
        width=bucket.width,
        height=bucket.height,
        rotation=0,
        available_frames=bucket.frames,
        bucket=bucket,
        content_hash="0" * 64,
        crop_style="center",
        random_start=False,
        target_fps=24.0,
        repeats=repeats,
    )
    fields.update(overrides)
    return ClipRecord(**fields)


def shape_centroid(frame: torch.Tensor, channel: int = 0) -> tuple[float, float]:
    """(x, y) centroid of the bright pixels of `channel` in a (3, H, W) frame in [-1, 1]."""
    mask = frame[channel] > 0.0
    if not mask.any():
        raise AssertionError("no shape in frame")
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return xs.float().mean().item() + 0.5, ys.float().mean().item() + 0.5
