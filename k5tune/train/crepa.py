"""CREPA (cross-frame representation alignment, arXiv 2506.09229): a temporal regulariser.

The hidden states of one visual block (`crepa_block_index`) go through a small trainable head (LayerNorm
+ Linear to the encoder's width) and are pulled towards the frozen DINOv2 patch features of the same
frame and, weighted exp(-d/tau), of the frames up to `crepa_adjacent_distance` away:

    term = - sum_{b,f,n} w_f m_{bfn} sum_{|d| <= D, 0 <= f+d < T} exp(-|d|/tau) cos(head(h_{b,f,n}), y_{b,f+d,n})
           / sum_{b,f,n} w_f m_{bfn}

(f: latent frame, n: token, y: cached teacher features; w_f: the main loss's frame weight, 0 for I2V's
conditioning frame; m_{bfn}: 1, or 0 for tokens TREAD routes past the aligned block, which have no hidden
state there). The loss is flow + crepa_lambda * term. Teacher features come from the cache (cache/crepa.py):
nothing here decodes latents or runs DINOv2. The head trains with the LoRA and lives in checkpoints
(HEAD_FILE), never in the LoRA file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from k5tune.errors import ConfigError
from k5tune.models.dinov2 import pool_grid

HEAD_FILE = "crepa_head.safetensors"  # in checkpoint folders
COLUMNS = ["flow_loss", "crepa_loss"]  # metrics.csv: the two terms apart (loss = flow + lambda * crepa)


@dataclass(frozen=True)
class CrepaSettings:
    block: int
    weight: float
    distance: int
    tau: float
    pooling: int = 1

    @classmethod
    def from_config(cls, cfg) -> CrepaSettings | None:
        if not cfg.crepa_enabled:
            return None
        return cls(cfg.crepa_block_index, cfg.crepa_lambda, cfg.crepa_adjacent_distance, cfg.crepa_adjacent_tau,
                   cfg.crepa_feature_pooling)


def check_block_index(cfg, transformer_config: dict) -> None:
    """crepa_block_index must name one of the model's visual blocks."""
    blocks = int(transformer_config.get("num_visual_blocks", 0))
    if cfg.crepa_enabled and blocks and cfg.crepa_block_index >= blocks:
        raise ConfigError(f"{cfg.crepa_block_index} is not a visual block of this model: it has {blocks} "
                          f"(valid: 0..{blocks - 1})", key="crepa_block_index")


def alignment_term(projected: torch.Tensor, teacher: torch.Tensor, distance: int, tau: float,
                   frame_weights: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The CREPA term (module docstring) of `projected` and `teacher`, both (B, T, N, C); `frame_weights`
    (B, T), `mask` (B, T, N)."""
    batch, frames, tokens, _ = projected.shape
    p, y = F.normalize(projected.float(), dim=-1), F.normalize(teacher.float(), dim=-1)
    per_token = projected.new_zeros((batch, frames, tokens), dtype=torch.float32)
    for d in range(-distance, distance + 1):
        first, last = max(0, -d), frames - max(0, d)  # source frames whose neighbour f + d exists
        if first >= last:
            continue
        similarity = torch.linalg.vecdot(p[:, first:last], y[:, first + d:last + d])
        per_token = per_token + math.exp(-abs(d) / tau) * F.pad(similarity, (0, 0, first, frames - last))
    weights = torch.ones_like(per_token)
    if frame_weights is not None:
        weights = weights * frame_weights.to(weights).view(batch, frames, 1)
    if mask is not None:
        weights = weights * mask.to(weights)
    return -(per_token * weights).sum() / weights.sum().clamp(min=1e-12)


class CrepaHead(nn.Module):
    """LayerNorm + Linear: the block's width to the encoder's."""

    def __init__(self, dim: int, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, width)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(hidden))


class HiddenStateTap:
    """Keeps the output of one visual block from the next training forward (armed; with gradient; once).

    Checkpointed blocks (compiled ones included) run through the transformer's checkpointing function:
    the tap wraps it and sees the block's output outside any compiled region. Without checkpointing a
    forward hook sees it. Under TREAD the kept tokens' positions come along (None: every token)."""

    def __init__(self, transformer, index: int):
        self.transformer, self.block = transformer, transformer.visual_transformer_blocks[index]
        self.armed, self.value = False, None
        if transformer.gradient_checkpointing:
            inner = transformer._gradient_checkpointing_func

            def tapped(block, *args):
                out = inner(block, *args)
                if block is self.block:
                    self._capture(out)
                return out

            transformer._gradient_checkpointing_func = tapped
        else:
            self.block.register_forward_hook(lambda module, args, out: self._capture(out))

    def _capture(self, out: torch.Tensor) -> None:
        if self.armed and torch.is_grad_enabled():
            tread = getattr(self.transformer, "_k5_tread", None)
            self.value, self.armed = (out, getattr(tread, "kept", None)), False

    def arm(self) -> None:
        self.armed, self.value = True, None

    def take(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        value, self.value, self.armed = self.value, None, False
        if value is None:
            raise RuntimeError("CREPA: the aligned block did not run in this forward")
        return value


class Crepa:
    """CREPA for a run: settings, the tap, the head; `last`: (flow, term) of the latest micro-batch."""

    def __init__(self, settings: CrepaSettings, transformer, width: int, device, seed: int, fractal: bool = False):
        self.settings, self.fractal = settings, fractal
        self.tap = HiddenStateTap(transformer, settings.block)
        self.patch = tuple(transformer.config.patch_size)
        with torch.random.fork_rng(devices=[]):  # its own draws: the run's RNG stream stays as without CREPA
            torch.manual_seed(seed)
            self.head = CrepaHead(transformer.config.model_dim, width).to(device)
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None

    def params(self) -> list[nn.Parameter]:
        return list(self.head.parameters())

    def arm(self) -> None:
        self.tap.arm()

    def loss(self, flow: torch.Tensor, teacher: torch.Tensor, latent_shape: tuple[int, ...],
             frame_weights: torch.Tensor | None) -> torch.Tensor:
        """flow + lambda * term, from the captured hidden states and `teacher` (B, T, N', C)."""
        hidden, kept = self.tap.take()
        batch, frames, height, width = latent_shape[:4]
        grid = (frames // self.patch[0], height // self.patch[1], width // self.patch[2])
        device_type = hidden.device.type
        with torch.autocast(device_type, dtype=hidden.dtype, enabled=hidden.dtype != torch.float32):
            projected = self.head(hidden)
        projected, mask = self._on_grid(projected.float(), kept, batch, grid)
        if self.settings.pooling > 1:
            projected = pool_grid(projected * mask, self.settings.pooling)
            mask = pool_grid(mask, self.settings.pooling)
            projected = projected / mask.clamp(min=1e-6)
        projected, mask = projected.flatten(2, 3), mask.flatten(2, 3)[..., 0]
        teacher = teacher.to(projected.device)
        if projected.shape[:3] != teacher.shape[:3]:
            raise RuntimeError(f"CREPA: cached features {tuple(teacher.shape)} do not match the token grid "
                               f"{tuple(projected.shape)}: clear the cache's CREPA entries")
        term = alignment_term(projected, teacher, self.settings.distance, self.settings.tau, frame_weights,
                              None if kept is None else mask > 0)
        self.last = (flow.detach(), term.detach())
        return flow + self.settings.weight * term

    def _on_grid(self, projected: torch.Tensor, kept: torch.Tensor | None, batch: int, grid: tuple[int, int, int]):
        """(B, T, H, W, C) features and (B, T, H, W, 1) mask from the block's token sequence."""
        tokens = grid[0] * grid[1] * grid[2]
        mask = projected.new_ones((batch, tokens, 1))
        if kept is not None:  # TREAD: only the kept tokens went through the block
            index = kept.to(projected.device)
            full = projected.new_zeros((batch, tokens, projected.shape[-1]))
            projected = full.scatter(1, index[..., None].expand(-1, -1, projected.shape[-1]), projected)
            mask = projected.new_zeros((batch, tokens, 1)).scatter(1, index[..., None], 1.0)
        elif self.fractal:  # NABLA: the blocks see 8x8-patch groups; back to (T, H, W) order
            from diffusers.models.transformers.transformer_kandinsky import fractal_unflatten

            return fractal_unflatten(projected, (batch, *grid), block_mask=True), mask.view(batch, *grid, 1)
        return projected.view(batch, *grid, -1), mask.view(batch, *grid, 1)


def check_crepa(cfg) -> None:
    """What CREPA needs of the model and the run, checked before any slow work."""
    if not cfg.crepa_enabled:
        return
    from k5tune.models.flavours import get_flavour
    from k5tune.models.source import transformer_config_of

    check_block_index(cfg, transformer_config_of(cfg)[0])
    if cfg.crepa_drop_vae_encoder and get_flavour(cfg.model_flavour).is_i2v and not cfg.disable_validation:
        raise ConfigError("cannot be used with an image-to-video flavour while validation runs: I2V validation "
                          "encodes its conditioning image with the VAE encoder; set it false, or "
                          "disable_validation: true", key="crepa_drop_vae_encoder")


def describe_crepa(cfg) -> dict:
    """What `train --dry-run` says about CREPA: the settings, the encoder's source and the disk per clip."""
    from k5tune.config.crepa import local_encoder_config
    from k5tune.models.vision_encoders import ENCODERS, encoder_source

    width = ENCODERS[cfg.crepa_encoder].width if cfg.crepa_encoder in ENCODERS else (
        (local_encoder_config(cfg.crepa_encoder) or {}).get("hidden_size"))
    pooling = cfg.crepa_feature_pooling
    lite = 16 * -(-32 // pooling) * -(-48 // pooling) * (width or 0) * 2 / 2**20
    return {"block": cfg.crepa_block_index, "lambda": cfg.crepa_lambda, "adjacent_distance": cfg.crepa_adjacent_distance,
            "tau": cfg.crepa_adjacent_tau, "encoder": encoder_source(cfg.crepa_encoder),
            "image_size": cfg.crepa_encoder_image_size, "feature_pooling": pooling, "channels": width,
            "disk_per_clip": f"latent frames x ceil(H/16/{pooling}) x ceil(W/16/{pooling}) x {width} channels x 2 bytes"
                             + (f" (512x768x61: {lite:.1f} MiB)" if width else "")}
