"""What the scan found, used and skipped (and why), as a text table and as JSON."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path

from k5tune.atomic import atomic_write_json


class SkipReason(StrEnum):
    """Why a file was not used. The values are stable codes (they appear in the JSON report)."""

    EMPTY_FILE = "empty_file"
    UNREADABLE = "unreadable"
    NO_VIDEO_STREAM = "no_video_stream"
    TOO_SHORT = "too_short"
    TOO_LONG = "too_long"
    MISSING_CAPTION = "missing_caption"
    EMPTY_CAPTION = "empty_caption"
    NONFINITE_LATENTS = "nonfinite_latents"


REASON_HINTS: dict[SkipReason, str] = {
    SkipReason.EMPTY_FILE: "the file is 0 bytes (an interrupted copy?)",
    SkipReason.UNREADABLE: "the file could not be opened or decoded",
    SkipReason.NO_VIDEO_STREAM: "the file has no video stream (audio only?)",
    SkipReason.TOO_SHORT: "fewer frames than video.min_frames after resampling to the frame rate",
    SkipReason.TOO_LONG: "more frames than video.max_frames after resampling to the frame rate",
    SkipReason.MISSING_CAPTION: "no same-named .txt caption beside the file",
    SkipReason.EMPTY_CAPTION: "the .txt caption has no text",
    SkipReason.NONFINITE_LATENTS: "the VAE encoded this clip to NaN/inf values (not trained on; check the file)",
}


@dataclass
class SkippedClip:
    path: str
    reason: SkipReason
    detail: str
    backend_id: str = ""


@dataclass
class BackendSummary:
    id: str
    folder: str
    dataset_type: str
    found: int = 0
    used: int = 0


@dataclass
class DatasetReport:
    """Counts and reasons for one scan of all media backends."""

    found: int = 0
    used: int = 0
    skipped: list[SkippedClip] = field(default_factory=list)
    buckets: dict[str, int] = field(default_factory=dict)  # bucket name -> clips (repeats not counted)
    backends: list[BackendSummary] = field(default_factory=list)
    upscaled: int = 0  # used clips smaller than their bucket on some side (they are enlarged)
    long_captions: list[dict] = field(default_factory=list)  # clips whose caption is cut at caption_max_tokens
    notes: list[str] = field(default_factory=list)

    @property
    def counts_by_reason(self) -> dict[str, int]:
        counts = Counter(str(item.reason) for item in self.skipped)
        return dict(sorted(counts.items()))

    def add_skip(self, path: Path | str, reason: SkipReason, detail: str, backend_id: str = "") -> None:
        self.skipped.append(SkippedClip(str(path), SkipReason(reason), detail, backend_id))

    def to_dict(self) -> dict:
        data = asdict(self)
        data["skipped"] = [{**asdict(item), "reason": str(item.reason)} for item in self.skipped]
        data["counts_by_reason"] = self.counts_by_reason
        return data

    def format(self, max_skipped_rows: int = 50) -> str:
        """A plain-text report for the terminal and for error messages (the JSON lists every skip)."""
        lines = [f"Dataset: {self.found} file(s) found, {self.used} used, {len(self.skipped)} skipped"]
        if self.backends:
            lines.append("")
            lines += _table(
                ["backend", "type", "found", "used", "skipped", "folder"],
                [
                    [b.id, b.dataset_type, str(b.found), str(b.used), str(b.found - b.used), b.folder]
                    for b in self.backends
                ],
            )
        if self.buckets:
            lines.append("")
            lines += _table(
                ["bucket (WxH@frames)", "clips"], [[name, str(n)] for name, n in self.buckets.items()]
            )
        if self.skipped:
            lines.append("")
            lines += _table(
                ["skip reason", "count", "meaning"],
                [[code, str(n), REASON_HINTS[SkipReason(code)]] for code, n in self.counts_by_reason.items()],
            )
            lines.append("")
            shown = self.skipped[:max_skipped_rows]
            lines += _table(
                ["skipped file", "reason", "detail"],
                [[item.path, str(item.reason), item.detail] for item in shown],
            )
            if len(self.skipped) > len(shown):
                lines.append(
                    f"... and {len(self.skipped) - len(shown)} more skipped file(s); the JSON report lists all"
                )
        if self.upscaled:
            lines.append("")
            lines.append(f"Note: {self.upscaled} clip(s) are smaller than their bucket and will be upscaled.")
        for note in self.notes:
            lines.append(f"Note: {note}")
        return "\n".join(lines)

    def write_json(self, path: Path | str) -> Path:
        """Write the report as JSON atomically: a temp file in the same folder, then os.replace."""
        return atomic_write_json(path, self.to_dict())


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [
        max(len(header[i]), *(len(row[i]) for row in rows)) if rows else len(header[i])
        for i in range(len(header))
    ]

    def line(cells: list[str]) -> str:
        return "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(cells)).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)]
