"""How many steps a run takes, its optimizer and learning-rate schedule, and a schedule changed on resume."""

from __future__ import annotations

import math

import torch

from k5tune.errors import ConfigError


def plan_steps(cfg, batches_per_epoch: int) -> tuple[int, int]:
    """(optimizer steps, epochs). max_train_steps wins; with neither set, one epoch."""
    steps_per_epoch = max(1, math.ceil(batches_per_epoch / cfg.gradient_accumulation_steps))
    if cfg.max_train_steps is not None:
        return cfg.max_train_steps, math.ceil(cfg.max_train_steps / steps_per_epoch)
    epochs = cfg.num_train_epochs or 1
    return epochs * steps_per_epoch, epochs


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


def make_scheduler(cfg, optimizer, total_steps: int, last_epoch: int = -1):
    from diffusers.optimization import get_scheduler

    return get_scheduler(cfg.lr_scheduler, optimizer=optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                         num_training_steps=total_steps, last_epoch=last_epoch)


def schedule_settings(cfg, total_steps: int) -> dict:
    """What decides the learning rate at each step (recorded in every checkpoint)."""
    return {"learning_rate": cfg.learning_rate, "lr_scheduler": cfg.lr_scheduler,
            "lr_warmup_steps": cfg.lr_warmup_steps, "total_steps": total_steps}


def changed_schedule(state: dict, now: dict) -> dict[str, tuple]:
    """The schedule settings that differ from the checkpoint's, as {key: (old, new)}. A checkpoint from
    before the schedule was recorded has only its rate, in the optimizer state."""
    saved = state.get("schedule") or {"learning_rate": state["optimizer"]["param_groups"][0].get("initial_lr")}
    return {k: (saved[k], now[k]) for k in now if saved.get(k) is not None and saved[k] != now[k]}


def follow_schedule_changes(cfg, optimizer, total_steps: int, step: int, state: dict, log):
    """A learning rate or schedule changed since the checkpoint takes effect (the optimizer state restored
    the old one): the new schedule continues from the resumed step, as if it had been the schedule all
    along. Returns the new scheduler, or None when nothing changed (resume stays exact)."""
    changed = changed_schedule(state, schedule_settings(cfg, total_steps))
    if not changed:
        return None
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"] = cfg.learning_rate
    scheduler = make_scheduler(cfg, optimizer, total_steps, last_epoch=step - 1)
    what = ", ".join(f"{key} {old} -> {new}" for key, (old, new) in changed.items())
    log(f"changed since the checkpoint: {what}; the new schedule applies from step {step} "
        f"(learning rate now {scheduler.get_last_lr()[0]:.3g})")
    return scheduler
