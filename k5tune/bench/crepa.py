"""CREPA in the bench: the step's extra time and memory, and the cost of caching the teacher features."""

from __future__ import annotations

import functools
import statistics

import torch

from k5tune.bench.measure import BenchConfig, _free_memory, _measure, time_steps
from k5tune.config.frames import latent_frames, parse_resolution, snap_resolution


def _measure_crepa(step, bench: BenchConfig, device: torch.device, report: dict) -> None:
    """The same step with CREPA (teacher features as the cache holds them): its extra time and memory."""
    baseline = report["ours_tread"] if "ours_tread" in report else report["ours"]
    step.add_crepa(bench.crepa, bench.crepa_block)
    report["ours_crepa"] = crepa = _measure(step, bench, device)
    report["crepa"] = {"encoder": bench.crepa, "block": bench.crepa_block,
                       "teacher_mib_per_clip": step.teacher[0].numel() * 2 / 2**20,
                       "step_time_increase": crepa["step_s"] / baseline["step_s"] - 1}
    if "peak_gib" in crepa:
        report["crepa"]["peak_increase_gib"] = crepa["peak_gib"] - baseline["peak_gib"]


def measure_crepa_caching(bench: BenchConfig, device: torch.device, clips: int = 3) -> dict:
    """The cache stage's CREPA cost per clip: the encoder (random weights of the real size, loaded in bf16
    on a GPU) over one frame per latent frame at the bench's size, features stored as the cache stores them."""
    from transformers import Dinov2Config, Dinov2Model

    from k5tune.models.dinov2 import RANDOM_CONFIGS, teacher_features
    from k5tune.models.vision_encoders import ENCODERS

    encoder = ENCODERS[bench.crepa]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = Dinov2Model(Dinov2Config(**RANDOM_CONFIGS[bench.crepa])).to(device, dtype).eval()
    height, width = snap_resolution(*parse_resolution(bench.resolution))
    pixels = torch.rand(latent_frames(bench.frames), 3, height, width) * 2 - 1
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    encode = functools.partial(teacher_features, model, pixels, encoder.image_size, (height // 16, width // 16))
    times = time_steps(encode, clips, 1, device)
    result = {"encoder": bench.crepa, "image_size": encoder.image_size, "frames_encoded": len(pixels),
              "seconds_per_clip": statistics.median(times), "mib_per_clip": encode().numel() * 2 / 2**20,
              "pixel_decoding": "not included (the clip is decoded once more, as for its latents)"}
    if device.type == "cuda":
        result["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    del model, encode
    _free_memory()
    return result
