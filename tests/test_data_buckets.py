"""Bucket sizes, frame counts and batches that never mix buckets."""

from __future__ import annotations

import itertools
from collections import Counter
from fractions import Fraction

import pytest

from k5tune.config.frames import is_valid_frame_count
from k5tune.data.buckets import (
    batches_for_epoch,
    bucket_frames,
    bucket_size,
    resampled_frame_count,
    round_to_multiple,
    snap_aspect,
)
from k5tune.data.records import Bucket
from tests.data_fixtures import fake_record


def test_bucket_name_is_width_by_height_at_frames():
    assert Bucket(1920, 1080, 61).name == "1920x1080@61"
    assert str(Bucket(768, 512, 1)) == "768x512@1"


@pytest.mark.parametrize(
    ("size", "aspect"),
    [
        ((1920, 1080), (16, 9)),
        ((1080, 1920), (9, 16)),
        ((854, 480), (16, 9)),
        ((640, 480), (4, 3)),
        ((1000, 1010), (1, 1)),
        ((1280, 800), (16, 10)),
        ((2048, 858), (21, 9)),
        ((720, 1080), (2, 3)),
    ],
)
def test_snap_aspect_picks_the_nearest_common_aspect(size, aspect):
    assert snap_aspect(*size) == aspect


def test_similar_clips_share_a_bucket():
    sizes = [(1920, 1080), (1280, 720), (854, 480), (1900, 1060), (640, 362)]
    assert len({bucket_size(w, h, 512) for w, h in sizes}) == 1


@pytest.mark.parametrize(
    ("size", "resolution", "kind", "expected"),
    [
        ((200, 300), 512, "pixel", (512, 768)),  # 2:3: the shorter edge is 512
        ((1920, 1080), 720, "pixel", (1280, 720)),
        ((1080, 1920), 720, "pixel", (720, 1280)),
        ((640, 480), 512, "pixel", (688, 512)),  # 682.7 -> nearest multiple of 16
        ((500, 500), 512, "area", (512, 512)),
        ((1920, 1080), 1024, "pixel", (1824, 1024)),
    ],
)
def test_bucket_size(size, resolution, kind, expected):
    assert bucket_size(*size, resolution, kind) == expected


def test_area_resolution_keeps_the_pixel_count():
    for w, h in [(1920, 1080), (640, 480), (480, 640), (2048, 858)]:
        bw, bh = bucket_size(w, h, 512, "area")
        assert abs(bw * bh - 512 * 512) / (512 * 512) < 0.08
        assert bw / bh == pytest.approx(Fraction(*snap_aspect(w, h)), rel=0.05)


def test_every_bucket_side_is_a_positive_multiple_of_16():
    sizes = [(w, h) for w, h in itertools.product([2, 17, 64, 100, 333, 720, 1080, 1920, 4096], repeat=2)]
    for (w, h), resolution, kind in itertools.product(sizes, [8, 50, 256, 500, 512, 1000], ["pixel", "area"]):
        bw, bh = bucket_size(w, h, resolution, kind)
        assert bw >= 16 and bh >= 16 and bw % 16 == 0 and bh % 16 == 0, (w, h, resolution, kind)


def test_round_to_multiple_rounds_half_up_and_never_to_zero():
    assert round_to_multiple(1080) == 1088  # 67.5 x 16: half rounds up, not to even
    assert round_to_multiple(1079) == 1072
    assert round_to_multiple(3) == 16


@pytest.mark.parametrize(
    ("frames", "fps", "target", "expected"),
    [
        (48, 24, 24, 48),
        (60, 30, 24, 48),  # 2 s
        (61, 30, 24, 49),  # frame 48 shows t=2.0 s, inside the 2.033 s clip
        (75, 30, 24, 60),  # 2.5 s: t=2.5 s is past the end
        (76, 30, 24, 61),
        (300, Fraction(30000, 1001), 24, 241),
        (24, 12, 24, 48),  # upsampling repeats frames
    ],
)
def test_resampled_frame_count(frames, fps, target, expected):
    assert resampled_frame_count(frames, fps, target) == expected


def test_aspect_ratio_strategy_uses_num_frames():
    assert bucket_frames(200, num_frames=61, strategy="aspect_ratio") == 61
    with pytest.raises(ValueError):
        bucket_frames(60, num_frames=61, strategy="aspect_ratio")


def test_resolution_frames_examples():
    assert bucket_frames(100, num_frames=61, strategy="resolution_frames", frame_interval=4) == 97
    assert bucket_frames(100, num_frames=61, strategy="resolution_frames", frame_interval=8) == 93
    assert (
        bucket_frames(100, num_frames=61, strategy="resolution_frames", frame_interval=4, max_frames=80) == 77
    )
    assert bucket_frames(61, num_frames=61, strategy="resolution_frames", frame_interval=16) == 61


def test_resolution_frames_counts_are_valid_for_every_length():
    for num_frames, interval, available in itertools.product([1, 17, 33, 61], [4, 8, 12], range(1, 300)):
        if available < num_frames:
            continue
        frames = bucket_frames(
            available, num_frames=num_frames, strategy="resolution_frames", frame_interval=interval
        )
        assert is_valid_frame_count(frames)
        assert num_frames <= frames <= available
        assert (frames - num_frames) % interval == 0
        assert available - frames < interval  # the largest count on the grid


def _records():
    small, large, image = Bucket(64, 48, 17), Bucket(48, 64, 17), Bucket(64, 48, 1)
    records = [fake_record(f"a/{i}.mp4", small) for i in range(7)]
    records += [fake_record(f"b/{i}.mp4", large, repeats=2) for i in range(3)]
    records += [fake_record(f"c/{i}.png", image, media_type="image") for i in range(5)]
    return records


def test_batches_stay_in_one_bucket_and_honour_repeats():
    records = _records()
    batches = batches_for_epoch(records, batch_size=4, epoch=0, seed=0)
    for batch in batches:
        assert len({records[i].bucket for i in batch}) == 1
        assert 1 <= len(batch) <= 4
    seen = Counter(i for batch in batches for i in batch)
    assert seen == {i: 1 + records[i].repeats for i in range(len(records))}


def test_partial_batches_are_kept_unless_asked():
    records = _records()
    sizes = sorted(len(b) for b in batches_for_epoch(records, batch_size=4, epoch=0, seed=0))
    # 7 clips -> 4+3; 3 clips x 3 passes = 9 -> 4+4+1; 5 images -> 4+1
    assert sizes == [1, 1, 3, 4, 4, 4, 4]
    dropped = batches_for_epoch(records, batch_size=4, epoch=0, seed=0, drop_partial=True)
    assert sorted(len(b) for b in dropped) == [4, 4, 4, 4]


def test_a_pass_never_repeats_a_clip_within_its_batches():
    records = [fake_record(f"b/{i}.mp4", Bucket(64, 48, 17), repeats=3) for i in range(4)]
    for epoch in range(5):
        for batch in batches_for_epoch(records, batch_size=4, epoch=epoch, seed=1):
            assert len(set(batch)) == len(batch)


def test_batches_are_deterministic_and_change_with_epoch_and_seed():
    records = _records()
    first = batches_for_epoch(records, 2, epoch=0, seed=3)
    assert first == batches_for_epoch(records, 2, epoch=0, seed=3)
    assert first != batches_for_epoch(records, 2, epoch=1, seed=3)
    assert first != batches_for_epoch(records, 2, epoch=0, seed=4)


def test_batch_size_must_be_positive():
    with pytest.raises(ValueError):
        batches_for_epoch(_records(), 0, epoch=0, seed=0)


def test_epoch_must_not_be_negative():
    with pytest.raises(ValueError):
        batches_for_epoch(_records(), 2, epoch=-1, seed=0)
