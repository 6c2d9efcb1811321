"""Finding media files in a backend's folder, and their captions."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path

from k5tune.data.report import SkipReason

VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".mkv", ".webm"})
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})


def media_extensions(dataset_type: str) -> frozenset[str]:
    if dataset_type == "video":
        return VIDEO_EXTENSIONS
    if dataset_type == "image":
        return IMAGE_EXTENSIONS
    raise ValueError(f"dataset_type {dataset_type!r} holds no media files")


def discover_media(folder: Path, dataset_type: str) -> list[Path]:
    """Media files under `folder`, recursively, sorted by relative path (so every run sees one order).

    Extensions match case-insensitively. Hidden files and folders (a leading dot) are left out: they are
    editor or OS litter such as macOS `._clip.mp4` resource forks, which look like clips but are not.
    Symlinked folders are not followed (they can loop); symlinked files are used.
    """
    extensions = media_extensions(dataset_type)
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if not name.startswith(".") and Path(name).suffix.lower() in extensions:
                found.append(Path(root) / name)
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


class CaptionProblem(Exception):
    """A file's caption is missing or empty."""

    def __init__(self, reason: SkipReason, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def caption_file_for(media: Path) -> Path | None:
    """The `.txt` beside `media` with the same stem; an exact `.txt` first, then `.TXT` etc."""
    exact = media.with_suffix(".txt")
    if exact.is_file():
        return exact
    try:
        for sibling in sorted(media.parent.iterdir()):
            if sibling.stem == media.stem and sibling.suffix.lower() == ".txt" and sibling.is_file():
                return sibling
    except OSError:
        return None
    return None


def read_textfile_captions(media: Path) -> list[str]:
    """Non-empty lines of the caption file; several lines are several captions for one clip."""
    caption_file = caption_file_for(media)
    if caption_file is None:
        raise CaptionProblem(
            SkipReason.MISSING_CAPTION, f"no caption file {media.with_suffix('.txt').name} beside the clip"
        )
    try:
        # utf-8-sig drops the byte-order mark Windows editors add; bad bytes must not lose the clip.
        text = caption_file.read_text(encoding="utf-8-sig", errors="replace")
    except OSError as exc:
        raise CaptionProblem(SkipReason.MISSING_CAPTION, f"cannot read {caption_file.name}: {exc}") from None
    captions = [" ".join(line.split()) for line in text.splitlines()]
    captions = [c for c in captions if c]
    if not captions:
        raise CaptionProblem(SkipReason.EMPTY_CAPTION, f"{caption_file.name} is empty")
    return captions


def filename_caption(media: Path) -> str:
    """The file stem with `_` and `-` as spaces: `red_ball-rolling.mp4` -> `red ball rolling`."""
    return " ".join(re.sub(r"[_\-]+", " ", media.stem).split())


def captions_for(media: Path, strategy: str, instance_prompt: str | None) -> list[str]:
    """The captions of one file under a backend's caption_strategy (raises CaptionProblem)."""
    if strategy == "textfile":
        return read_textfile_captions(media)
    if strategy == "filename":
        caption = filename_caption(media)
        if not caption:
            raise CaptionProblem(SkipReason.EMPTY_CAPTION, "the file name gives an empty caption")
        return [caption]
    if strategy == "instanceprompt":
        if not instance_prompt or not instance_prompt.strip():
            raise CaptionProblem(SkipReason.EMPTY_CAPTION, "instance_prompt is empty")
        return [instance_prompt.strip()]
    raise ValueError(f"unknown caption_strategy {strategy!r}")


def stable_int(*parts: object) -> int:
    """A 64-bit integer from the parts, equal across runs and machines (unlike hash())."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def pick_caption(captions: Sequence[str], epoch: int, seed: int, clip_key: str) -> str:
    """The caption a clip uses in `epoch`: drawn from its captions, the same for the same arguments."""
    if not captions:
        raise ValueError(f"clip {clip_key!r} has no captions")
    if len(captions) == 1:
        return captions[0]
    return captions[stable_int("caption", seed, epoch, clip_key) % len(captions)]
