"""Synthetic media for tests and `k5tune demo`: coloured shapes moving over a plain background.

The shape moves at a fixed speed in pixels per SECOND, so clips written at different frame rates show
the same motion at the same times (what frame-rate resampling must preserve).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TypedDict, Unpack

import av
import numpy as np

Color = tuple[int, int, int]

COLORS: dict[str, Color] = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (40, 80, 230),
    "yellow": (230, 210, 40),
    "white": (240, 240, 240),
}
MOTIONS = ("right", "left", "down", "up", "static")
SHAPES = ("circle", "square")
BACKGROUND: Color = (20, 20, 28)


@dataclass(frozen=True)
class ClipFormat:
    """How many frames, at what rate and display size: the one place the synthetic clips' defaults live."""

    frames: int = 48
    fps: float = 24.0
    width: int = 64
    height: int = 48


class ClipFormatArgs(TypedDict, total=False):
    """ClipFormat's fields as keywords (`write_clip(path, frames=24, width=96)`); the others keep its defaults."""

    frames: int
    fps: float
    width: int
    height: int


def shape_size(width: int, height: int) -> int:
    return max(4, min(width, height) // 4)


def shape_center(
    t: float, *, width: int, height: int, motion: str, size: int, speed: float
) -> tuple[float, float]:
    """(x, y) of the shape's centre at time t seconds: it starts at one edge and moves at `speed`."""
    half = size / 2
    if motion == "right":
        return half + speed * t, height / 2
    if motion == "left":
        return width - half - speed * t, height / 2
    if motion == "down":
        return width / 2, half + speed * t
    if motion == "up":
        return width / 2, height - half - speed * t
    if motion == "static":
        return width / 2, height / 2
    raise ValueError(f"unknown motion {motion!r}; use one of {MOTIONS}")


def draw_frame(
    width: int,
    height: int,
    center: tuple[float, float],
    size: int,
    shape: str = "circle",
    color: Color = COLORS["red"],
    background: Color = BACKGROUND,
) -> np.ndarray:
    """An (height, width, 3) uint8 picture of one shape."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    cx, cy = center
    if shape == "circle":
        inside = (xs - cx) ** 2 + (ys - cy) ** 2 <= (size / 2) ** 2
    elif shape == "square":
        inside = (np.abs(xs - cx) <= size / 2) & (np.abs(ys - cy) <= size / 2)
    else:
        raise ValueError(f"unknown shape {shape!r}; use one of {SHAPES}")
    picture = np.empty((height, width, 3), np.uint8)
    picture[:] = background
    picture[inside] = color
    return picture


def write_clip(
    path: Path | str,
    *,
    motion: str = "right",
    shape: str = "circle",
    color: Color | str = "red",
    background: Color = BACKGROUND,
    size: int | None = None,
    speed: float | None = None,
    codec: str = "libx264",
    rotation: int | None = None,
    rotation_as: str = "matrix",
    **clip_format: Unpack[ClipFormatArgs],
) -> Path:
    """Write a clip of a shape moving across a plain background; returns the path.

    `frames`, `fps`, `width` and `height` are keywords of ClipFormat (its defaults where left out);
    `width` x `height` is the DISPLAY size. `speed` is in pixels per second; by default the shape
    crosses the frame in the clip's duration. `rotation` (counter-clockwise degrees, a multiple of 90)
    stores the pictures turned the other way plus metadata saying how to turn them back, as phones
    do: `rotation_as="matrix"` writes a display matrix (mp4/mov/mkv/webm), `"tag"` the legacy
    clockwise `rotate` tag, which only Matroska (.mkv) keeps.
    """
    path, fmt = Path(path), ClipFormat(**clip_format)
    if fmt.width % 2 or fmt.height % 2:
        raise ValueError(f"{fmt.width}x{fmt.height}: yuv420p needs even sides")
    turns = (rotation or 0) // 90 % 4
    if rotation is not None and rotation % 90:
        raise ValueError(f"rotation {rotation} is not a multiple of 90")
    coded_w, coded_h = (fmt.height, fmt.width) if turns % 2 else (fmt.width, fmt.height)
    pictures = render_clip(motion=motion, shape=shape, color=color, background=background, size=size, speed=speed,
                           **clip_format)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = _video_stream(container, codec, fmt.fps, coded_w, coded_h, turns, rotation_as)
        for picture in pictures:
            coded = np.ascontiguousarray(np.rot90(picture, k=-turns)) if turns else picture
            for packet in stream.encode(av.VideoFrame.from_ndarray(coded, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def render_clip(*, motion: str = "right", shape: str = "circle", color: Color | str = "red",
                background: Color = BACKGROUND, size: int | None = None, speed: float | None = None,
                **clip_format: Unpack[ClipFormatArgs]) -> np.ndarray:
    """The (frames, height, width, 3) uint8 pictures `write_clip` encodes (a ClipFormat's keywords as there)."""
    fmt, rgb = ClipFormat(**clip_format), COLORS[color] if isinstance(color, str) else tuple(color)
    width, height, fps = fmt.width, fmt.height, fmt.fps
    size = size or shape_size(width, height)
    travel = (width if motion in ("right", "left") else height) - size
    if speed is None:
        speed = travel / (fmt.frames / fps) if fmt.frames > 1 else 0.0
    return np.stack([draw_frame(width, height, shape_center(index / fps, width=width, height=height, motion=motion,
                                                            size=size, speed=speed), size, shape, rgb, background)
                     for index in range(fmt.frames)])


def _video_stream(container, codec: str, fps: float, width: int, height: int, turns: int, rotation_as: str):
    stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    if codec == "libx264":
        stream.options = {"crf": "12", "preset": "veryfast"}
    elif codec == "mpeg4":
        stream.options = {"qscale": "2"}
    if turns and rotation_as == "matrix":
        stream.set_display_rotation(turns * 90)
    elif turns and rotation_as == "tag":
        stream.metadata["rotate"] = str((-turns * 90) % 360)  # the tag counts clockwise
    elif turns:
        raise ValueError(f"rotation_as must be 'matrix' or 'tag', got {rotation_as!r}")
    return stream


def write_audio_only(path: Path | str, seconds: float = 1.0, sample_rate: int = 44100) -> Path:
    """A file with one audio stream and no video (a tone); the codec follows the extension."""
    path = Path(path)
    codec = {".mkv": "mp2", ".mov": "pcm_s16le", ".wav": "pcm_s16le"}.get(path.suffix.lower(), "aac")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=sample_rate)
        stream.layout = "mono"
        chunk = 1024
        for index in range(max(1, int(seconds * sample_rate) // chunk)):
            t = (np.arange(chunk) + index * chunk) / sample_rate
            tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = sample_rate, index * chunk
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_image(
    path: Path | str,
    *,
    width: int = 64,
    height: int = 48,
    shape: str = "circle",
    color: Color | str = "red",
    center: tuple[float, float] | None = None,
    exif_orientation: int | None = None,
) -> Path:
    """A still picture of a shape (PNG/JPEG/... by extension). `exif_orientation` is written as is."""
    from PIL import Image

    path = Path(path)
    rgb = COLORS[color] if isinstance(color, str) else tuple(color)
    picture = draw_frame(
        width, height, center or (width / 2, height / 2), shape_size(width, height), shape, rgb
    )
    image = Image.fromarray(picture)
    path.parent.mkdir(parents=True, exist_ok=True)
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        image.save(path, exif=exif)
    else:
        image.save(path)
    return path


_DEMO_KINDS: Sequence[tuple[str, str, str]] = (
    ("right", "circle", "red"),
    ("down", "square", "blue"),
    ("right", "square", "green"),
    ("down", "circle", "yellow"),
)


def demo_caption(motion: str, shape: str, color: str) -> str:
    direction = {"right": "to the right", "left": "to the left", "down": "downwards", "up": "upwards"}
    return f"a {color} {shape} moving {direction.get(motion, 'in place')} on a dark background"


def write_demo_dataset(folder: Path | str, n: int = 8, **clip_format: Unpack[ClipFormatArgs]) -> list[Path]:
    """`n` captioned clips (`clip_000.mp4` + `clip_000.txt`, ...) of two motions: shapes moving right
    and shapes moving down, in alternating shapes and colours, all of one ClipFormat (its keywords as
    `write_clip` takes them). Returns the clip paths."""
    folder, fmt = Path(folder), ClipFormat(**clip_format)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(n):
        motion, shape, color = _DEMO_KINDS[index % len(_DEMO_KINDS)]
        clip = write_clip(
            folder / f"clip_{index:03d}.mp4",
            motion=motion,
            shape=shape,
            color=color,
            size=shape_size(fmt.width, fmt.height) + 2 * (index // len(_DEMO_KINDS)),  # repeats differ a little
            **clip_format,
        )
        clip.with_suffix(".txt").write_text(demo_caption(motion, shape, color) + "\n", encoding="utf-8")
        paths.append(clip)
    return paths
