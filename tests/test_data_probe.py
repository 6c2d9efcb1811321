"""Probing clips and images with PyAV / Pillow: facts, rotation, and the files that must be skipped."""

from __future__ import annotations

import av
import numpy as np
import pytest

from k5tune.data.probe import ProbeError, probe_image, probe_video
from k5tune.data.report import SkipReason
from k5tune.data.synthetic import write_audio_only, write_clip, write_image


@pytest.mark.parametrize(
    ("name", "codec", "fps", "frames", "width", "height"),
    [
        ("a.mp4", "libx264", 24, 48, 64, 48),
        ("b.mp4", "libx264", 30, 60, 96, 48),
        ("c.mov", "mpeg4", 24, 24, 48, 64),
        ("d.mkv", "libx264", 30, 15, 64, 64),
        ("e.webm", "libvpx-vp9", 24, 12, 64, 48),
    ],
)
def test_probe_reads_rate_frames_and_size(tmp_path, name, codec, fps, frames, width, height):
    path = write_clip(tmp_path / name, frames=frames, fps=fps, width=width, height=height, codec=codec)
    info = probe_video(path)
    assert info.fps == fps
    assert info.num_frames == frames
    assert info.duration == pytest.approx(frames / fps)
    assert (info.width, info.height, info.rotation) == (width, height, 0)


def test_probe_reads_an_ntsc_rate(tmp_path):
    info = probe_video(write_clip(tmp_path / "ntsc.mp4", frames=30, fps=30000 / 1001))
    assert float(info.fps) == pytest.approx(29.97, abs=1e-3)
    assert info.num_frames == 30


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_display_matrix_rotation_gives_display_size(tmp_path, rotation):
    path = write_clip(tmp_path / "r.mp4", frames=6, width=64, height=48, rotation=rotation)
    with av.open(str(path)) as container:  # the file really is stored turned
        stream = container.streams.video[0]
        coded = (stream.width, stream.height)
    assert coded == ((48, 64) if rotation != 180 else (64, 48))
    info = probe_video(path)
    assert (info.width, info.height, info.rotation) == (64, 48, rotation)


def test_phone_style_display_matrix(tmp_path):
    """A raw matrix as phones write for 'rotate 90 clockwise': coded landscape, shown portrait."""
    path = tmp_path / "phone.mov"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.set_display_matrix([0, 65536, 0, -65536, 0, 0, 0, 0, 1 << 30])
        for _ in range(4):
            frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    info = probe_video(path)
    assert info.rotation == 270  # counter-clockwise 270 == clockwise 90
    assert (info.width, info.height) == (48, 64)


def test_legacy_rotate_tag_is_read(tmp_path):
    path = write_clip(tmp_path / "t.mkv", frames=6, width=64, height=48, rotation=90, rotation_as="tag")
    with av.open(str(path)) as container:
        assert container.streams.video[0].metadata.get("ROTATE") == "270"  # clockwise in the tag
    info = probe_video(path)
    assert (info.width, info.height, info.rotation) == (64, 48, 90)


def test_corrupt_zero_byte_and_text_files_are_unreadable(tmp_path):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(1).integers(0, 256, 8192, dtype=np.uint8).tobytes())
    text = tmp_path / "text.mov"
    text.write_text("this is not a movie\n" * 50)
    empty = tmp_path / "empty.mp4"
    empty.touch()
    for path, reason in [
        (corrupt, SkipReason.UNREADABLE),
        (text, SkipReason.UNREADABLE),
        (empty, SkipReason.EMPTY_FILE),
    ]:
        with pytest.raises(ProbeError) as error:
            probe_video(path)
        assert error.value.reason == reason, path
        assert error.value.detail


def test_truncated_clip_does_not_crash(tmp_path):
    path = write_clip(tmp_path / "whole.mp4", frames=24)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(path.read_bytes()[:300])  # the header is cut: no usable index
    with pytest.raises(ProbeError) as error:
        probe_video(cut)
    assert error.value.reason == SkipReason.UNREADABLE


@pytest.mark.parametrize("name", ["voice.mp4", "voice.mkv", "voice.mov"])
def test_audio_only_files_have_no_video_stream(tmp_path, name):
    path = write_audio_only(tmp_path / name, seconds=0.3)
    with av.open(str(path)) as container:
        assert [s.type for s in container.streams] == ["audio"]
    with pytest.raises(ProbeError) as error:
        probe_video(path)
    assert error.value.reason == SkipReason.NO_VIDEO_STREAM
    assert "audio" in error.value.detail


def test_probe_image_size_and_exif_orientation(tmp_path):
    plain = probe_image(write_image(tmp_path / "plain.png", width=96, height=48))
    assert (plain.width, plain.height, plain.num_frames, plain.rotation) == (96, 48, 1, 0)
    turned = probe_image(write_image(tmp_path / "turned.jpg", width=96, height=48, exif_orientation=6))
    assert (turned.width, turned.height, turned.rotation) == (48, 96, 270)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(64)))
    with pytest.raises(ProbeError) as error:
        probe_image(broken)
    assert error.value.reason == SkipReason.UNREADABLE
