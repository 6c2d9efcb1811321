"""The stages of a command, in order: what `k5tune train` and `k5tune cache` run (the server's runs,
the demo and the tests call these too).

train: check the settings and join the processes (Trainer), cache what is missing (cache stage: the
only place that decodes video or runs an encoder), then train from the caches. Each run records
structured events (train/events.py) from its first check to its outcome.
"""

from __future__ import annotations

import os
from pathlib import Path

from k5tune.cache.result import CacheStage
from k5tune.cache.stage import run_cache_stage
from k5tune.hostmem import HostMemory, host_memory, pinned_memory_problem
from k5tune.progress import Progress, SilentProgress
from k5tune.runtime import Runtime
from k5tune.train.events import EventLog, EventProgress, events_path, failure
from k5tune.train.outputs import TrainResult
from k5tune.train.plan import TrainingPlan
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
        if trainer.runtime.device.type == "cuda":  # (before the model loads: pinning starts with it)
            warning = pinned_memory_warning(loaded.train, trainer.plan, {r.bucket for r in stage.records},
                                            host_memory(), int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
            if warning:
                trainer.progress.log(f"warning: {warning}")
        result = trainer.run(stage)
    except BaseException as exc:
        events.emit("end", **failure(exc))
        events.close()
        raise
    result.is_main = trainer.dist.is_main
    events.emit("end", outcome="stopped" if result.interrupted else "completed", steps=result.steps,
                lora=None if result.interrupted else result.lora_path, checkpoint=result.last_checkpoint)
    events.close()
    return result


def pinned_memory_warning(cfg, plan: TrainingPlan, buckets, memory: HostMemory | None,
                          processes: int = 1) -> str | None:
    """Group offload and activation offload pin CPU memory (k5tune/hostmem.py): the estimate's pinned
    memory at the largest bucket, per process, against this machine's (None: it fits, or nothing pins)."""
    if not (plan.offload_activations or plan.group_offload) or not buckets:
        return None
    from k5tune.estimate import TrainingShape, pinned_cpu_gib

    largest = max(buckets, key=lambda b: b.width * b.height * b.frames)
    shape = TrainingShape(largest.height, largest.width, largest.frames, cfg.train_batch_size, cfg.lora_rank,
                          list(cfg.lora_target_modules))
    return pinned_memory_problem(pinned_cpu_gib(cfg.model_flavour, shape, plan), memory, processes)


def cache(loaded, progress: Progress | None = None) -> CacheStage:
    """Discover, probe and cache only (`k5tune cache`), with the buckets training will use."""
    from k5tune.train.attention import check_sizes, resolve_for_model

    attention = resolve_for_model(loaded.train)
    check_sizes(loaded.train, loaded.media_backends, attention)
    return run_cache_stage(loaded, Runtime.detect(loaded.train.mixed_precision), progress or SilentProgress(),
                           spatial_multiple=attention.spatial_multiple)
