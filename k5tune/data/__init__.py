"""From a folder of clips to samples ready for VAE encoding.

discover (discovery.py) -> probe (probe.py) -> filter and bucket (scan.py, buckets.py) -> report
(report.py); load_clip_frames (frames.py) decodes one record; batches_for_epoch groups records by bucket.
Import the modules themselves: this face imports nothing, so that reading records and buckets (what
the training loop needs) never loads the video decoder.
"""
