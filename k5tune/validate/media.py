"""Write videos with PyAV (diffusers' export_to_video would need imageio or opencv)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

from k5tune.atomic import atomic_target


def write_mp4(frames: np.ndarray, path: str | Path, fps: float, crf: int = 18) -> Path:
    """frames: (F, H, W, 3) floats in [0, 1] or uint8. H.264 (yuv420p) when available, else MPEG-4.

    Written to a temporary file and renamed, so a half-written video never appears under its name.
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if frames.dtype != np.uint8:
        frames = (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    height, width = frames.shape[1:3]
    rate = Fraction(fps).limit_denominator(1001)
    with atomic_target(path, suffix=".mp4") as temporary, av.open(str(temporary), mode="w", format="mp4") as container:
        try:
            stream = container.add_stream("libx264", rate=rate)
            stream.options = {"crf": str(crf), "preset": "medium"}
        except (av.FFmpegError, ValueError):
            stream = container.add_stream("mpeg4", rate=rate)
            stream.bit_rate = 8_000_000
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def read_video_info(path: str | Path) -> dict:
    """Frame count, size and rate of a video, by decoding it (what a player would see)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f for f in container.decode(stream)]
        return {
            "frames": len(frames),
            "width": frames[0].width if frames else stream.width,
            "height": frames[0].height if frames else stream.height,
            "fps": float(stream.average_rate or 0),
        }
