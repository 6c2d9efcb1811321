"""The training run, top to bottom: dataset, caches, model, loop, checkpoints, validation, outputs.

`train(loaded)` is everything `k5tune train` does after parsing. Each numbered stage says why it is
where it is. The loop reads only cached tensors: no video decoding, no text encoder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from k5tune.cache.builder import EMPTY_CAPTION, CacheResult
from k5tune.cache.stage import run_cache_stage
from k5tune.errors import ConfigError, K5TuneError, NotYetAvailable
from k5tune.lora.adapter import add_lora, load_lora_weights, lora_parameters, lora_state_dict
from k5tune.lora.convert import convert_file
from k5tune.lora.files import LORA_WEIGHTS_NAME, save_lora
from k5tune.models.kandinsky5.model_input import (
    first_frame_loss_weights,
    pad_prompts,
    transformer_kwargs,
    with_conditioning_channels,
    with_first_frame_condition,
)
from k5tune.models.kandinsky5.modulation import modulation_storage_dtype, store_modulation_in
from k5tune.models.kandinsky5.quantize import quantize_base
from k5tune.models.kandinsky5.text_mask import install_text_mask, set_text_mask
from k5tune.models.kandinsky5.tread import install_tread, resolve_routes, set_tread_step
from k5tune.progress import Progress, SilentProgress
from k5tune.runtime import Runtime
from k5tune.train import checkpoint, fsdp, objective
from k5tune.train.distributed import init_from_env
from k5tune.train.metrics import MetricsLog, NullMetrics, Tracker, plot_loss, truncate_metrics
from k5tune.train.offload import enable_group_offload, place_for_offload
from k5tune.train.speed import (
    SpeedPlan,
    apply_speed_plan,
    blocks_may_compile,
    compiles_blocks,
    offloads_saved_activations,
)
from k5tune.validate.runner import ValidationVideo, check_validation_images, run_validation


class NotFiniteLoss(K5TuneError):
    """Too many NaN/inf losses or gradients in a row."""


class UnusableCacheEntry(Exception):
    """A clip's cache entry could not be used mid-run (named in the log; the clip is left out)."""


@contextlib.contextmanager
def step_scope(transformer):
    """State a step sets on the model (the batch's text mask, TREAD's generators) lives from its forward
    to the end of its backward (checkpointed blocks recompute with it) and no longer: whatever runs next
    (validation, another batch) starts clean."""
    try:
        yield
    finally:
        set_text_mask(transformer, None)
        set_tread_step(transformer, None)


@dataclass
class TrainResult:
    output_dir: Path
    lora_path: Path
    metrics_csv: Path
    loss_plot: Path | None
    report_json: Path
    steps: int
    total_steps: int = 0
    interrupted: bool = False
    resumed_from: Path | None = None
    last_checkpoint: Path | None = None
    nonfinite_skipped: int = 0
    hub_url: str | None = None
    is_main: bool = True  # False in the other processes of a multi-GPU run
    videos: list[ValidationVideo] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)


def refuse_pending_features(train_config) -> None:
    """Settings whose feature is not built yet stop the run with a clear message."""
    if train_config.crepa_enabled or train_config.scheduled_sampling_max_step_offset > 0:
        raise NotYetAvailable("CREPA and scheduled sampling are not implemented yet; set crepa_enabled=false "
                              "and scheduled_sampling_max_step_offset=0")


def speed_plan(cfg, on_gpu: bool, compile_blocks: bool = True) -> SpeedPlan:
    """What is compiled is decided by the training device, not by where the weights are when the plan
    is applied (with offload or FSDP2 they are still in CPU memory then). `compile_blocks` False: the
    blocks run eagerly, their element-wise groups still compiled."""
    checkpointing = cfg.gradient_checkpointing_policy if cfg.gradient_checkpointing else "none"
    return SpeedPlan(fast_path=cfg.fused_kernels, attention=cfg.attention_backend, checkpointing=checkpointing,
                     compile=on_gpu, compile_blocks=on_gpu and compile_blocks,
                     offload_activations=cfg.activations_offloaded)


def step_generator(seed: int, *parts: int) -> torch.Generator:
    """A CPU generator for one (step, micro-batch): draws never depend on what ran before, so a
    resumed run draws exactly what the uninterrupted run would have."""
    digest = hashlib.sha256(":".join(map(str, (seed, *parts))).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def make_optimizer(params, cfg):
    kwargs = {"lr": cfg.learning_rate, "betas": (cfg.adam_beta1, cfg.adam_beta2),
              "weight_decay": cfg.adam_weight_decay, "eps": cfg.adam_epsilon}
    if cfg.optimizer == "adamw_8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as exc:
            raise ConfigError("optimizer adamw_8bit needs bitsandbytes (pip install bitsandbytes) and a CUDA GPU; "
                              "use 'adamw'", key="optimizer") from exc
        return bnb.optim.AdamW8bit(params, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


def plan_steps(cfg, batches_per_epoch: int) -> tuple[int, int]:
    """(optimizer steps, epochs). max_train_steps wins; with neither set, one epoch."""
    steps_per_epoch = max(1, math.ceil(batches_per_epoch / cfg.gradient_accumulation_steps))
    if cfg.max_train_steps is not None:
        return cfg.max_train_steps, math.ceil(cfg.max_train_steps / steps_per_epoch)
    epochs = cfg.num_train_epochs or 1
    return epochs * steps_per_epoch, epochs


class StopRequests:
    """SIGINT/SIGTERM: the first asks for a clean stop after the current step; a second aborts."""

    def __init__(self, progress: Progress):
        self.requested = False
        self._progress = progress
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self._progress.log(f"{signal.Signals(signum).name}: finishing this step and saving a checkpoint "
                           "(press Ctrl-C again to abort at once)")

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


class Trainer:
    def __init__(self, loaded, progress: Progress | None = None, device: str | None = None):
        self.loaded = loaded
        self.cfg = loaded.train
        self.progress = progress or SilentProgress()
        self.device = device
        self.output_dir = Path(self.cfg.output_dir).resolve()

    # ------------------------------------------------------------------------------------------------
    def setup(self) -> None:
        cfg, progress = self.cfg, self.progress
        # 0. Refuse what is not built yet before any slow work, so the user learns at once.
        refuse_pending_features(cfg)
        check_validation_images(cfg)

        # 1. One place decides device and dtypes; seeded generators carry all randomness. Under
        #    torchrun / accelerate launch each process takes its GPU and a slice of every batch.
        self.dist = init_from_env()
        if not self.dist.is_main:
            self.progress = progress = SilentProgress()  # one process speaks for all
        for notice in cfg.notices():
            progress.log(f"note: {notice}")
        #    The checkpoint to resume from: the newest one whose files verify (a damaged one is named).
        self.resume_from = (checkpoint.resolve_resume(self.output_dir, cfg.resume_from_checkpoint, progress.log)
                            if cfg.resume_from_checkpoint else None)
        self.runtime = Runtime.detect(cfg.mixed_precision, self.device or self.dist.device(torch.cuda.is_available()))
        torch.manual_seed(cfg.seed)

        # 2-3. Dataset (discover, probe, filter, bucket; report beside the cache), then the caches:
        #      encode once what is missing; the text encoders and the VAE are freed afterwards.
        self.stage = run_cache_stage(self.loaded, self.runtime, progress, self.dist)
        progress.log(self.stage.summary())
        self.records, self.cache, self.components = self.stage.records, self.stage.cache, self.stage.components
        self.prompts = self.cache.extra_prompts[:-1]  # validation prompts (the last one is the negative)

        # 4. The transformer with LoRA. The base stays frozen in the compute dtype; LoRA weights train
        #    in fp32 under autocast, which keeps their small updates from being rounded away.
        #    With group offload the blocks never sit on the GPU together: load on the CPU, then
        #    place the rest on the GPU and let the offloader move blocks as they compute.
        #    With FSDP2 each process loads on the CPU and keeps only its shard of every block.
        offload = cfg.enable_group_offload
        self.fsdp = fsdp.check_fsdp_settings(cfg, self.dist.world)
        if cfg.fsdp_enable and not self.fsdp:
            progress.log("note: fsdp_enable shards over several processes (num_processes > 1); one process "
                         "trains unsharded")
        #    A quantised base (base_model_precision) is loaded on the CPU and quantised block by block on
        #    the GPU, so the bf16 blocks are never all there at once.
        quantized = cfg.base_model_precision != "no_change"
        transformer = self.components.transformer(dtype=self.runtime.compute_dtype)
        #    The modulation layers (fp32 in diffusers) are stored in the compute dtype before anything
        #    reaches the GPU: autocast rounds them to it anyway (modulation.py). Quantisation replaces them.
        modulation_dtype = None if quantized else modulation_storage_dtype(cfg.modulation_precision,
                                                                           self.runtime.compute_dtype)
        if modulation_dtype is not None:
            saved = store_modulation_in(transformer, modulation_dtype)
            progress.log(f"modulation layers stored in {str(modulation_dtype).removeprefix('torch.')} "
                         f"(computed in fp32): {saved / 2**30:.2f} GiB less")
        if not (offload or self.fsdp or quantized):
            transformer.to(self.runtime.device)
        quantize_base(transformer, cfg.base_model_precision, self.runtime.device, offload=offload, sharded=self.fsdp,
                      log=progress.log)
        self.adapted = add_lora(transformer, cfg.lora_rank, cfg.effective_lora_alpha, cfg.lora_dropout,
                                cfg.lora_target_modules, cfg.seed)
        self.params = lora_parameters(transformer)
        for p in self.params:
            p.data = p.data.float()
        self.speed = speed_plan(cfg, self.runtime.is_cuda, compile_blocks=blocks_may_compile(
            offloaded=offload, sharded=self.fsdp, quantized=quantized))
        apply_speed_plan(transformer, self.speed)
        if compiles_blocks(self.speed, transformer):
            progress.log("note: the first steps also compile the transformer blocks (torch.compile: ~40 s for Lite "
                         "on an H100); fused_kernels false skips it")
        if self.fsdp:
            fsdp.shard_transformer(transformer, self.runtime.compute_dtype, cfg.fsdp_reshard_after_forward)
            self.params = lora_parameters(transformer)  # sharding replaced them
            progress.log(f"FSDP2: the transformer is sharded over {self.dist.world} processes "
                         f"({fsdp.local_weight_gib(transformer):.2f} GiB of weights each)")
        if offload:
            if cfg.group_offload_use_stream and not self.runtime.is_cuda:
                progress.log("note: group_offload_use_stream has no effect without a CUDA GPU")
            place_for_offload(transformer, self.runtime.device)
        if offload or (cfg.activations_offloaded and not offloads_saved_activations(self.speed, transformer)):
            # (compiled blocks offload what they save themselves and keep the checkpointing policy; eager
            # ones go through the offloader's checkpoint and are recomputed whole)
            # alone, activation offload copies on a side stream: the copies hide behind the compute
            enable_group_offload(transformer, cfg.group_offload_blocks_per_group,
                                 cfg.group_offload_use_stream or not offload,
                                 offload_activations=cfg.activations_offloaded, offload_weights=offload,
                                 compute=self.runtime.device, leaf_level=cfg.group_offload_type == "leaf_level")
        install_text_mask(transformer)
        if cfg.tread_config is not None:
            install_tread(transformer, resolve_routes(cfg.tread_config, len(transformer.visual_transformer_blocks)))
        transformer.train()
        self.transformer = transformer
        self.shift = cfg.flow_schedule_shift or self.components.scheduler_shift()

        # 5. Optimizer and schedule, sized from the epoch plan.
        from k5tune.data import batches_for_epoch

        self.batches_for_epoch = batches_for_epoch
        # a global batch holds train_batch_size clips per process; process r trains slice r of it
        self.global_batch = cfg.train_batch_size * self.dist.world
        batches_per_epoch = len(batches_for_epoch(self.records, self.global_batch, 0, cfg.seed))
        self.total_steps, self.epochs = plan_steps(cfg, batches_per_epoch)
        self.optimizer = make_optimizer(self.params, cfg)
        self.scheduler = self._make_scheduler()
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

    def _restore(self, folder: Path) -> None:
        from safetensors.torch import load_file

        state = checkpoint.load_state(folder)
        if self.fsdp:
            fsdp.load_full_lora(self.transformer, load_file(folder / LORA_WEIGHTS_NAME))
            fsdp.load_full_optimizer_state(self.transformer, self.optimizer, state["optimizer"])
        else:
            load_lora_weights(self.transformer, load_file(folder / LORA_WEIGHTS_NAME))
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        checkpoint.restore_rng_state(state["rng"])
        self.step = state["step"]
        self.epoch, self.next_group = state["position"]["epoch"], state["position"]["next_group"]
        self.nonfinite_in_row = state.get("nonfinite_in_row", 0)
        self.progress.log(f"resumed from {folder} at step {self.step}")
        self._follow_schedule_changes(state)

    def _make_scheduler(self, last_epoch: int = -1):
        from diffusers.optimization import get_scheduler

        cfg = self.cfg
        return get_scheduler(cfg.lr_scheduler, optimizer=self.optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                             num_training_steps=self.total_steps, last_epoch=last_epoch)

    def _schedule_settings(self) -> dict:
        cfg = self.cfg
        return {"learning_rate": cfg.learning_rate, "lr_scheduler": cfg.lr_scheduler,
                "lr_warmup_steps": cfg.lr_warmup_steps, "total_steps": self.total_steps}

    def _follow_schedule_changes(self, state: dict) -> None:
        """A learning rate or schedule changed since the checkpoint takes effect (the optimizer state
        restored the old one): the new schedule continues from the resumed step, as if it had been the
        schedule all along. Unchanged settings keep the restored state untouched (resume stays exact)."""
        saved = state.get("schedule")
        if saved is None:  # a checkpoint from before the schedule was recorded: its rate is in the optimizer
            saved = {"learning_rate": state["optimizer"]["param_groups"][0].get("initial_lr")}
        now = self._schedule_settings()
        changed = {k: (saved[k], now[k]) for k in now if saved.get(k) is not None and saved[k] != now[k]}
        if not changed:
            return
        for group in self.optimizer.param_groups:
            group["initial_lr"] = group["lr"] = self.cfg.learning_rate
        self.scheduler = self._make_scheduler(last_epoch=self.step - 1)
        what = ", ".join(f"{key} {old} -> {new}" for key, (old, new) in changed.items())
        self.progress.log(f"changed since the checkpoint: {what}; the new schedule applies from step {self.step} "
                          f"(learning rate now {self.scheduler.get_last_lr()[0]:.3g})")

    def _set_earlier_runs_aside(self) -> None:
        """Files of another run in output_dir go to earlier-runs/<stamp>/ (see checkpoint.py): all of
        them on a fresh start (or a resume from a checkpoint kept elsewhere), and on a resume from
        checkpoint-N the checkpoints and validation videos after step N, a branch this run replaces."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        if self.resume_from is not None and self.resume_from.parent.resolve() == self.output_dir:
            moved = checkpoint.archive_after_step(self.output_dir, self.step, stamp)
            what = f"its checkpoints and validation videos after step {self.step}"
            metrics = self.output_dir / "metrics.csv"
            if moved is not None and metrics.is_file():  # the replaced branch keeps its whole curve
                shutil.copy2(metrics, moved / metrics.name)
            truncate_metrics(metrics, self.step)  # rows after the checkpoint are trained again
        else:
            moved = checkpoint.archive_earlier_run(self.output_dir, stamp)
            what = "an earlier run's checkpoints and outputs (not resumed)"
        if moved is not None:
            self.progress.log(f"note: {what} were moved from {self.output_dir} to {moved}")

    def _lora_meta(self) -> dict:
        cfg = self.cfg
        meta = {"flavour": cfg.model_flavour, "rank": cfg.lora_rank, "alpha": cfg.effective_lora_alpha,
                "targets": cfg.lora_target_modules, "modules": len(self.adapted), "steps": self.step,
                "lora_dropout": cfg.lora_dropout}
        if cfg.trigger_word:
            meta["trigger_word"] = cfg.trigger_word
        return meta

    def _stopping(self, stop: StopRequests) -> bool:
        """A stop asked of any process stops them all at the same step."""
        return self.dist.any(stop.requested)

    def _validate(self, tracker) -> list[ValidationVideo]:
        videos = []
        if self.dist.is_main:
            videos = run_validation(self.components, self.transformer, self.cache, self.cfg, self.runtime,
                                    self.step, self.output_dir, tracker)
        elif self.fsdp:  # the sharded transformer computes only with every process: they all generate
            with tempfile.TemporaryDirectory(prefix="k5tune-validation-") as scratch:
                run_validation(self.components, self.transformer, self.cache, self.cfg, self.runtime, self.step,
                               Path(scratch))
        self.dist.barrier()
        return videos

    def _gathered_lora(self) -> dict[str, torch.Tensor] | None:
        """FSDP2: the whole LoRA, gathered by every process (rank 0 writes it); else None (saved directly)."""
        return lora_state_dict(self.transformer) if self.fsdp else None

    def save_checkpoint(self) -> Path:
        if not self._weights_finite():  # (non-finite weights are never saved, never called good)
            raise NotFiniteLoss(f"the LoRA weights hold NaN/inf values at step {self.step}: nothing saved; lower "
                                f"learning_rate; last good checkpoint: {self._last_good_checkpoint() or 'none'}")
        folder = self.output_dir / f"{checkpoint.PREFIX}{self.step}"
        lora = self._gathered_lora()
        optimizer = fsdp.full_optimizer_state(self.transformer, self.optimizer) if self.fsdp else None
        if self.dist.is_main:
            folder = self._write_checkpoint(lora, optimizer)
        self.dist.barrier()
        return folder

    def _write_checkpoint(self, lora: dict | None = None, optimizer: dict | None = None) -> Path:
        state = {
            "step": self.step,
            "position": {"epoch": self.epoch, "next_group": self.next_group},
            "optimizer": self.optimizer.state_dict() if optimizer is None else optimizer,
            "scheduler": self.scheduler.state_dict(),
            "rng": checkpoint.rng_state(),
            "nonfinite_in_row": self.nonfinite_in_row,
            "seed": self.cfg.seed,
            "schedule": self._schedule_settings(),
        }
        folder = checkpoint.save_checkpoint(
            self.output_dir, self.step, lambda d: save_lora(self.transformer, d, self._lora_meta(), state=lora), state,
            self.cfg.checkpoints_total_limit,
        )
        self.progress.log(f"checkpoint saved: {folder}")
        return folder

    # ------------------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        self.setup()
        cfg, progress, main = self.cfg, self.progress, self.dist.is_main
        # only the first process writes metrics, logs, checkpoints, videos and the LoRA
        if main:  # (only once setup worked: a run that fails before training moves nothing)
            self._set_earlier_runs_aside()
        metrics = MetricsLog(self.output_dir / "metrics.csv") if main else NullMetrics()
        tracker = (Tracker(cfg.report_to, self.output_dir / cfg.logging_dir,
                           cfg.tracker_run_name or time.strftime("%Y%m%d-%H%M%S"), cfg.tracker_project_name,
                           cfg.model_dump(mode="json")) if main else Tracker("none", "", ""))
        result = TrainResult(output_dir=self.output_dir, lora_path=self.output_dir / LORA_WEIGHTS_NAME,
                             metrics_csv=metrics.path, loss_plot=None, report_json=self.stage.report_json,
                             steps=self.step, total_steps=self.total_steps, resumed_from=self.resume_from)

        # 6. The loop: accumulate micro-batches, clip, step; NaN/inf losses skip their update.
        progress.start("training", self.total_steps)
        progress.advance(self.step)
        try:
            with StopRequests(progress) as stop:
                while self.step < self.total_steps and self.epoch < self.epochs and not self._stopping(stop):
                    batches = self.batches_for_epoch(self.records, self.global_batch, self.epoch, cfg.seed)
                    while self.next_group < len(batches) and self.step < self.total_steps and not self._stopping(stop):
                        group = batches[self.next_group : self.next_group + cfg.gradient_accumulation_steps]
                        self.next_group += cfg.gradient_accumulation_steps
                        row = self.train_step(group)
                        if row is None:
                            result.nonfinite_skipped += 1
                            continue
                        metrics.write(**row)
                        tracker.scalars(self.step, **{k: v for k, v in row.items() if k not in ("step", "epoch")})
                        result.losses.append(row["loss"])
                        progress.advance(1, loss=row["loss"], lr=row["lr"])
                        if self.step % cfg.checkpointing_steps == 0 and self.step < self.total_steps:
                            result.last_checkpoint = self.save_checkpoint()
                        if self.prompts and self.step % cfg.validation_steps == 0 and self.step < self.total_steps:
                            result.videos += self._validate(tracker)
                    if self.next_group >= len(batches):
                        self.epoch, self.next_group = self.epoch + 1, 0
                result.interrupted = self._stopping(stop) and self.step < self.total_steps

            # 7. Outputs: a checkpoint (also on a clean stop), the LoRA, the loss plot, the final
            #    validation, and the upload when asked.
            result.steps = self.step
            result.last_checkpoint = self.save_checkpoint()
            if not result.interrupted:
                lora = self._gathered_lora()
                if main:
                    result.lora_path = save_lora(self.transformer, self.output_dir, self._lora_meta(), state=lora)
                    if cfg.lora_format == "comfyui":
                        # the final file in ComfyUI's layout, under the same name (generate/convert-lora read both)
                        convert_file(result.lora_path, result.lora_path, "comfyui")
                if self.prompts:
                    result.videos += self._validate(tracker)
        finally:
            progress.end()
            metrics.close()
            tracker.close()
        if main:
            result.loss_plot = plot_loss(metrics.path, self.output_dir / "loss.png")
        self.dist.barrier()
        if cfg.push_to_hub and not result.interrupted and main:
            result.hub_url = push_to_hub(cfg.hub_model_id, self.output_dir, result)
            progress.log(f"uploaded to {result.hub_url}")
        return result

    def train_step(self, group: list[list[int]]) -> dict | None:
        """One optimizer step over `group` (global batches of record indices); None when skipped."""
        started = time.perf_counter()
        loss_sum = torch.zeros(1, dtype=torch.float64)
        with self.speed.attention_context():
            for micro, global_batch in enumerate(group):
                loss_sum += self._micro_step(micro, global_batch, len(group))
        self.dist.sum_(loss_sum)
        if not self.fsdp:  # FSDP2 reduced them already (its average of the world-scaled losses is our sum)
            self.dist.sum_gradients(self.params)
        loss_value = loss_sum.item()
        # a non-finite loss or gradient skips the update (clip_grad_norm_ returns inf/NaN for either)
        grad_norm = (torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm or float("inf"))
                     if math.isfinite(loss_value) else torch.tensor(float("nan")))
        grad_norm = (grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm).item()
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
                "peak_gib": self.runtime.peak_memory_gib()}

    def _skip_update(self, what: str) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.nonfinite_in_row += 1
        self.progress.log(f"step {self.step + 1}: {what}; update skipped ({self.nonfinite_in_row} in a row)")
        if self.nonfinite_in_row >= self.cfg.max_nonfinite_steps:
            raise NotFiniteLoss(
                f"{self.nonfinite_in_row} non-finite losses or gradients in a row at step {self.step + 1}: lower "
                f"learning_rate or check the data; last good checkpoint: {self._last_good_checkpoint() or 'none'}")
        return None

    def _weights_finite(self) -> bool:
        local = all(torch.isfinite(p.to_local() if hasattr(p, "to_local") else p).all() for p in self.params)
        return not self.dist.any(not local)  # (FSDP2: each process holds a shard; all decide together)

    def _last_good_checkpoint(self) -> Path | None:
        return next((c for c in reversed(checkpoint.list_checkpoints(self.output_dir))
                     if checkpoint.damage(c) is None), None)

    def _micro_step(self, micro: int, global_batch: list[int], group_size: int) -> torch.Tensor:
        """Forward and backward of this process's slice of one global batch; its share of the loss."""
        cfg, dist = self.cfg, self.dist
        # this process's slice; positions index the global batch, so every sample draws the same noise
        # whichever process trains it (and however many there are)
        first = dist.rank * cfg.train_batch_size
        positions = [p for p in range(first, min(first + cfg.train_batch_size, len(global_batch)))
                     if self.records[global_batch[p]].key not in self.unusable_clips]
        weight = len(positions) / len(global_batch) / group_size
        if not positions:
            if not self.fsdp:
                return torch.zeros(1, dtype=torch.float64)
            # a sharded model computes only with every process: run the last sample, weighted 0
            positions, weight = [len(global_batch) - 1], 0.0
        if self.fsdp:
            fsdp.set_gradient_sync(self.transformer, micro == group_size - 1)
        try:
            batch = [self.records[global_batch[p]] for p in positions]
            samples = [self._cached_sample(record) for record in batch]
        except UnusableCacheEntry:  # named and set aside: train this micro-batch without it
            return self._micro_step(micro, global_batch, group_size)
        # per-step state set on the model (text mask, TREAD's generators) lives until this backward ends
        with step_scope(self.transformer):
            loss = micro_batch_loss(self.transformer, self.cache, batch, samples, positions, self.epoch, cfg.seed,
                                    self.step, micro, cfg, self.shift, self.runtime)
            # this slice's share of the global-batch mean; the gradient sum across processes is the mean
            share = loss * weight
            # FSDP2 averages gradients over the processes where we need their sum
            (share * dist.world if self.fsdp else share).backward()
        return share.detach().double().cpu()

    def _cached_sample(self, record) -> dict[str, torch.Tensor]:
        """A clip's cached tensors; an entry that cannot be read or holds NaN/inf is deleted (the next run
        encodes it again), named, and the clip is left out of the rest of this run."""
        problem = None
        try:
            sample = self.cache.sample(record.key, record.backend_id)
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


def train(loaded, progress: Progress | None = None, device: str | None = None) -> TrainResult:
    trainer = Trainer(loaded, progress, device)
    result = trainer.run()
    result.is_main = trainer.dist.is_main
    return result


def push_to_hub(repo_id: str, output_dir: Path, result: TrainResult) -> str:
    """Upload the final LoRA, its loss plot and metrics (not checkpoints or caches) to the Hub."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id, folder_path=str(output_dir), commit_message=f"k5tune LoRA after {result.steps} steps",
        allow_patterns=["pytorch_lora_weights.safetensors", "loss.png", "metrics.csv", "validation/**"],
    )
    return str(getattr(info, "commit_url", info))


def micro_batch_loss(transformer, cache: CacheResult, batch, samples: list[dict], positions: list[int], epoch: int,
                     seed: int, step: int, micro: int, cfg, shift: float, runtime: Runtime) -> torch.Tensor:
    """Mean loss of one slice of a global batch, from its cached samples and prompt embeddings.

    Each sample draws its caption dropout, noise and sigma from its own generator, keyed by the step,
    the micro-batch and its position in the global batch."""
    from k5tune.data import pick_caption

    generators = [step_generator(seed, step, micro, position) for position in positions]
    latents = torch.stack([s["latents"] for s in samples]).float()
    captions = []
    for record, generator in zip(batch, generators, strict=True):
        dropped = (cfg.caption_dropout_probability > 0
                   and torch.rand(1, generator=generator).item() < cfg.caption_dropout_probability)
        captions.append(EMPTY_CAPTION if dropped else pick_caption(record.captions, epoch, seed, record.key))
    prompts = [cache.prompt(c) for c in captions]
    text = pad_prompts([q for q, _ in prompts], [c for _, c in prompts])

    noise = torch.stack([torch.randn(latents.shape[1:], generator=g) for g in generators])
    sigmas = torch.cat([objective.sample_sigmas(1, g, shift, cfg.flow_sigma_sampling, cfg.flow_logit_mean,
                                                cfg.flow_logit_std, cfg.flow_mode_scale) for g in generators])
    first_frames = torch.stack([s["first_frame"] for s in samples]).float() if "first_frame" in samples[0] else None
    pixel_size = (batch[0].bucket.height, batch[0].bucket.width)
    return flow_matching_step_loss(transformer, latents, text, noise, sigmas, pixel_size, runtime, first_frames,
                                   route_generator=generators)


def flow_matching_step_loss(transformer, latents, text, noise, sigmas, pixel_size, runtime: Runtime,
                            first_frames: torch.Tensor | None = None,
                            route_generator: torch.Generator | list[torch.Generator] | None = None) -> torch.Tensor:
    """The loss of one micro-batch from its tensors: what `k5tune train` and `k5tune bench` both run.

    `route_generator` draws the TREAD routing when routes are installed: one generator per sample (each
    sample's own, in training), or one for the batch."""
    noisy = objective.add_noise(latents, noise, sigmas)
    target = objective.velocity_target(latents, noise)
    if first_frames is not None:
        # I2V: frame 0 is the clean image latent (as the I2V pipeline places it) and is not in the loss
        model_input = with_first_frame_condition(noisy, first_frames)
        frame_weights = first_frame_loss_weights(*latents.shape[:2])
    else:
        model_input, frame_weights = with_conditioning_channels(noisy), None

    device, dtype = runtime.device, runtime.compute_dtype
    model_input = model_input.to(device=device, dtype=dtype)
    set_text_mask(transformer, text.mask.to(device) if text.needs_mask else None)
    set_tread_step(transformer, route_generator, protect_first_frame=first_frames is not None)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        prediction = transformer(**transformer_kwargs(transformer, model_input, text, sigmas.to(device), pixel_size),
                                 return_dict=False)
    return objective.flow_matching_loss(prediction, target.to(device),
                                        None if frame_weights is None else frame_weights.to(device))


def describe_outputs(result: TrainResult) -> str:
    if result.interrupted:
        return (f"stopped cleanly at step {result.steps} of {result.total_steps}; checkpoint: {result.last_checkpoint}\n"
                f"resume with: k5tune train --resume_from_checkpoint latest")
    lines = [f"trained {result.steps} steps; outputs in {result.output_dir}:",
             f"  LoRA:        {result.lora_path}",
             f"  checkpoint:  {result.last_checkpoint}",
             f"  metrics:     {result.metrics_csv}",
             f"  loss plot:   {result.loss_plot}",
             f"  data report: {result.report_json}"]
    if result.nonfinite_skipped:
        lines.append(f"  note: {result.nonfinite_skipped} step(s) with a NaN/inf loss were skipped")
    final_videos = result.videos[-len({v.prompt for v in result.videos}):] if result.videos else []
    for video in final_videos:
        lines.append(f"  validation:  {video.path}  ({json.dumps(video.prompt)})")
    return "\n".join(lines)
