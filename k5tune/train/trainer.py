"""The training run, top to bottom: dataset, caches, model, loop, validation, outputs.

`train(loaded)` is everything `k5tune train` does after parsing. Each numbered stage says why it is
where it is. The loop reads only cached tensors: no video decoding, no text encoder.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from k5tune.cache.builder import EMPTY_CAPTION, CacheResult
from k5tune.cache.stage import run_cache_stage
from k5tune.errors import K5TuneError, NotYetAvailable
from k5tune.models.kandinsky5 import resolve_model_source
from k5tune.models.kandinsky5.model_input import pad_prompts, transformer_kwargs, with_conditioning_channels
from k5tune.models.kandinsky5.text_mask import install_text_mask, set_text_mask
from k5tune.progress import Progress, SilentProgress
from k5tune.runtime import Runtime
from k5tune.train import objective
from k5tune.train.lora import add_lora, lora_parameters, save_lora
from k5tune.train.metrics import MetricsLog, Tracker, plot_loss
from k5tune.validate.runner import ValidationVideo, run_validation


@dataclass
class TrainResult:
    output_dir: Path
    lora_path: Path
    metrics_csv: Path
    loss_plot: Path | None
    report_json: Path
    steps: int
    videos: list[ValidationVideo] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)


def refuse_pending_features(train_config) -> None:
    """Settings whose implementation is tracked by an open issue stop the run with a clear message."""
    pending = [
        (train_config.enable_group_offload, "enable_group_offload", 6),
        (train_config.base_model_precision != "no_change", f"base_model_precision={train_config.base_model_precision}", 6),
        (train_config.tread_config is not None, "tread_config (TREAD routing)", 11),
        (train_config.fsdp_enable or train_config.num_processes > 1, "several GPUs (fsdp_enable / num_processes)", 10),
        (train_config.lora_format != "diffusers", f"lora_format={train_config.lora_format}", 5),
        (train_config.resume_from_checkpoint is not None, "resume_from_checkpoint", 5),
        (train_config.report_to == "wandb", "report_to=wandb", 5),
        (train_config.optimizer != "adamw", f"optimizer={train_config.optimizer}", 4),
        (train_config.push_to_hub, "push_to_hub", 5),
    ]
    for active, what, issue in pending:
        if active:
            raise NotYetAvailable(f"{what} is not available yet (tracked in issue {issue}); remove it to train")
    if train_config.crepa_enabled or train_config.scheduled_sampling_max_step_offset > 0:
        raise NotYetAvailable("CREPA and scheduled sampling are not implemented yet; set crepa_enabled=false "
                              "and scheduled_sampling_max_step_offset=0")


def step_generator(seed: int, *parts: int) -> torch.Generator:
    """A CPU generator for one (step, micro-batch): draws never depend on what ran before."""
    digest = hashlib.sha256(":".join(map(str, (seed, *parts))).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def _lr_scheduler(optimizer, train_config, total_steps: int):
    from diffusers.optimization import get_scheduler

    return get_scheduler(
        train_config.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=train_config.lr_warmup_steps,
        num_training_steps=total_steps,
    )


def _total_steps(train_config, batches_per_epoch: int) -> tuple[int, int]:
    """(optimizer steps, epochs). max_train_steps wins; with neither set, one epoch."""
    steps_per_epoch = max(1, math.ceil(batches_per_epoch / train_config.gradient_accumulation_steps))
    if train_config.max_train_steps is not None:
        return train_config.max_train_steps, math.ceil(train_config.max_train_steps / steps_per_epoch)
    epochs = train_config.num_train_epochs or 1
    return epochs * steps_per_epoch, epochs


def train(loaded, progress: Progress | None = None, device: str | None = None) -> TrainResult:
    from k5tune.data import batches_for_epoch

    progress = progress or SilentProgress()
    cfg = loaded.train
    output_dir = Path(cfg.output_dir).resolve()

    # 0. Refuse what is not built yet before any slow work, so the user learns at once.
    refuse_pending_features(cfg)
    source = resolve_model_source(cfg.model_flavour, cfg.pretrained_model_name_or_path, cfg.revision)
    if source.flavour.is_i2v:
        raise NotYetAvailable("image-to-video training is not available yet (tracked in issue 8)")
    for notice in cfg.notices():
        progress.log(f"note: {notice}")

    # 1. One place decides device and dtypes; seeded generators carry all randomness.
    runtime = Runtime.detect(cfg.mixed_precision, device)
    torch.manual_seed(cfg.seed)

    # 2-3. Dataset (discover, probe, filter, bucket; report beside the cache), then the caches:
    #      encode once what is missing; the text encoders and the VAE are freed afterwards.
    stage = run_cache_stage(loaded, runtime, progress)
    progress.log(stage.summary())
    records, cache, components = stage.records, stage.cache, stage.components
    prompts = cache.extra_prompts[:-1]  # validation prompts (the last extra prompt is the negative)

    # 4. The transformer with LoRA. The base stays frozen in the compute dtype; LoRA weights train
    #    in fp32 under autocast, which keeps their small updates from being rounded away.
    transformer = components.transformer(dtype=runtime.compute_dtype, device=runtime.device)
    adapted = add_lora(transformer, cfg.lora_rank, cfg.effective_lora_alpha, cfg.lora_dropout,
                       cfg.lora_target_modules, cfg.seed)
    params = lora_parameters(transformer)
    for p in params:
        p.data = p.data.float()
    install_text_mask(transformer)
    if cfg.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    transformer.train()

    # 5. Optimizer and schedule, sized from the epoch plan.
    batches_per_epoch = len(batches_for_epoch(records, cfg.train_batch_size, 0, cfg.seed))
    total_steps, epochs = _total_steps(cfg, batches_per_epoch)
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon)
    scheduler = _lr_scheduler(optimizer, cfg, total_steps)
    shift = cfg.flow_schedule_shift or components.scheduler_shift()

    metrics = MetricsLog(output_dir / "metrics.csv")
    tracker = Tracker(cfg.report_to, output_dir / cfg.logging_dir, cfg.tracker_run_name or time.strftime("%Y%m%d-%H%M%S"))
    result = TrainResult(output_dir=output_dir, lora_path=output_dir / "pytorch_lora_weights.safetensors",
                         metrics_csv=metrics.path, loss_plot=None, report_json=stage.report_json, steps=0)
    lora_meta = {"flavour": cfg.model_flavour, "rank": cfg.lora_rank, "alpha": cfg.effective_lora_alpha,
                 "targets": cfg.lora_target_modules, "modules": len(adapted)}

    # 6. The loop: accumulate micro-batches, clip, step; NaN/inf losses skip their update.
    step, nonfinite_in_row = 0, 0
    progress.start("training", total_steps)
    try:
        for epoch in range(epochs):
            batches = batches_for_epoch(records, cfg.train_batch_size, epoch, cfg.seed)
            for group_start in range(0, len(batches), cfg.gradient_accumulation_steps):
                if step >= total_steps:
                    break
                started = time.perf_counter()
                group = batches[group_start : group_start + cfg.gradient_accumulation_steps]
                loss_sum = 0.0
                for micro, batch in enumerate(group):
                    generator = step_generator(cfg.seed, step, micro)
                    loss = _micro_step(transformer, cache, [records[i] for i in batch], epoch, generator,
                                       cfg, shift, runtime)
                    (loss / len(group)).backward()
                    loss_sum += loss.item() / len(group)
                if not math.isfinite(loss_sum):
                    optimizer.zero_grad(set_to_none=True)
                    nonfinite_in_row += 1
                    progress.log(f"step {step + 1}: loss is {loss_sum}; update skipped ({nonfinite_in_row} in a row)")
                    if nonfinite_in_row >= cfg.max_nonfinite_steps:
                        raise NotFiniteLoss(f"{nonfinite_in_row} non-finite losses in a row at step {step + 1}: "
                                            "lower learning_rate or check the data")
                    continue
                nonfinite_in_row = 0
                grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or float("inf")).item()
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                lr = scheduler.get_last_lr()[0]
                seconds = time.perf_counter() - started
                metrics.write(step=step, epoch=epoch, loss=loss_sum, lr=lr, grad_norm=grad_norm, step_seconds=seconds,
                              peak_gib=runtime.peak_memory_gib())
                tracker.scalars(step, loss=loss_sum, lr=lr, grad_norm=grad_norm, step_seconds=seconds,
                                peak_gib=runtime.peak_memory_gib())
                result.losses.append(loss_sum)
                progress.advance(1, loss=loss_sum, lr=lr)
                if prompts and step % cfg.validation_steps == 0 and step < total_steps:
                    result.videos += run_validation(components, transformer, cache, cfg, runtime, step, output_dir)
    finally:
        progress.end()
        metrics.close()
        tracker.close()

    # 7. Outputs: the LoRA, the loss plot, and the final validation.
    result.steps = step
    result.lora_path = save_lora(transformer, output_dir, {**lora_meta, "steps": step})
    result.loss_plot = plot_loss(metrics.path, output_dir / "loss.png")
    if prompts:
        result.videos += run_validation(components, transformer, cache, cfg, runtime, step, output_dir)
    return result


class NotFiniteLoss(K5TuneError):
    """Too many NaN/inf losses in a row."""


def _micro_step(transformer, cache: CacheResult, batch, epoch: int, generator: torch.Generator, cfg, shift: float,
                runtime: Runtime) -> torch.Tensor:
    """Loss of one micro-batch, from cached latents and prompt embeddings."""
    from k5tune.data import pick_caption

    latents = torch.stack([cache.latents(r.key, r.backend_id) for r in batch]).float()
    captions = []
    for record in batch:
        dropped = cfg.caption_dropout_probability > 0 and torch.rand(1, generator=generator).item() < cfg.caption_dropout_probability
        captions.append(EMPTY_CAPTION if dropped else pick_caption(record.captions, epoch, cfg.seed, record.key))
    prompts = [cache.prompt(c) for c in captions]
    text = pad_prompts([q for q, _ in prompts], [c for _, c in prompts])

    noise = torch.randn(latents.shape, generator=generator)
    sigmas = objective.sample_sigmas(len(batch), generator, shift, cfg.flow_sigma_sampling, cfg.flow_logit_mean,
                                     cfg.flow_logit_std)
    noisy = objective.add_noise(latents, noise, sigmas)
    target = objective.velocity_target(latents, noise)

    device, dtype = runtime.device, runtime.compute_dtype
    model_input = with_conditioning_channels(noisy).to(device=device, dtype=dtype)
    set_text_mask(transformer, text.mask.to(device) if text.needs_mask else None)
    pixel_size = (batch[0].bucket.height, batch[0].bucket.width)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        prediction = transformer(**transformer_kwargs(transformer, model_input, text, sigmas.to(device), pixel_size),
                                 return_dict=False)
    return objective.flow_matching_loss(prediction, target.to(device))


def describe_outputs(result: TrainResult) -> str:
    lines = [f"trained {result.steps} steps; outputs in {result.output_dir}:",
             f"  LoRA:        {result.lora_path}",
             f"  metrics:     {result.metrics_csv}",
             f"  loss plot:   {result.loss_plot}",
             f"  data report: {result.report_json}"]
    for video in result.videos[-len({v.prompt for v in result.videos}):] if result.videos else []:
        lines.append(f"  validation:  {video.path}  ({json.dumps(video.prompt)})")
    return "\n".join(lines)
