"""Decoding records into (3, F, H, W) samples: resampling by time, rotation, resize, crop, randomness."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from k5tune.data.frames import cover_size, load_clip_frames, match_frames, resize, target_times
from k5tune.data.scan import scan_backends
from k5tune.data.synthetic import write_clip, write_image
from k5tune.errors import DatasetError
from tests.data_fixtures import caption, image_backend, shape_centroid, video_backend


def _record(folder, frame_rate=24.0, **backend_options):
    records, _ = scan_backends([video_backend(folder, **backend_options)], frame_rate)
    assert len(records) == 1
    return records[0]


def _clip_record(tmp_path, name, frame_rate=24.0, backend=None, **clip):
    folder = tmp_path / name.replace(".", "_")
    caption(write_clip(folder / name, **clip), "a shape")
    return _record(folder, frame_rate, **(backend or {}))


# --- pure pieces -------------------------------------------------------------------------------------


def test_match_frames_picks_the_nearest_frame_in_time():
    source = [(i / 30, i) for i in range(60)]  # 30 fps
    picked = [item for _, item in match_frames(iter(source), target_times(0, 12, 24))]
    # 24 fps output frame k shows k/24 s: the nearest 30 fps frame is round(k * 30/24), ties earlier
    assert picked == [0, 1, 2, 4, 5, 6, 7, 9, 10, 11, 12, 14]
    upsampled = [item for _, item in match_frames(iter(source[:3]), target_times(0, 6, 60))]
    assert upsampled == [0, 0, 1, 1, 2, 2]  # ties (t = 1/60 between 0 and 1/30) go to the earlier frame


def test_match_frames_is_lazy_and_holds_the_last_frame():
    pulled = []

    def source():
        for i in range(1000):
            pulled.append(i)
            yield i / 24, i

    picked = [item for _, item in match_frames(source(), target_times(5, 3, 24))]
    assert picked == [5, 6, 7]
    assert len(pulled) <= 9  # stopped right after the last needed frame, not at the end of the clip
    short = [item for _, item in match_frames(iter([(0.0, "a"), (1 / 24, "b")]), target_times(0, 4, 24))]
    assert short == ["a", "b", "b", "b"]


def test_cover_size_covers_the_bucket_with_the_clip_aspect():
    assert cover_size(640, 480, 688, 512) == (688, 516)
    assert cover_size(1920, 1080, 512, 512) == (910, 512)
    assert cover_size(64, 56, 64, 48) == (64, 56)


def test_resize_downscale_is_antialiased():
    lines = torch.zeros(1, 3, 8, 64)
    lines[..., ::8] = 255.0  # one bright column in every 8: averaging gives 255/8, point sampling 0
    small = resize(lines, 8, 1)
    assert small.shape == (1, 3, 1, 8)
    assert torch.allclose(small[..., 1:-1], torch.full_like(small[..., 1:-1], 255 / 8), atol=3.0)


def test_resize_upscale_stays_in_range():
    checker = (torch.arange(64).reshape(8, 8) % 2 * 255.0).expand(1, 3, 8, 8)
    big = resize(checker, 32, 32)
    assert big.shape == (1, 3, 32, 32)
    assert big.min() >= 0.0 and big.max() <= 255.0


# --- whole clips --------------------------------------------------------------------------------------


def test_sample_shape_dtype_and_range(tmp_path):
    record = _clip_record(tmp_path, "clip.mp4", frames=48, width=64, height=48, backend={"resolution": 48})
    frames = load_clip_frames(record)
    assert record.bucket.name == "64x48@17"
    assert frames.shape == (3, 17, 48, 64)
    assert frames.dtype == torch.float32
    assert frames.min() >= -1.0 and frames.max() <= 1.0
    assert frames.min() < -0.7 and frames.max() > 0.6  # dark background, bright shape: not washed out


def test_24_and_30_fps_clips_show_the_same_motion(tmp_path):
    """A shape moving at 56 px/s, written at 24 and at 30 fps: resampled to 24 fps, frame k of both
    shows the shape where it is at k/24 s. Taking frames by index instead would move it 25% slower."""
    clip = dict(width=128, height=64, motion="right", speed=56.0, size=16)
    backend = {"resolution": 64, "video": {"num_frames": 45}}
    at_24 = _clip_record(tmp_path, "slow.mp4", frames=48, fps=24, backend=backend, **clip)
    at_30 = _clip_record(tmp_path, "fast.mp4", frames=60, fps=30, backend=backend, **clip)
    assert at_24.bucket == at_30.bucket
    assert at_24.available_frames == at_30.available_frames == 48
    x_24 = [shape_centroid(frame)[0] for frame in load_clip_frames(at_24).unbind(1)]
    x_30 = [shape_centroid(frame)[0] for frame in load_clip_frames(at_30).unbind(1)]
    for k, (a, b) in enumerate(zip(x_24, x_30, strict=True)):
        expected = 8 + 56 * k / 24
        assert a == pytest.approx(expected, abs=1.5), k
        assert b == pytest.approx(expected, abs=1.5 + 56 / 30 / 2), k  # nearest 30 fps frame: <= 1/60 s off
    by_index = [
        shape_centroid(frame)[0]
        for frame in load_clip_frames(dataclasses.replace(at_30, target_fps=30.0)).unbind(1)
    ]
    assert abs(by_index[-1] - x_24[-1]) > 15  # the control: no resampling really differs


def test_upsampled_clip_repeats_frames(tmp_path):
    record = _clip_record(
        tmp_path, "twelve.mp4", frames=12, fps=12, backend={"resolution": 48, "video": {"num_frames": 9}}
    )
    assert record.available_frames == 24
    frames = load_clip_frames(record)
    assert torch.equal(frames[:, 0], frames[:, 1]) and torch.equal(frames[:, 2], frames[:, 3])
    assert not torch.equal(frames[:, 1], frames[:, 2])


@pytest.mark.parametrize(
    ("name", "rotation", "rotation_as"),
    [
        ("m90.mp4", 90, "matrix"),
        ("m270.mov", 270, "matrix"),
        ("m180.mp4", 180, "matrix"),
        ("t90.mkv", 90, "tag"),
    ],
)
def test_rotated_clips_are_shown_upright(tmp_path, name, rotation, rotation_as):
    options = dict(frames=24, width=64, height=48, motion="right", backend={"resolution": 48})
    upright = _clip_record(tmp_path, "upright.mp4", **options)
    turned = _clip_record(tmp_path, name, rotation=rotation, rotation_as=rotation_as, **options)
    assert (turned.width, turned.height, turned.rotation) == (64, 48, rotation)
    assert turned.bucket == upright.bucket
    a, b = load_clip_frames(upright), load_clip_frames(turned)
    assert (a - b).abs().mean() < 0.05
    xs = [shape_centroid(frame)[0] for frame in b.unbind(1)]
    ys = [shape_centroid(frame)[1] for frame in b.unbind(1)]
    assert xs[-1] - xs[0] > 20 and max(ys) - min(ys) < 2  # still moving right, not up or down


def test_random_start_depends_on_the_generator_only(tmp_path):
    record = _clip_record(
        tmp_path,
        "long.mp4",
        frames=72,
        fps=24,
        width=128,
        height=64,
        speed=40.0,
        backend={"resolution": 64, "video": {"num_frames": 9, "random_start": True}},
    )

    def first_x(seed):
        frames = load_clip_frames(record, torch.Generator().manual_seed(seed))
        return shape_centroid(frames[:, 0])[0]

    starts = {round(first_x(seed)) for seed in range(6)}
    assert len(starts) >= 3
    assert first_x(11) == first_x(11)
    assert torch.equal(load_clip_frames(record), load_clip_frames(record))  # no generator: seeded by key
    fixed = dataclasses.replace(record, random_start=False)
    assert shape_centroid(load_clip_frames(fixed, torch.Generator().manual_seed(5))[:, 0])[0] < 12


def test_random_crop_varies_with_the_seed_and_center_crop_does_not(tmp_path):
    # 64x56 snaps to 5:4 -> bucket 64x48; the frame covers it at 64x56, so 8 rows are cropped
    options = dict(frames=12, width=64, height=56, motion="down")
    random_crop = _clip_record(
        tmp_path,
        "r.mp4",
        backend={"resolution": 48, "crop_style": "random", "video": {"num_frames": 5}},
        **options,
    )
    center = _clip_record(
        tmp_path, "c.mp4", backend={"resolution": 48, "video": {"num_frames": 5}}, **options
    )
    assert random_crop.bucket.name == "64x48@5"
    outputs = [load_clip_frames(random_crop, torch.Generator().manual_seed(s)) for s in range(8)]
    assert len({tuple(o[0, 0, :, 32].tolist()) for o in outputs}) >= 3
    again = load_clip_frames(random_crop, torch.Generator().manual_seed(3))
    assert torch.equal(again, outputs[3])
    centers = [load_clip_frames(center, torch.Generator().manual_seed(s)) for s in range(3)]
    assert torch.equal(centers[0], centers[1]) and torch.equal(centers[1], centers[2])


def test_images_are_one_frame_samples(tmp_path):
    write_image(tmp_path / "wide.png", width=96, height=48)
    write_image(tmp_path / "turned.jpg", width=64, height=48, exif_orientation=6, center=(48, 24))
    for name in ("wide.png", "turned.jpg"):
        caption(tmp_path / name, "a red circle")
    records, _ = scan_backends([image_backend(tmp_path, resolution=48)], 24.0)
    by_name = {r.path.name: r for r in records}
    wide = load_clip_frames(by_name["wide.png"])
    assert by_name["wide.png"].bucket.name == "96x48@1" and wide.shape == (3, 1, 48, 96)
    assert shape_centroid(wide[:, 0]) == pytest.approx((48, 24), abs=1)
    turned = by_name["turned.jpg"]
    assert (turned.width, turned.height) == (48, 64) and turned.bucket.name == "48x64@1"
    pixels = load_clip_frames(turned)
    assert pixels.shape == (3, 1, 64, 48)
    # orientation 6 = turn 90 degrees clockwise to show: the circle right of centre ends up below it
    x, y = shape_centroid(pixels[:, 0])
    assert x == pytest.approx(24, abs=2) and y > 40


def test_undecodable_file_raises_a_dataset_error(tmp_path):
    record = _clip_record(tmp_path, "clip.mp4", frames=24, backend={"resolution": 48})
    record.path.write_bytes(b"\x00" * 100)  # broken after the scan
    with pytest.raises(DatasetError, match="clip.mp4"):
        load_clip_frames(record)
