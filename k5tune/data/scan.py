"""discover -> captions -> probe -> filter -> bucket, for every media backend; with a report."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from k5tune.config.datasets import MEDIA_TYPES, ImageBackend, TextEmbedsBackend, VideoBackend
from k5tune.config.frames import SPATIAL_MULTIPLE
from k5tune.data.buckets import bucket_frames, make_bucket, resampled_frame_count
from k5tune.data.discovery import CaptionProblem, captions_for, discover_media, media_extensions
from k5tune.data.probe import MediaInfo, ProbeError, probe_image, probe_video
from k5tune.data.records import ClipRecord, file_sha256
from k5tune.data.report import BackendSummary, DatasetReport, SkipReason
from k5tune.errors import DatasetError

Progress = Callable[[int, int, str], None]


def scan_backends(
    backends: Sequence[VideoBackend | ImageBackend | TextEmbedsBackend],
    frame_rate: float,
    progress: Progress | None = None,
    spatial_multiple: int = SPATIAL_MULTIPLE,
) -> tuple[list[ClipRecord], DatasetReport]:
    """Every usable clip of the enabled media backends, in a stable order, and the report.

    `backends` may hold any dataset-file entries: text_embeds and disabled backends are ignored.
    `frame_rate` is the config's frame rate, used where a video backend sets no video.frame_rate.
    `progress(done, total, message)` is called once per file. Bad files never raise: they are skipped
    and reported. Raises DatasetError for a missing folder or when no clip is left at all.
    `spatial_multiple`: what bucket sides are multiples of (128 under NABLA attention).
    """
    media = [b for b in backends if getattr(b, "dataset_type", None) in MEDIA_TYPES and not b.disabled]
    if not media:
        raise DatasetError("no enabled video or image backend in the dataset file")
    if frame_rate <= 0:
        raise DatasetError(f"frame_rate must be positive, got {frame_rate}")
    report = DatasetReport()
    work: list[tuple[VideoBackend | ImageBackend, Path, Path]] = []
    for backend in media:
        folder = Path(backend.instance_data_dir).expanduser().absolute()
        if not folder.is_dir():
            raise DatasetError(
                f"backend '{backend.id}': instance_data_dir {folder} is not a folder"
                + (" (it is a file)" if folder.exists() else " (it does not exist)")
            )
        files = discover_media(folder, backend.dataset_type)
        if not files:
            extensions = "/".join(sorted(media_extensions(backend.dataset_type)))
            report.notes.append(f"backend '{backend.id}': no {extensions} files under {folder}")
        report.backends.append(
            BackendSummary(backend.id, str(folder), backend.dataset_type, found=len(files))
        )
        work += [(backend, folder, path) for path in files]
    report.found = len(work)

    records: list[ClipRecord] = []
    summaries = {summary.id: summary for summary in report.backends}
    for done, (backend, folder, path) in enumerate(work, start=1):
        record = _examine(backend, folder, path, frame_rate, report, spatial_multiple)
        if record is not None:
            records.append(record)
            summaries[backend.id].used += 1
            if record.width < record.bucket.width or record.height < record.bucket.height:
                report.upscaled += 1
        if progress is not None:
            progress(done, len(work), str(path.relative_to(folder)))

    report.used = len(records)
    counts = Counter(record.bucket for record in records)
    report.buckets = {bucket.name: counts[bucket] for bucket in sorted(counts)}
    if not records:
        raise DatasetError("no usable clip in any dataset backend\n" + report.format())
    return records, report


def _examine(
    backend: VideoBackend | ImageBackend,
    folder: Path,
    path: Path,
    frame_rate: float,
    report: DatasetReport,
    multiple: int = SPATIAL_MULTIPLE,
) -> ClipRecord | None:
    """One file -> a record, or None after adding the reason to the report."""
    probed = _probe(backend, path, report)
    if probed is None:
        return None
    captions, info = probed
    if isinstance(backend, VideoBackend):
        target_fps = float(backend.video.frame_rate or frame_rate)
        frames = _video_frames(backend, path, info, target_fps, report)
        if frames is None:
            return None
        available, sample_frames = frames
        random_start = backend.video.random_start
    else:
        target_fps, available, sample_frames, random_start = float(frame_rate), 1, 1, False

    try:
        content_hash = file_sha256(path)
    except OSError as exc:
        report.add_skip(path, SkipReason.UNREADABLE, f"cannot read the file: {exc}", backend.id)
        return None
    return ClipRecord(
        key=f"{backend.id}/{path.relative_to(folder).as_posix()}",
        backend_id=backend.id,
        path=path,
        media_type=backend.dataset_type,
        captions=tuple(captions),
        fps=float(info.fps),
        num_source_frames=info.num_frames,
        duration=info.duration,
        width=info.width,
        height=info.height,
        rotation=info.rotation,
        available_frames=available,
        bucket=make_bucket(
            info.width, info.height, sample_frames, backend.resolution, backend.resolution_type, multiple
        ),
        content_hash=content_hash,
        crop_style=backend.crop_style,
        random_start=random_start,
        target_fps=target_fps,
        repeats=backend.repeats,
    )


def _probe(backend: VideoBackend | ImageBackend, path: Path, report: DatasetReport) -> tuple[list[str], MediaInfo] | None:
    """(captions, media info), or None after adding the reason to the report."""
    try:
        if path.stat().st_size == 0:
            report.add_skip(path, SkipReason.EMPTY_FILE, "the file is 0 bytes", backend.id)
            return None
        captions = captions_for(path, backend.caption_strategy, backend.instance_prompt)
        return captions, (probe_video(path) if backend.dataset_type == "video" else probe_image(path))
    except (CaptionProblem, ProbeError) as problem:
        report.add_skip(path, problem.reason, problem.detail, backend.id)
    except OSError as exc:  # vanished or unreadable between discovery and probing
        report.add_skip(path, SkipReason.UNREADABLE, f"cannot read the file: {exc}", backend.id)
    except Exception as exc:  # a decoder surprise on odd bytes must cost one file, not the whole scan
        report.add_skip(path, SkipReason.UNREADABLE, f"probing failed: {type(exc).__name__}: {exc}", backend.id)
    return None


def _video_frames(
    backend: VideoBackend, path: Path, info: MediaInfo, target_fps: float, report: DatasetReport
) -> tuple[int, int] | None:
    """(frames after resampling, frames per sample), or None after reporting a too short/long clip."""
    options = backend.video
    available = resampled_frame_count(info.num_frames, info.fps, target_fps)
    source = f"{info.num_frames} frames at {float(info.fps):g} fps = {info.duration:.2f} s"
    if available < options.effective_min_frames:
        report.add_skip(
            path,
            SkipReason.TOO_SHORT,
            f"{source} -> {available} frames at {target_fps:g} fps; needs at least "
            f"{options.effective_min_frames} (video.min_frames, else num_frames)",
            backend.id,
        )
        return None
    if options.max_frames is not None and available > options.max_frames:
        report.add_skip(
            path,
            SkipReason.TOO_LONG,
            f"{source} -> {available} frames at {target_fps:g} fps; video.max_frames is {options.max_frames}",
            backend.id,
        )
        return None
    frames = bucket_frames(
        available,
        num_frames=options.num_frames,
        strategy=options.bucket_strategy,
        frame_interval=options.frame_interval,
        max_frames=options.max_frames,
    )
    return available, frames
