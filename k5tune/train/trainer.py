"""The training loop over cached data, top to bottom: model, loop, checkpoints, validation, outputs.

`k5tune.workflow.train` checks the settings (Trainer()), runs the cache stage, then `Trainer.run`.
Each numbered stage says why it is where it is. The loop reads only cached tensors: no video
decoding, no text encoder.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import torch

from k5tune.cache.result import CacheStage
from k5tune.config.validation import check_validation_images
from k5tune.distributed import init_from_env
from k5tune.errors import ConfigError
from k5tune.lora.convert import convert_file
from k5tune.lora.files import LORA_WEIGHTS_NAME, save_lora
from k5tune.models.kandinsky5 import nabla
from k5tune.progress import Progress, SilentProgress
from k5tune.runtime import Runtime
from k5tune.train import checkpoint, fsdp, objective
from k5tune.train.attention import check_sizes, resolve_for_model
from k5tune.train.build import LoraSettings, build_training_model
from k5tune.train.checkpointing import CheckpointingMixin, NotFiniteLoss
from k5tune.train.crepa import COLUMNS as CREPA_COLUMNS
from k5tune.train.crepa import Crepa, CrepaSettings, check_crepa
from k5tune.train.evaluate import COLUMNS as EVAL_COLUMNS
from k5tune.train.evaluate import Evaluator, best_step, eval_levels, summarize
from k5tune.train.events import EventLog
from k5tune.train.metrics import MetricsLog, NullMetrics, Tracker, plot_loss, read_metrics
from k5tune.train.outputs import TrainResult, push_to_hub
from k5tune.train.plan import TrainingPlan
from k5tune.train.rollout import Rollout, RolloutSettings, RolloutStats
from k5tune.train.run_files import set_earlier_runs_aside
from k5tune.train.schedule import (
    make_optimizer,
    make_scheduler,
    plan_steps,
)
from k5tune.train.sequence import check_sequence_parallel, check_token_split
from k5tune.train.speed import graphs_for_buckets
from k5tune.train.step import micro_batch_loss, step_scope
from k5tune.train.stop import StopRequests
from k5tune.validate.runner import ValidationVideo, run_validation


class UnusableCacheEntry(Exception):
    """A clip's cache entry could not be used mid-run (named in the log; the clip is left out)."""


class Trainer(CheckpointingMixin):
    def __init__(self, loaded, progress: Progress | None = None, device: str | None = None,
                 events: EventLog | None = None):
        cfg = self.cfg = loaded.train
        self.loaded, self.events = loaded, events or EventLog(None)
        self.output_dir = Path(cfg.output_dir).resolve()
        # 0. Refuse what cannot work before any slow work.
        check_validation_images(cfg)
        check_crepa(cfg)
        # 1. One place decides device and dtypes; seeded generators carry all randomness. Under
        #    torchrun / accelerate launch each process takes its GPU and a slice of every batch.
        self.dist = init_from_env()
        self.progress = (progress or SilentProgress()) if self.dist.is_main else SilentProgress()  # one speaks
        #    The attention the checkpoint runs (NABLA for the 10 s and Pro HD flavours), and every size tiling it.
        self.attention = resolve_for_model(cfg)
        check_sizes(cfg, loaded.media_backends, self.attention)
        self.plan = TrainingPlan.from_config(cfg, self.dist.world, nabla=self.attention.nabla)
        for key, problem in self.plan.problems():
            raise ConfigError(problem, key=key)
        if self.plan.sequence_parallel > 1:
            check_sequence_parallel(cfg, self.plan.sequence_parallel, self.dist.world)
        #    Processes of one sequence group train the same clips: the data-parallel rank and world.
        self.data_rank = self.dist.rank // self.plan.sequence_parallel
        self.data_world = self.dist.world // self.plan.sequence_parallel
        self.rollout_settings = RolloutSettings.from_config(cfg)
        if self.rollout_settings and self.plan.sharded:  # (FSDP2's forwards must run on every process at once)
            raise ConfigError("scheduled sampling cannot be combined with fsdp_enable yet: each process rolls out "
                              "its own samples, but a sharded model computes only with all processes together",
                              key="scheduled_sampling_max_step_offset")
        for notice in cfg.notices() + self._plan_notices():
            self.progress.log(f"note: {notice}")
        #    The checkpoint to resume from: the newest one whose files verify (a damaged one is named).
        self.resume_from = (checkpoint.resolve_resume(self.output_dir, cfg.resume_from_checkpoint, self.progress.log)
                            if cfg.resume_from_checkpoint else None)
        self.runtime = Runtime.detect(cfg.mixed_precision, device or self.dist.device(torch.cuda.is_available()))
        torch.manual_seed(cfg.seed)

    def _plan_notices(self) -> list[str]:
        if self.cfg.fsdp_enable and not self.plan.sharded:
            return ["fsdp_enable shards over several processes (num_processes > 1); one process trains unsharded"]
        return []

    # ------------------------------------------------------------------------------------------------
    def setup(self, stage: CacheStage) -> None:
        """The model, optimizer and schedule over the cached dataset; the resume point restored."""
        cfg, progress = self.cfg, self.progress
        self.records, self.cache, self.components = stage.records, stage.cache, stage.components
        self.evaluator = stage.eval_records and Evaluator(stage.eval_records, stage.cache,
                                                          eval_levels(cfg.eval_noise_levels), cfg.eval_seed)
        self.report_json = stage.report_json
        self.prompts = self.cache.extra_prompts[:-1]  # validation prompts (the last one is the negative)
        buckets = {record.bucket for record in self.records}
        if self.plan.sequence_parallel > 1:  # (before the model loads)
            check_token_split(buckets, self.plan.sequence_parallel)
        if self.attention.nabla is not None:  # one attention graph per bucket, however many buckets
            graphs_for_buckets(len(buckets))

        # 4. The transformer with LoRA, as the plan says (build.py: placement, quantisation, offload,
        #    sharding, compiled blocks).
        transformer = self.components.transformer(dtype=self.runtime.compute_dtype)
        model = build_training_model(transformer, self.plan, LoraSettings.from_config(cfg), self.runtime,
                                     progress.log)
        self.transformer, self.params, self.adapted = model.transformer, model.params, model.adapted
        #    CREPA: the aligned block tapped, its head trained with the LoRA (after it: the LoRA's order stays)
        settings = CrepaSettings.from_config(cfg)
        self.crepa = settings and Crepa(settings, self.transformer, self.cache.features.width, self.runtime.device,
                                        cfg.seed, fractal=self.attention.nabla is not None)
        self.params = self.params + (self.crepa.params() if self.crepa else [])
        self.shift = cfg.flow_schedule_shift or self.components.scheduler_shift()
        #    Rollout counts steps of the sampler users generate with: the validation pipeline's schedule.
        self.rollout = self.rollout_settings and Rollout(self.rollout_settings, objective.sampler_levels(
            cfg.validation_num_inference_steps, self.components.scheduler_shift()))

        # 5. Optimizer and schedule, sized from the epoch plan; a global batch holds train_batch_size
        #    clips per data-parallel rank (a sequence group is one), and rank r trains slice r of it.
        from k5tune.data.buckets import batches_for_epoch

        self.batches_for_epoch = batches_for_epoch
        self.global_batch = cfg.train_batch_size * self.data_world
        batches_per_epoch = len(batches_for_epoch(self.records, self.global_batch, 0, cfg.seed))
        self.total_steps, self.epochs = plan_steps(cfg, batches_per_epoch)
        self.optimizer = make_optimizer(self.params, cfg)
        self.scheduler = make_scheduler(cfg, self.optimizer, self.total_steps)
        self.step, self.epoch, self.next_group, self.nonfinite_in_row = 0, 0, 0, 0
        self.unusable_clips: set[str] = set()  # clips whose cache entry turned out unusable mid-run

        # 5b. Resume: LoRA, optimizer, schedule, RNG and the data position of the checkpoint.
        if self.resume_from is not None:
            self._restore(self.resume_from)
        elif cfg.resume_from_checkpoint:
            aside = checkpoint.set_aside_checkpoints(self.output_dir)
            progress.log(f"resume_from_checkpoint=latest: no checkpoint in {self.output_dir} yet, starting fresh"
                         + (f" (set-aside runs have some, e.g. {aside[-1]}: resume_from_checkpoint takes a "
                            "folder too)" if aside else ""))

    # ------------------------------------------------------------------------------------------------
    def run(self, stage: CacheStage) -> TrainResult:
        self.setup(stage)
        cfg, main = self.cfg, self.dist.is_main
        # only the first process writes metrics, logs, checkpoints, videos and the LoRA
        if main:  # (only once setup worked: a run that fails before training moves nothing)
            set_earlier_runs_aside(self.output_dir, self.resume_from, self.step, self.progress.log)
        extra = ((["rollout_share", "rollout_forwards"] if self.rollout else []) + (CREPA_COLUMNS if self.crepa else [])
                 + (EVAL_COLUMNS if self.evaluator else []))
        metrics = MetricsLog(self.output_dir / "metrics.csv", extra) if main else NullMetrics()
        tracker = (Tracker(cfg.report_to, self.output_dir / cfg.logging_dir,
                           cfg.tracker_run_name or time.strftime("%Y%m%d-%H%M%S"), cfg.tracker_project_name,
                           cfg.model_dump(mode="json")) if main else Tracker("none", "", ""))
        result = TrainResult(output_dir=self.output_dir, lora_path=self.output_dir / LORA_WEIGHTS_NAME,
                             metrics_csv=metrics.path, loss_plot=None, report_json=self.report_json,
                             steps=self.step, total_steps=self.total_steps, resumed_from=self.resume_from)
        self.events.emit("training", total_steps=self.total_steps, start_step=self.step,
                         resumed_from=self.resume_from, plan=self.plan.label())
        try:
            self._loop(result, metrics, tracker)
            self._finish(result, tracker)
        finally:
            self.progress.end()
            metrics.close()
            tracker.close()
        if main:
            result.loss_plot = plot_loss(metrics.path, self.output_dir / "loss.png")
            result.best_eval = best_step(read_metrics(metrics.path)) if self.evaluator else None
            result.eval_by_dataset = getattr(self, "last_eval", {})
            if result.best_eval:
                steps = {int(p.name.split("-")[1]): p for p in checkpoint.list_checkpoints(self.output_dir)}
                nearest = min(steps, key=lambda s: (abs(s - result.best_eval[0]), s), default=None)
                result.closest_checkpoint = steps.get(nearest)
        self.dist.barrier()
        if cfg.push_to_hub and not result.interrupted and main:
            result.hub_url = push_to_hub(cfg.hub_model_id, self.output_dir, result)
            self.progress.log(f"uploaded to {result.hub_url}")
        return result

    def _loop(self, result: TrainResult, metrics, tracker) -> None:
        """6. Accumulate micro-batches, clip, step; a NaN/inf loss or gradient skips its update."""
        cfg = self.cfg
        self.progress.start("training", self.total_steps)
        self.progress.advance(self.step)
        with StopRequests(self.progress) as stop:
            while self.step < self.total_steps and self.epoch < self.epochs and not self._stopping(stop):
                batches = self.batches_for_epoch(self.records, self.global_batch, self.epoch, cfg.seed)
                while self.next_group < len(batches) and self.step < self.total_steps and not self._stopping(stop):
                    group = batches[self.next_group : self.next_group + cfg.gradient_accumulation_steps]
                    self.next_group += cfg.gradient_accumulation_steps
                    row = self.train_step(group)
                    if row is None:
                        result.nonfinite_skipped += 1
                        continue
                    if self.evaluator and (self.step % cfg.eval_steps == 0 or self.step == self.total_steps):
                        row.update(self.evaluate())
                    metrics.write(**row)
                    tracker.scalars(self.step, **{k: v for k, v in row.items() if k not in ("step", "epoch")})
                    self.events.emit("step", **row)
                    result.losses.append(row["loss"])
                    self.progress.advance(1, loss=row["loss"], lr=row["lr"])
                    if self.step % cfg.checkpointing_steps == 0 and self.step < self.total_steps:
                        result.last_checkpoint = self.save_checkpoint()
                    if self.prompts and self.step % cfg.validation_steps == 0 and self.step < self.total_steps:
                        result.videos += self._validate(tracker)
                if self.next_group >= len(batches):
                    self.epoch, self.next_group = self.epoch + 1, 0
            result.interrupted = self._stopping(stop) and self.step < self.total_steps

    def _finish(self, result: TrainResult, tracker) -> None:
        """7. A checkpoint (also on a clean stop), then the LoRA and the final validation."""
        result.steps = self.step
        if self.attention.nabla is not None and nabla.compiled_shapes:
            self.progress.log(f"NABLA attention compiled for {len(nabla.compiled_shapes)} shape(s) (one per bucket "
                              "and resolution; masks change every step without recompiling)")
        result.last_checkpoint = self.save_checkpoint()
        if result.interrupted:
            return
        lora = self._gathered_lora()
        if self.dist.is_main:
            result.lora_path = save_lora(self.transformer, self.output_dir, self._lora_meta(), state=lora)
            if self.cfg.lora_format == "comfyui":
                # the final file in ComfyUI's layout, under the same name (generate/convert-lora read both)
                convert_file(result.lora_path, result.lora_path, "comfyui")
        if self.prompts:
            result.videos += self._validate(tracker)

    # ------------------------------------------------------------------------------------------------
    def train_step(self, group: list[list[int]]) -> dict | None:
        """One optimizer step over `group` (global batches of record indices); None when skipped."""
        started = time.perf_counter()
        loss_sum = torch.zeros(1, dtype=torch.float64)
        self.terms = torch.zeros(2, dtype=torch.float64)  # CREPA: (flow, term) shares, summed like the loss
        if self.rollout:
            self.rollout.stats = RolloutStats()
        with self.plan.attention_context():
            for micro, global_batch in enumerate(group):
                loss_sum += self._micro_step(micro, global_batch, len(group))
        self.dist.sum_(loss_sum)
        if self.crepa:
            self.dist.sum_(self.terms)
        if not self.plan.sharded:
            self.dist.sum_gradients(self.params)
        elif self.crepa:
            # FSDP2 reduced the LoRA's gradients (its average of the world-scaled losses is our sum); the
            # CREPA head, whole on every process, is averaged the same way
            self.dist.sum_gradients(self.crepa.params(), scale=1 / self.dist.world)
        loss_value = loss_sum.item()
        # a non-finite loss or gradient skips the update (the norm is inf/NaN for either)
        grad_norm = self._clip_gradients() if math.isfinite(loss_value) else float("nan")
        if not math.isfinite(loss_value) or not math.isfinite(grad_norm):
            what = f"loss is {loss_value}" if not math.isfinite(loss_value) else f"gradient norm is {grad_norm}"
            return self._skip_update(what)
        self.nonfinite_in_row = 0
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return {"step": self.step, "epoch": self.epoch, "loss": loss_value, "lr": self.scheduler.get_last_lr()[0],
                "grad_norm": grad_norm, "step_seconds": time.perf_counter() - started,
                "peak_gib": self.runtime.peak_memory_gib(), **(self.rollout.stats.row() if self.rollout else {}),
                **(dict(zip(CREPA_COLUMNS, self.terms.tolist(), strict=True)) if self.crepa else {})}

    def _clip_gradients(self) -> float:
        max_norm = self.cfg.max_grad_norm or float("inf")
        if self.plan.sharded:  # sharded LoRA and (CREPA) a whole head together
            return fsdp.clip_gradients(self.params, max_norm)
        return torch.nn.utils.clip_grad_norm_(self.params, max_norm).item()

    def evaluate(self) -> dict[str, float]:
        """The eval loss now (evaluate.py); each process evaluates its share of the clips, except under
        FSDP2, where a sharded model computes only with every process: all evaluate all."""
        with self.plan.attention_context():
            table = self.evaluator.losses(self.transformer, self.runtime,
                                          (0, 1) if self.plan.sharded else (self.dist.rank, self.dist.world))
        if not self.plan.sharded:
            self.dist.sum_(table)
        self.last_eval = self.evaluator.by_dataset(table)
        return summarize(table, self.evaluator.levels)

    def _skip_update(self, what: str) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.nonfinite_in_row += 1
        self.progress.log(f"step {self.step + 1}: {what}; update skipped ({self.nonfinite_in_row} in a row)")
        if self.nonfinite_in_row >= self.cfg.max_nonfinite_steps:
            raise NotFiniteLoss(
                f"{self.nonfinite_in_row} non-finite losses or gradients in a row at step {self.step + 1}: lower "
                f"learning_rate or check the data; last good checkpoint: {self._last_good_checkpoint() or 'none'}")
        return None

    def _micro_step(self, micro: int, global_batch: list[int], group_size: int) -> torch.Tensor:
        """Forward and backward of this process's slice of one global batch; its share of the loss."""
        cfg, dist = self.cfg, self.dist
        # positions index the global batch, so every sample draws the same noise whichever process trains it
        first = self.data_rank * cfg.train_batch_size
        positions = [p for p in range(first, min(first + cfg.train_batch_size, len(global_batch)))
                     if self.records[global_batch[p]].key not in self.unusable_clips]
        # (a sequence group's processes each compute the whole loss of the same clips: 1/P of it each)
        weight = len(positions) / len(global_batch) / group_size / self.plan.sequence_parallel
        if not positions and self.plan.sharded:
            # a sharded model computes only with every process: run the last sample, weighted 0
            positions, weight = [len(global_batch) - 1], 0.0
        batch = [self.records[global_batch[p]] for p in positions]
        try:
            samples, failed = [self._cached_sample(record) for record in batch], False
        except UnusableCacheEntry:  # named and set aside: train this micro-batch without it
            failed = True
        if self.plan.sequence_parallel > 1:
            failed = self._agree_on_unusable(global_batch, failed)
        if failed:
            return self._micro_step(micro, global_batch, group_size)
        if not positions:
            return torch.zeros(1, dtype=torch.float64)
        if self.plan.sharded:
            fsdp.set_gradient_sync(self.transformer, micro == group_size - 1)
        with step_scope(self.transformer):  # per-step model state lives until this backward ends
            loss = micro_batch_loss(self.transformer, self.cache, batch, samples, positions, self.epoch, cfg.seed,
                                    self.step, micro, cfg, self.shift, self.runtime, self.rollout, self.crepa)
            if self.crepa:
                self.terms += torch.stack(self.crepa.last).double().cpu() * weight
            # this slice's share of the global-batch mean; the gradient sum across processes is the mean
            share = loss * weight
            # FSDP2 averages gradients over the processes where we need their sum
            (share * dist.world if self.plan.sharded else share).backward()
        return share.detach().double().cpu()

    def _agree_on_unusable(self, global_batch: list[int], failed: bool) -> bool:
        """Under sequence parallelism a group's processes must train the same clips (their exchanges have
        one shape): each learns what any process found unusable in this batch, and all retry together
        when one did (one all-reduce, on every process)."""
        flags = torch.tensor([float(self.records[i].key in self.unusable_clips) for i in global_batch]
                             + [float(failed)], dtype=torch.float64)
        self.dist.sum_(flags)
        for index, flag in zip(global_batch, flags[:-1].tolist(), strict=True):
            if flag:
                self.unusable_clips.add(self.records[index].key)
        return flags[-1].item() > 0

    def _cached_sample(self, record) -> dict[str, torch.Tensor]:
        """A clip's cached tensors; an entry that cannot be read or holds NaN/inf is deleted (the next run
        encodes it again), named, and the clip is left out of the rest of this run."""
        problem = None
        try:
            sample = self.cache.sample(record.key, record.backend_id, crepa=self.crepa is not None)
            if not all(torch.isfinite(t).all() for t in sample.values()):
                problem = "its cached latents hold NaN/inf values"
        except KeyError as exc:
            problem = str(exc)
        if problem is None:
            return sample
        self.unusable_clips.add(record.key)
        self.cache.discard(record.key, record.backend_id)
        self.progress.log(f"warning: clip {record.path} left out of this run: {problem} (entry deleted; the next "
                          "run encodes it again)")
        raise UnusableCacheEntry(record.key)

    # ------------------------------------------------------------------------------------------------
    def _stopping(self, stop: StopRequests) -> bool:
        """A stop asked of any process stops them all at the same step."""
        return self.dist.any(stop.requested)

    def _validate(self, tracker) -> list[ValidationVideo]:
        videos = []
        if self.dist.is_main:
            videos = run_validation(self.components, self.transformer, self.cache, self.cfg, self.runtime,
                                    self.step, self.output_dir, tracker)
            self.events.emit("validation", step=self.step, videos=[v.path for v in videos])
        elif self.plan.sharded:  # the sharded transformer computes only with every process: they all generate
            with tempfile.TemporaryDirectory(prefix="k5tune-validation-") as scratch:
                run_validation(self.components, self.transformer, self.cache, self.cfg, self.runtime, self.step,
                               Path(scratch))
        self.dist.barrier()
        return videos
