"""From a folder of clips to samples ready for VAE encoding.

discover (discovery.py) -> probe (probe.py) -> filter and bucket (scan.py, buckets.py) -> report
(report.py); load_clip_frames (frames.py) decodes one record; batches_for_epoch groups records by bucket.
"""

from k5tune.data.buckets import COMMON_ASPECTS, batches_for_epoch, bucket_frames, bucket_size, snap_aspect
from k5tune.data.discovery import pick_caption
from k5tune.data.frames import load_clip_frames
from k5tune.data.probe import MediaInfo, ProbeError, probe_image, probe_video
from k5tune.data.records import FRAME_PIPELINE_VERSION, Bucket, ClipRecord
from k5tune.data.report import DatasetReport, SkippedClip, SkipReason
from k5tune.data.scan import scan_backends

__all__ = [
    "COMMON_ASPECTS",
    "FRAME_PIPELINE_VERSION",
    "Bucket",
    "ClipRecord",
    "DatasetReport",
    "MediaInfo",
    "ProbeError",
    "SkipReason",
    "SkippedClip",
    "batches_for_epoch",
    "bucket_frames",
    "bucket_size",
    "load_clip_frames",
    "pick_caption",
    "probe_image",
    "probe_video",
    "scan_backends",
    "snap_aspect",
]
