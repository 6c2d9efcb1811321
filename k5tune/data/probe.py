"""Reading a media file's facts (frame rate, frame count, display size, rotation) without a full decode."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from k5tune.data.report import SkipReason


@dataclass(frozen=True)
class MediaInfo:
    fps: Fraction  # average frame rate (0 for images)
    num_frames: int
    width: int  # display size (after rotation)
    height: int
    rotation: int  # counter-clockwise degrees, one of 0/90/180/270

    @property
    def duration(self) -> float:
        return float(self.num_frames / self.fps) if self.fps else 0.0


class ProbeError(Exception):
    """The file cannot be used; `reason` is the report's code, `detail` a message for people."""

    def __init__(self, reason: SkipReason, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _describe(exc: Exception) -> str:
    """FFmpeg's own words without the path PyAV appends (the report already names the file)."""
    return getattr(exc, "strerror", None) or str(exc)


def normalise_rotation(degrees: float) -> int:
    """Snap to a quarter turn in 0..270: frames are only ever turned by multiples of 90 degrees."""
    return int(round(degrees / 90.0)) % 4 * 90


def display_size(coded_width: int, coded_height: int, rotation: int) -> tuple[int, int]:
    return (coded_height, coded_width) if rotation % 180 == 90 else (coded_width, coded_height)


def _rotation_tag(stream: av.video.stream.VideoStream) -> int:
    """The legacy `rotate` tag (clockwise degrees; Matroska writes it as ROTATE), as counter-clockwise."""
    for key, value in stream.metadata.items():
        if key.lower() == "rotate":
            try:
                return normalise_rotation(-float(value))
            except ValueError:
                return 0
    return 0


def pick_video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream | None:
    # Cover art in audio files is a one-picture "video" stream flagged attached_pic: not a clip.
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    return None


def probe_video(path: Path) -> MediaInfo:
    """Demux every packet (cheap: no decoding) to count frames; decode only the first frame.

    The first frame proves the clip decodes and carries the display matrix (rotation). A clip that is
    corrupt only further on passes the probe and fails later, in load_clip_frames, with a DatasetError.
    """
    if path.stat().st_size == 0:
        raise ProbeError(SkipReason.EMPTY_FILE, "the file is 0 bytes")
    try:
        container = av.open(str(path))
    except Exception as exc:  # PyAV raises many types (InvalidDataError, OSError, ...) for bad input
        raise ProbeError(SkipReason.UNREADABLE, f"cannot open as a video: {_describe(exc)}") from None
    with container:
        stream = pick_video_stream(container)
        if stream is None:
            kinds = ", ".join(s.type for s in container.streams) or "none"
            raise ProbeError(SkipReason.NO_VIDEO_STREAM, f"no video stream (streams: {kinds})")
        packets = 0
        first_frame = None
        try:
            for packet in container.demux(stream):
                if packet.size == 0:  # the end-of-stream marker, not a frame
                    continue
                packets += 1
                if first_frame is None:
                    frames = packet.decode()
                    first_frame = frames[0] if frames else None
            if first_frame is None and packets:
                flushed = stream.decode(None)  # decoders that hold frames back release them here
                first_frame = flushed[0] if flushed else None
        except Exception as exc:
            raise ProbeError(SkipReason.UNREADABLE, f"decoding failed: {_describe(exc)}") from None
        if packets == 0 or first_frame is None:
            raise ProbeError(SkipReason.UNREADABLE, "the video stream has no decodable frame")
        fps = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not fps or fps <= 0 or not math.isfinite(float(fps)):
            raise ProbeError(SkipReason.UNREADABLE, "the video stream has no frame rate")
        rotation = normalise_rotation(first_frame.rotation) or _rotation_tag(stream)
        width, height = display_size(first_frame.width, first_frame.height, rotation)
        return MediaInfo(fps=Fraction(fps), num_frames=packets, width=width, height=height, rotation=rotation)


# EXIF orientation -> counter-clockwise degrees of its rotation part (mirrors are applied at load time
# by PIL.ImageOps.exif_transpose; here only the display size and a rotation for the record matter).
_EXIF_ROTATION = {1: 0, 2: 0, 3: 180, 4: 180, 5: 90, 6: 270, 7: 270, 8: 90}


def probe_image(path: Path) -> MediaInfo:
    """Decode the image fully (truncated files only fail on load) and read its EXIF orientation."""
    from PIL import Image

    if path.stat().st_size == 0:
        raise ProbeError(SkipReason.EMPTY_FILE, "the file is 0 bytes")
    try:
        with Image.open(path) as image:
            image.load()
            orientation = image.getexif().get(0x0112, 1)
            width, height = image.size
    except Exception as exc:
        raise ProbeError(SkipReason.UNREADABLE, f"cannot read the image: {exc}") from None
    rotation = _EXIF_ROTATION.get(int(orientation), 0)
    swapped = int(orientation) in (5, 6, 7, 8)
    width, height = (height, width) if swapped else (width, height)
    return MediaInfo(fps=Fraction(0), num_frames=1, width=width, height=height, rotation=rotation)
