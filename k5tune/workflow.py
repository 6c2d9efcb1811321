"""The stages of a command, in order: what `k5tune train` and `k5tune cache` run (the server's runs,
the demo and the tests call these too).

train: check the settings and join the processes (Trainer), cache what is missing (cache stage: the
only place that decodes video or runs an encoder), then train from the caches. Each run records
structured events (train/events.py) from its first check to its outcome.
"""

from __future__ import annotations

from pathlib import Path

import torch

from k5tune.cache.result import CacheStage
from k5tune.cache.stage import run_cache_stage
from k5tune.errors import OutOfGpuMemory
from k5tune.estimate.preflight import gpu_memory_warning, out_of_memory_message, pinned_memory_warning
from k5tune.hostmem import host_memory
from k5tune.progress import Progress, SilentProgress
from k5tune.runtime import Runtime
from k5tune.train.events import EventLog, EventProgress, events_path, failure
from k5tune.train.outputs import TrainResult
from k5tune.train.trainer import Trainer


def train(loaded, progress: Progress | None = None, device: str | None = None) -> TrainResult:
    """Cache, train, validate and save, as config.json says."""
    from k5tune.distributed import init_from_env

    main = init_from_env().is_main
    events = EventLog(events_path(Path(loaded.train.output_dir).resolve()) if main else None)
    progress = EventProgress(progress or SilentProgress(), events)
    events.emit("run", command="train", config=str(loaded.config_path), output_dir=loaded.train.output_dir)
    try:
        trainer = Trainer(loaded, progress, device, events)
        stage = run_cache_stage(loaded, trainer.runtime, trainer.progress, trainer.dist,
                                trainer.attention.spatial_multiple)
        trainer.progress.log(stage.summary())
        buckets = {record.bucket for record in stage.records}
        if trainer.runtime.device.type == "cuda":  # (before the model loads: pinning starts with it)
            for warning in preflight_warnings(loaded.train, trainer.plan, buckets, trainer.runtime.device,
                                              trainer.dist):
                trainer.progress.log(f"warning: {warning}")
        try:
            result = trainer.run(stage)
        except torch.OutOfMemoryError as exc:  # (a GPU allocator's) torch's first line, and what would fit
            raise OutOfGpuMemory(out_of_memory_message(loaded.train, trainer.plan, buckets,
                                                       card_gib(trainer.runtime.device), exc,
                                                       trainer.dist.world)) from exc
    except BaseException as exc:
        events.emit("end", **failure(exc))
        events.close()
        raise
    result.is_main = trainer.dist.is_main
    events.emit("end", outcome="stopped" if result.interrupted else "completed", steps=result.steps,
                lora=None if result.interrupted else result.lora_path, checkpoint=result.last_checkpoint)
    events.close()
    return result


def preflight_warnings(cfg, plan, buckets, device, dist) -> list[str]:
    """The estimate's word on this run before the model loads: GPU memory, and the CPU memory
    offloading pins (every process on this machine together)."""
    warnings = [gpu_memory_warning(cfg, plan, buckets, card_gib(device), dist.world),
                pinned_memory_warning(cfg, plan, buckets, host_memory(), dist.local_world)]
    return [w for w in warnings if w]


def card_gib(device) -> float:
    """The training GPU's memory in GiB."""
    return torch.cuda.get_device_properties(device).total_memory / 2**30


def cache(loaded, progress: Progress | None = None) -> CacheStage:
    """Discover, probe and cache only (`k5tune cache`), with the buckets training will use."""
    from k5tune.train.attention import check_sizes, resolve_for_model

    attention = resolve_for_model(loaded.train)
    check_sizes(loaded.train, loaded.media_backends, attention)
    return run_cache_stage(loaded, Runtime.detect(loaded.train.mixed_precision), progress or SilentProgress(),
                           spatial_multiple=attention.spatial_multiple)
