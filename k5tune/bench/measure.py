"""What every bench measurement shares: its settings, and how a step is timed."""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass, field

import torch

from k5tune.train.plan import TrainingPlan

TEXT_TOKENS = 128  # a typical caption after the template cut
LORA_TARGETS = ["to_query", "to_key", "to_value", "out_layer", "feed_forward"]  # attention + feed-forward



@dataclass
class BenchConfig:
    flavour: str = "t2v-lite-sft-5s"
    resolution: str = "512x768"
    frames: int = 61
    rank: int = 32
    steps: int = 6
    warmup: int = 2
    batch: int = 1
    compare_stock: bool = False
    model: str | None = None  # a diffusers folder (e.g. the tiny model) instead of the full-size config
    tread: object | None = None  # a TreadConfig: also time the routed step on the same model
    crepa: str | None = None  # a CREPA encoder name: also time the step with CREPA, and its feature caching
    crepa_block: int = 8
    device: str | None = None
    rollout_steps: int = 0  # scheduled sampling's worst case: every sample rolled out this many sampler steps
    time_forward: bool = False  # also time one no-grad forward (what rollout and eval loss cost per call)
    # our step's memory and speed plan, as training builds it (its modulation_fp32 defaults to True here:
    # the stock model keeps fp32 modulation, and --modulation-bf16 stores ours as training does)
    plan: TrainingPlan = field(default_factory=lambda: TrainingPlan(modulation_fp32=True))


def time_steps(step, steps: int, warmup: int, device: torch.device, warmup_times: list[float] | None = None
                ) -> list[float]:
    """The seconds of each of `steps` steps after `warmup` untimed ones (their seconds, compilation and
    autotuning included, go to `warmup_times` when given)."""
    times = []
    for index in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
        if index >= warmup:
            times.append(elapsed)
        elif warmup_times is not None:
            warmup_times.append(elapsed)
    return times


def median_seconds(step, steps: int, warmup: int, device: torch.device) -> float:
    """The median of `steps` timed steps after `warmup` untimed ones (the benchmark tools' timer)."""
    return statistics.median(time_steps(step, steps, warmup, device))


def _measure(step, bench: BenchConfig, device: torch.device) -> dict:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    warmup_times: list[float] = []
    times = time_steps(step, bench.steps, bench.warmup, device, warmup_times)
    result = {"step_s": statistics.median(times), "step_s_all": [round(t, 4) for t in times],
              "warmup_s_all": [round(t, 3) for t in warmup_times]}  # (the first: compiling, autotuning)
    if device.type == "cuda":
        result["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
