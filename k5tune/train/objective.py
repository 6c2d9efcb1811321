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


# How training noise levels are drawn (config `flow_sigma_sampling`); each is then shifted by
# `flow_schedule_shift`. Kandinsky 5's own training recipe is not published (its repository and report
# give only the inference schedule), so the default draws the levels the sampler itself visits:
# t uniform, shifted exactly as the scheduler shifts its steps. Logit-normal + shift 5 put 0.7 % of
# draws below sigma 0.3, where the 50-step sampler spends 8 % of its steps; uniform + shift puts 7.9 %.
SIGMA_SAMPLING = {
    "uniform": "t uniform in (0, 1), then shifted: the noise levels of the sampler's own steps (default)",
    "logit_normal": "t = sigmoid(N(flow_logit_mean, flow_logit_std)), then shifted (SD3's choice; fewer "
                    "low-noise draws)",
    "mode": "SD3's mode sampling, t = 1 - u - flow_mode_scale * (cos^2(pi u / 2) - 1 + u), then shifted",
}


def sample_sigmas(
    batch: int,
    generator: torch.Generator,
    shift: float,
    scheme: str = "uniform",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    mode_scale: float = 1.29,
) -> torch.Tensor:
    """Noise levels in (0, 1) for a batch, drawn on the CPU from `generator` (reproducible)."""
    if scheme == "logit_normal":
        sigmas = torch.sigmoid(torch.randn(batch, generator=generator) * logit_std + logit_mean)
    elif scheme == "uniform":
        sigmas = torch.rand(batch, generator=generator)
    elif scheme == "mode":
        u = torch.rand(batch, generator=generator)
        sigmas = 1 - u - mode_scale * (torch.cos(torch.pi * u / 2) ** 2 - 1 + u)
    else:
        raise ValueError(f"unknown sigma sampling scheme '{scheme}'")
    return shift_sigmas(sigmas, shift)


def sigma_distribution(shift: float, scheme: str, logit_mean: float = 0.0, logit_std: float = 1.0,
                       mode_scale: float = 1.29, draws: int = 200_000) -> dict[str, float]:
    """Quantiles of the training noise levels and their share below 0.3 (for `train --dry-run`)."""
    sigmas = sample_sigmas(draws, torch.Generator().manual_seed(0), shift, scheme, logit_mean, logit_std, mode_scale)
    quantiles = torch.quantile(sigmas[:100_000], torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95]))
    out = {f"q{int(q * 100):02d}": round(v.item(), 3) for q, v in zip([0.05, 0.25, 0.5, 0.75, 0.95], quantiles,
                                                                       strict=True)}
    out["share_below_0.3"] = round((sigmas < 0.3).float().mean().item(), 4)
    return out


def sampler_levels(steps: int, shift: float, train_timesteps: int = 1000) -> torch.Tensor:
    """The noise levels a `steps`-step FlowMatchEulerDiscreteScheduler evaluates the model at (diffusers'
    set_timesteps with a static shift): evenly spaced from 1 down to its sigma_min, which is itself the
    shifted 1/train_timesteps, then shifted."""
    sigma_min = shift_sigmas(torch.tensor(1.0 / train_timesteps), shift).item()
    return shift_sigmas(torch.linspace(1.0, sigma_min, steps), shift)


def sampler_share_below(threshold: float, steps: int, shift: float) -> float:
    """Share of a `steps`-step sampler's noise levels below `threshold`."""
    return (sampler_levels(steps, shift) < threshold).float().mean().item()


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
