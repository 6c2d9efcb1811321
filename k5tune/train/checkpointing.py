"""A training run's checkpoints: writing them (never with NaN/inf weights), restoring one on resume, and
the LoRA file's training facts. Mixed into the Trainer (train/trainer.py), whose state it saves."""

from __future__ import annotations

from pathlib import Path

import torch

from k5tune.atomic import atomic_save_safetensors
from k5tune.errors import ConfigError, K5TuneError
from k5tune.lora.adapter import load_lora_weights, lora_state_dict
from k5tune.lora.files import LORA_WEIGHTS_NAME, save_lora
from k5tune.train import checkpoint, fsdp
from k5tune.train.crepa import HEAD_FILE
from k5tune.train.schedule import follow_schedule_changes, schedule_settings


class NotFiniteLoss(K5TuneError):
    """Too many NaN/inf losses or gradients in a row (or NaN/inf weights)."""


class CheckpointingMixin:
    def _restore(self, folder: Path) -> None:
        from safetensors.torch import load_file

        state = checkpoint.load_state(folder)
        self._check_same_parameters(state["optimizer"], folder)
        if self.plan.sharded:
            fsdp.load_full_lora(self.transformer, load_file(folder / LORA_WEIGHTS_NAME))
            fsdp.load_full_optimizer_state(self._optimized_modules(), self.optimizer, state["optimizer"])
        else:
            load_lora_weights(self.transformer, load_file(folder / LORA_WEIGHTS_NAME))
            self.optimizer.load_state_dict(state["optimizer"])
        self._restore_crepa_head(folder)
        self.scheduler.load_state_dict(state["scheduler"])
        checkpoint.restore_rng_state(state["rng"])
        self.step = state["step"]
        self.epoch, self.next_group = state["position"]["epoch"], state["position"]["next_group"]
        self.nonfinite_in_row = state.get("nonfinite_in_row", 0)
        self.progress.log(f"resumed from {folder} at step {self.step}")
        changed = follow_schedule_changes(self.cfg, self.optimizer, self.total_steps, self.step, state,
                                          self.progress.log)
        self.scheduler = changed or self.scheduler

    def _optimized_modules(self):
        crepa = getattr(self, "crepa", None)
        return fsdp.optimized_modules(self.transformer, crepa.head if crepa else None)

    def _check_same_parameters(self, optimizer_state: dict, folder: Path) -> None:
        """A checkpoint resumes into the tensors it trained: with CREPA if it was trained with it (without if
        not), and with the same LoRA targets."""
        saved = sum(len(group["params"]) for group in optimizer_state["param_groups"])
        if saved == len(self.params):
            return
        has_head = (folder / HEAD_FILE).is_file()
        if has_head != bool(getattr(self, "crepa", None)):
            raise ConfigError(f"{folder} was trained {'with' if has_head else 'without'} CREPA: resume it with "
                              f"crepa_enabled {'true' if has_head else 'false'}, or start a new run",
                              key="crepa_enabled")
        raise ConfigError(f"{folder} trained {saved} tensors and this config trains {len(self.params)}: "
                          "lora_target_modules is not the run's; resume with the run's targets, or start a new run",
                          key="lora_target_modules")

    def _restore_crepa_head(self, folder: Path) -> None:
        if getattr(self, "crepa", None):
            from safetensors.torch import load_file

            self.crepa.head.load_state_dict(load_file(folder / HEAD_FILE, device=str(self.runtime.device)))

    def _weights_finite(self) -> bool:
        local = all(torch.isfinite(p.to_local() if hasattr(p, "to_local") else p).all() for p in self.params)
        return not self.dist.any(not local)  # (FSDP2: each process holds a shard; all decide together)

    def _last_good_checkpoint(self) -> Path | None:
        return next((c for c in reversed(checkpoint.list_checkpoints(self.output_dir))
                     if checkpoint.damage(c) is None), None)

    def _gathered_lora(self) -> dict[str, torch.Tensor] | None:
        """FSDP2: the whole LoRA, gathered by every process (rank 0 writes it); else None (saved directly)."""
        return lora_state_dict(self.transformer) if self.plan.sharded else None

    def save_checkpoint(self) -> Path:
        if not self._weights_finite():  # (non-finite weights are never saved, never called good)
            raise NotFiniteLoss(f"the LoRA weights hold NaN/inf values at step {self.step}: nothing saved; lower "
                                f"learning_rate; last good checkpoint: {self._last_good_checkpoint() or 'none'}")
        folder = self.output_dir / f"{checkpoint.PREFIX}{self.step}"
        lora = self._gathered_lora()
        optimizer = fsdp.full_optimizer_state(self._optimized_modules(), self.optimizer) if self.plan.sharded else None
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
            "schedule": schedule_settings(self.cfg, self.total_steps),
        }
        def write_weights(folder: Path) -> None:
            save_lora(self.transformer, folder, self._lora_meta(), state=lora)
            if getattr(self, "crepa", None):  # the head lives in checkpoints, never in the LoRA file
                atomic_save_safetensors(folder / HEAD_FILE, {k: v.detach().cpu().contiguous()
                                                             for k, v in self.crepa.head.state_dict().items()})

        folder = checkpoint.save_checkpoint(self.output_dir, self.step, write_weights, state,
                                            self.cfg.checkpoints_total_limit)
        self.progress.log(f"checkpoint saved: {folder}")
        self.events.emit("checkpoint", step=self.step, path=folder)
        return folder

    def _lora_meta(self) -> dict:
        cfg = self.cfg
        meta = {"flavour": cfg.model_flavour, "rank": cfg.lora_rank, "alpha": cfg.effective_lora_alpha,
                "targets": cfg.lora_target_modules, "modules": len(self.adapted), "steps": self.step,
                "lora_dropout": cfg.lora_dropout}
        if cfg.trigger_word:
            meta["trigger_word"] = cfg.trigger_word
        return meta
