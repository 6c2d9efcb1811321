"""scan_backends on folders of good and bad files: records, skips with reasons, the report."""

from __future__ import annotations

import hashlib
import json

import pytest

from k5tune.config.datasets import TextEmbedsBackend
from k5tune.data.buckets import batches_for_epoch
from k5tune.data.frames import load_clip_frames
from k5tune.data.report import SkipReason
from k5tune.data.scan import scan_backends
from k5tune.data.synthetic import write_clip, write_demo_dataset
from k5tune.errors import DatasetError
from tests.data_fixtures import caption, image_backend, make_images, make_mixed_dataset, video_backend


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mixed")
    return folder, make_mixed_dataset(folder)


@pytest.fixture(scope="module")
def scanned(mixed):
    folder, _ = mixed
    calls = []
    records, report = scan_backends(
        [video_backend(folder, resolution=48)], 24.0, progress=lambda *args: calls.append(args)
    )
    return records, report, calls


def test_every_file_is_used_or_skipped_for_its_reason(mixed, scanned):
    folder, expected = mixed
    records, report, _ = scanned
    assert {r.relative_path for r in records} == {name for name, reason in expected.items() if reason is None}
    skipped = {item.path: item.reason for item in report.skipped}
    assert skipped == {str(folder / name): reason for name, reason in expected.items() if reason is not None}
    assert all(item.detail and item.backend_id == "clips" for item in report.skipped)
    assert report.found == len(expected)  # litter (notes.md, ._ files, hidden folders) is not counted
    assert report.used == len(records) == 8
    assert report.counts_by_reason == {str(r): 1 for r in expected.values() if r is not None}
    assert sum(report.buckets.values()) == 8


def test_records_are_sorted_and_complete(mixed, scanned):
    folder, _ = mixed
    records, _, _ = scanned
    keys = [r.key for r in records]
    assert keys == sorted(keys) and keys[0] == "clips/a_24fps.mp4"
    by_name = {r.relative_path: r for r in records}
    thirty = by_name["b_30fps.mp4"]
    assert thirty.captions == ("a red circle moving right", "a small red ball rolling")
    assert (thirty.fps, thirty.num_source_frames, thirty.duration) == (30.0, 60, 2.0)
    assert thirty.available_frames == 48 and thirty.target_fps == 24.0
    assert thirty.content_hash == hashlib.sha256((folder / "b_30fps.mp4").read_bytes()).hexdigest()
    assert thirty.path == folder / "b_30fps.mp4"
    assert by_name["c_wide.mp4"].available_frames == 48  # 24 frames at 12 fps = 2 s
    assert (by_name["g_rotated.mp4"].width, by_name["g_rotated.mp4"].height) == (48, 64)
    assert by_name["g_rotated.mp4"].rotation == 90
    assert by_name["sub/h_tagged.mkv"].rotation == 270
    assert by_name["sub/h_tagged.mkv"].key == "clips/sub/h_tagged.mkv"
    assert {r.bucket.name for r in records} == {"64x48@17", "96x48@17", "48x64@17"}
    for record in records:
        assert record.bucket.width % 16 == 0 and record.bucket.height % 16 == 0


def test_progress_is_reported_per_file(mixed, scanned):
    _, expected = mixed
    _, _, calls = scanned
    assert [done for done, _, _ in calls] == list(range(1, len(expected) + 1))
    assert {total for _, total, _ in calls} == {len(expected)}
    assert calls[0][2] == "a_24fps.mp4"


def test_every_used_clip_loads(scanned):
    records, _, _ = scanned
    for record in records:
        frames = load_clip_frames(record)
        assert frames.shape == (3, 17, record.bucket.height, record.bucket.width)
        assert -1.0 <= frames.min() and frames.max() <= 1.0


def test_report_text_and_json(scanned, tmp_path):
    _, report, _ = scanned
    text = report.format()
    for needle in [
        "14 file(s) found, 8 used, 6 skipped",
        "64x48@17",
        "too_short",
        "x_corrupt.mp4",
        "no_video_stream",
        "missing_caption",
    ]:
        assert needle in text
    target = report.write_json(tmp_path / "reports" / "dataset.json")
    data = json.loads(target.read_text())
    assert data["used"] == 8 and data["found"] == 14
    assert data["counts_by_reason"]["unreadable"] == 1
    # (every reason a scan can find; nonfinite_latents is found later, by the cache stage)
    assert {item["reason"] for item in data["skipped"]} == {str(r) for r in SkipReason} - {"too_long", "nonfinite_latents"}
    assert [p.name for p in target.parent.iterdir()] == ["dataset.json"]  # no temp file left behind
    report.write_json(target)  # overwriting works too
    assert json.loads(target.read_text()) == data


def test_frame_limits_and_per_backend_frame_rate(tmp_path):
    for seconds in (1, 2, 3):
        caption(write_clip(tmp_path / f"clip_{seconds}s.mp4", frames=24 * seconds, fps=24), "a shape")
    backend = video_backend(tmp_path, resolution=48, video={"num_frames": 25, "max_frames": 60})
    records, report = scan_backends([backend], 24.0)
    assert [r.relative_path for r in records] == ["clip_2s.mp4"]
    assert {item.path.split("/")[-1]: item.reason for item in report.skipped} == {
        "clip_1s.mp4": SkipReason.TOO_SHORT,
        "clip_3s.mp4": SkipReason.TOO_LONG,
    }
    assert "needs at least 25" in report.format()
    # at video.frame_rate 12 the 1 s clip has 12 frames, 3 s has 36: min_frames decides
    slow = video_backend(
        tmp_path, resolution=48, video={"num_frames": 13, "min_frames": 20, "frame_rate": 12}
    )
    records, report = scan_backends([slow], 24.0)
    assert [(r.relative_path, r.available_frames, r.target_fps) for r in records] == [
        ("clip_2s.mp4", 24, 12.0),
        ("clip_3s.mp4", 36, 12.0),
    ]
    assert report.counts_by_reason == {"too_short": 1}


def test_resolution_frames_buckets_follow_clip_length(tmp_path):
    for seconds, fps in [(2, 24), (2, 30), (3, 24)]:
        caption(write_clip(tmp_path / f"c_{seconds}s_{fps}.mp4", frames=seconds * fps, fps=fps), "a shape")
    backend = video_backend(
        tmp_path,
        resolution=48,
        video={"num_frames": 17, "bucket_strategy": "resolution_frames", "frame_interval": 8},
    )
    records, report = scan_backends([backend], 24.0)
    assert [r.bucket.name for r in records] == ["64x48@41", "64x48@41", "64x48@65"]
    assert report.buckets == {"64x48@41": 2, "64x48@65": 1}
    longest = load_clip_frames(records[2])
    assert longest.shape == (3, 65, 48, 64)


def test_caption_strategies(tmp_path):
    write_clip(tmp_path / "red_ball-rolling.mp4", frames=24)
    by_name, _ = scan_backends([video_backend(tmp_path, caption_strategy="filename", resolution=48)], 24.0)
    assert by_name[0].captions == ("red ball rolling",)
    prompt = video_backend(
        tmp_path, caption_strategy="instanceprompt", instance_prompt="sks motion", resolution=48
    )
    by_prompt, _ = scan_backends([prompt], 24.0)
    assert by_prompt[0].captions == ("sks motion",)
    with pytest.raises(DatasetError) as error:
        scan_backends([video_backend(tmp_path)], 24.0)  # textfile: no .txt, so nothing is left
    assert "missing_caption" in str(error.value) and "red_ball-rolling.mp4" in str(error.value)


def test_images_mix_with_videos_without_sharing_batches(tmp_path):
    make_images(tmp_path / "stills")
    write_demo_dataset(tmp_path / "clips", n=4, frames=24)
    backends = [
        video_backend(tmp_path / "clips", resolution=48, repeats=1),
        image_backend(tmp_path / "stills", resolution=48),
        TextEmbedsBackend(id="text", default=True),  # ignored
        video_backend(tmp_path / "nowhere", id="off", disabled=True),  # ignored, though its folder is missing
    ]
    records, report = scan_backends(backends, 24.0)
    images = [r for r in records if r.media_type == "image"]
    assert sorted(r.relative_path for r in images) == ["square.JPG", "turned.jpg", "wide.png"]
    assert all(r.bucket.frames == 1 and r.available_frames == 1 for r in images)
    assert report.counts_by_reason == {"unreadable": 1}
    assert [(b.id, b.found, b.used) for b in report.backends] == [("clips", 4, 4), ("stills", 4, 3)]
    for epoch in range(3):
        batches = batches_for_epoch(records, 2, epoch, seed=0)
        assert all(len({records[i].bucket for i in batch}) == 1 for batch in batches)
        assert sum(len(b) for b in batches) == 4 * 2 + 3


def test_demo_dataset_is_usable_and_has_two_motions(tmp_path):
    paths = write_demo_dataset(tmp_path, n=8)
    assert len(paths) == 8 and all(p.with_suffix(".txt").is_file() for p in paths)
    records, report = scan_backends([video_backend(tmp_path, resolution=48)], 24.0)
    assert report.used == 8 and not report.skipped
    captions = " ".join(r.captions[0] for r in records)
    assert "to the right" in captions and "downwards" in captions
    assert len({r.content_hash for r in records}) == 8


def test_missing_folder_and_no_clips_raise_dataset_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        scan_backends([video_backend(tmp_path / "missing")], 24.0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError) as error:
        scan_backends([video_backend(tmp_path / "empty")], 24.0)
    assert "no usable clip" in str(error.value) and "no .mkv/.mov/.mp4/.webm files" in str(error.value)
    with pytest.raises(DatasetError, match="no enabled video or image backend"):
        scan_backends([TextEmbedsBackend(id="text")], 24.0)


def test_scan_is_repeatable_and_signatures_track_what_changes_pixels(mixed, scanned):
    folder, _ = mixed
    records, _, _ = scanned
    again, _ = scan_backends([video_backend(folder, resolution=48)], 24.0)
    assert again == records
    assert [r.sample_signature() for r in again] == [r.sample_signature() for r in records]
    other_crop, _ = scan_backends([video_backend(folder, resolution=48, crop_style="random")], 24.0)
    other_size, _ = scan_backends([video_backend(folder, resolution=64)], 24.0)
    recaptioned, _ = scan_backends([video_backend(folder, resolution=48, caption_strategy="filename")], 24.0)
    base = {r.key: r.sample_signature() for r in records}
    assert all(base[r.key] != r.sample_signature() for r in other_crop + other_size)
    assert all(base[r.key] == r.sample_signature() for r in recaptioned if r.key in base)


def test_a_probe_surprise_skips_one_file(tmp_path, monkeypatch):
    import k5tune.data.scan as scan_module

    write_demo_dataset(tmp_path, n=2, frames=24)
    real_probe = scan_module.probe_video

    def flaky(path):
        if path.name == "clip_000.mp4":
            raise RuntimeError("decoder exploded")
        return real_probe(path)

    monkeypatch.setattr(scan_module, "probe_video", flaky)
    records, report = scan_backends([video_backend(tmp_path, resolution=48)], 24.0)
    assert [r.relative_path for r in records] == ["clip_001.mp4"]
    assert (
        report.skipped[0].reason == SkipReason.UNREADABLE and "decoder exploded" in report.skipped[0].detail
    )


def test_long_skip_lists_are_shortened_in_text_only(tmp_path):
    for index in range(7):
        (tmp_path / f"empty_{index}.mp4").touch()
    caption(write_clip(tmp_path / "ok.mp4", frames=24), "a shape")
    _, report = scan_backends([video_backend(tmp_path, resolution=48)], 24.0)
    text = report.format(max_skipped_rows=3)
    assert "empty_2.mp4" in text and "empty_3.mp4" not in text
    assert "... and 4 more skipped file(s)" in text
    assert len(report.to_dict()["skipped"]) == 7
