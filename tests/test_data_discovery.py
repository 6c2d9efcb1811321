"""Discovery of media files and caption strategies."""

from __future__ import annotations

from collections import Counter

import pytest

from k5tune.data.discovery import (
    CaptionProblem,
    captions_for,
    discover_media,
    filename_caption,
    pick_caption,
    read_textfile_captions,
)
from k5tune.data.report import SkipReason


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_discovery_is_recursive_sorted_and_case_insensitive(tmp_path):
    for name in [
        "b.mp4",
        "a.MOV",
        "z/c.mkv",
        "z/y/d.WebM",
        "e.avi",
        "f.txt",
        "g.png",
        ".h.mp4",
        ".hid/i.mp4",
        "k.Mp4",
    ]:
        _touch(tmp_path / name)
    found = [p.relative_to(tmp_path).as_posix() for p in discover_media(tmp_path, "video")]
    assert found == ["a.MOV", "b.mp4", "k.Mp4", "z/c.mkv", "z/y/d.WebM"]
    # the same answer on a second call (no dependence on directory listing order)
    assert discover_media(tmp_path, "video") == discover_media(tmp_path, "video")


def test_image_discovery_takes_only_images(tmp_path):
    for name in ["a.png", "b.JPG", "c.jpeg", "d.webp", "e.bmp", "f.gif", "g.mp4", "sub/h.PNG"]:
        _touch(tmp_path / name)
    found = [p.relative_to(tmp_path).as_posix() for p in discover_media(tmp_path, "image")]
    assert found == ["a.png", "b.JPG", "c.jpeg", "d.webp", "e.bmp", "sub/h.PNG"]


def test_textfile_gives_one_caption_per_non_empty_line(tmp_path):
    clip = _touch(tmp_path / "clip.mp4")
    (tmp_path / "clip.txt").write_text("\ufefffirst  caption \n\n   \n second\tcaption\n", encoding="utf-8")
    assert read_textfile_captions(clip) == ["first caption", "second caption"]


def test_textfile_finds_an_upper_case_txt(tmp_path):
    clip = _touch(tmp_path / "clip.mp4")
    (tmp_path / "clip.TXT").write_text("shouted caption")
    assert captions_for(clip, "textfile", None) == ["shouted caption"]


def test_missing_and_empty_captions_have_their_own_reasons(tmp_path):
    clip = _touch(tmp_path / "clip.mp4")
    with pytest.raises(CaptionProblem) as missing:
        captions_for(clip, "textfile", None)
    assert missing.value.reason == SkipReason.MISSING_CAPTION
    assert "clip.txt" in missing.value.detail
    (tmp_path / "clip.txt").write_text(" \n \n")
    with pytest.raises(CaptionProblem) as empty:
        captions_for(clip, "textfile", None)
    assert empty.value.reason == SkipReason.EMPTY_CAPTION


def test_filename_and_instanceprompt_strategies(tmp_path):
    clip = _touch(tmp_path / "red_ball--rolling_fast.mp4")
    assert filename_caption(clip) == "red ball rolling fast"
    assert captions_for(clip, "filename", None) == ["red ball rolling fast"]
    assert captions_for(clip, "instanceprompt", "  sks dance ") == ["sks dance"]
    with pytest.raises(CaptionProblem):
        captions_for(clip, "instanceprompt", "   ")


def test_pick_caption_is_deterministic_and_draws_every_caption():
    captions = ["one", "two", "three"]
    picks = [pick_caption(captions, epoch, seed=7, clip_key="set/clip.mp4") for epoch in range(60)]
    assert picks == [pick_caption(captions, epoch, seed=7, clip_key="set/clip.mp4") for epoch in range(60)]
    counts = Counter(picks)
    assert set(counts) == set(captions)
    assert min(counts.values()) >= 8  # roughly even, not stuck on one
    other_seed = [pick_caption(captions, epoch, seed=8, clip_key="set/clip.mp4") for epoch in range(60)]
    other_clip = [pick_caption(captions, epoch, seed=7, clip_key="set/other.mp4") for epoch in range(60)]
    assert other_seed != picks and other_clip != picks


def test_pick_caption_single_and_empty():
    assert pick_caption(["only"], epoch=3, seed=1, clip_key="k") == "only"
    with pytest.raises(ValueError):
        pick_caption([], epoch=0, seed=0, clip_key="k")
