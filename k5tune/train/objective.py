"""Flow matching, as pure functions (SPEC §3).

x_sigma = (1 - sigma) * x0 + sigma * noise, the model predicts the velocity noise - x0, and
FlowMatchEulerDiscreteScheduler integrates x_{next} = x + (sigma_next - sigma) * velocity from
sigma = 1 down to 0. The transformer sees timestep = sigma * 1000.
"""

from __future__ import annotations

import torch


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """The scheduler's static shift: sigma' = s*sigma / (1 + (s-1)*sigma); more noise for s > 1."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def sample_sigmas(
    batch: int,
    generator: torch.Generator,
    shift: float,
    scheme: str = "logit_normal",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
) -> torch.Tensor:
    """Noise levels in (0, 1) for a batch, drawn on the CPU from `generator` (reproducible)."""
    if scheme == "logit_normal":
        sigmas = torch.sigmoid(torch.randn(batch, generator=generator) * logit_std + logit_mean)
    elif scheme == "uniform":
        sigmas = torch.rand(batch, generator=generator)
    else:
        raise ValueError(f"unknown sigma sampling scheme '{scheme}'")
    return shift_sigmas(sigmas, shift)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    s = sigmas.view(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    return (1 - s) * x0 + s * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return noise - x0


def flow_matching_loss(
    prediction: torch.Tensor, target: torch.Tensor, frame_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean squared error per sample, averaged over the batch.

    `frame_weights` (B, T) zeroes latent frames out of the loss (I2V: the clean conditioning frame).
    """
    error = (prediction.float() - target.float()).square()
    if frame_weights is None:
        return error.mean()
    weights = frame_weights.to(error.dtype).view(*frame_weights.shape, 1, 1, 1).expand_as(error)
    return (error * weights).sum() / weights.sum().clamp(min=1)
