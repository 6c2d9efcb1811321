"""Scheduled sampling (rollout): some samples are denoised by the current model itself before training.

At inference the model feeds on its own outputs and its errors accumulate (exposure bias); training on
perfectly noised inputs never shows it those errors. For a rolled-out sample:

- the schedule is the sampler's the user generates with: the validation pipeline's FlowMatchEuler
  levels for `validation_num_inference_steps` and the model's shift, so an offset of k means k real
  sampler steps (not k/1000 of the trajectory). The sample's training level sigma_t is snapped to the
  nearest of those levels, index i; the rollout starts k levels earlier, at sigma_src = level[i - k]
  (fewer steps when the start would lie before the first level);
- x_src = (1 - sigma_src) x0 + sigma_src noise, then k Euler steps of the current model (LoRA on, eval
  mode, no gradients, the conditional prediction, dense where TREAD routes in training, the same NABLA
  attention inference runs) down to sigma_t;
- the target is the velocity that carries the rolled-out input straight to the clean latent,
  (x_rolled - x0) / sigma_t: the usual target noise - x0 when the model makes no error, and otherwise
  the correction back to the data, which is what the model must learn to apply to its own drift.

Each sample draws whether and how far it rolls out from its own generator (seed, step, micro-batch,
position), apart from the noise's: a probability of 0 trains bit for bit as without the feature, and a
resumed run rolls out exactly what the uninterrupted run would have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from k5tune.train import objective


@dataclass(frozen=True)
class RolloutSettings:
    max_offset: int
    probability: float
    prob_start: float = 0.0
    prob_end: float | None = None
    ramp_steps: int = 0
    start_step: int = 0
    ramp_shape: str = "linear"
    strategy: str = "uniform"

    @classmethod
    def from_config(cls, cfg) -> RolloutSettings | None:
        if cfg.scheduled_sampling_max_step_offset == 0:
            return None
        return cls(cfg.scheduled_sampling_max_step_offset, cfg.scheduled_sampling_probability,
                   cfg.scheduled_sampling_prob_start, cfg.scheduled_sampling_prob_end,
                   cfg.scheduled_sampling_ramp_steps, cfg.scheduled_sampling_start_step,
                   cfg.scheduled_sampling_ramp_shape, cfg.scheduled_sampling_strategy)

    def probability_at(self, step: int) -> float:
        """The chance of a rollout at optimizer step `step` (0-based: the step being trained)."""
        if step < self.start_step:
            return 0.0
        if not self.ramp_steps:
            return self.probability
        progress = min(1.0, (step - self.start_step) / self.ramp_steps)
        if self.ramp_shape == "cosine":
            progress = (1 - math.cos(math.pi * progress)) / 2
        end = self.probability if self.prob_end is None else self.prob_end
        return self.prob_start + (end - self.prob_start) * progress

    def draw(self, generator: torch.Generator, step: int) -> int:
        """Sampler steps to roll this sample out (0: trained as usual)."""
        rolled = torch.rand(1, generator=generator).item() < self.probability_at(step)
        length = self.max_offset if self.strategy == "max" else int(torch.randint(
            1, self.max_offset + 1, (1,), generator=generator).item())
        return length if rolled else 0


@dataclass
class RolloutStats:
    """What rollout cost in one optimizer step (logged beside the loss)."""

    samples: int = 0
    rolled: int = 0
    forwards: int = 0

    def row(self) -> dict[str, float]:
        return {"rollout_share": self.rolled / self.samples if self.samples else 0.0,
                "rollout_forwards": float(self.forwards)}


def source_level(levels: torch.Tensor, sigma: float, offset: int) -> tuple[int, int]:
    """(index of the target level: the sampler level nearest `sigma`, steps actually rolled out)."""
    index = int((levels - sigma).abs().argmin())
    return index, min(offset, index)


@torch.no_grad()
def roll_out(predict, latent: torch.Tensor, noise: torch.Tensor, levels: torch.Tensor, index: int,
             steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rolled-out input at levels[index], its target) for one sample. `predict(x, sigma)` is the model's
    velocity (for I2V its input carries the clean image latent at frame 0 at every step, as the pipeline
    keeps it; frame 0 stays out of the loss)."""
    x = objective.add_noise(latent[None], noise[None], levels[index - steps].view(1))[0]
    for position in range(index - steps, index):
        sigma, following = levels[position], levels[position + 1]
        velocity = predict(x, sigma).float()
        x = (x.float() + (following - sigma) * velocity).to(latent.dtype)  # FlowMatchEulerDiscreteScheduler.step
    return x, (x.float() - latent.float()) / levels[index]


@dataclass
class Rollout:
    """Rollout for a run: its settings, the sampler's levels, and what it cost this optimizer step."""

    settings: RolloutSettings
    levels: torch.Tensor  # the validation sampler's noise levels, from 1 down (objective.sampler_levels)
    stats: RolloutStats = field(default_factory=RolloutStats)

    def apply(self, latents, noise, sigmas, noisy, target, draws: list[int], predict):
        """The micro-batch's inputs, targets and levels with the drawn samples rolled out; `predict(i)`
        gives sample i's velocity function."""
        noisy, target, sigmas = noisy.clone(), target.clone(), sigmas.clone()
        for i, offset in enumerate(draws):
            self.stats.samples += 1
            index, steps = source_level(self.levels, sigmas[i].item(), offset)
            if steps == 0:  # not drawn, or its level is the first: nothing earlier to roll out from
                continue
            noisy[i], target[i] = roll_out(predict(i), latents[i], noise[i], self.levels, index, steps)
            sigmas[i] = self.levels[index]
            self.stats.rolled += 1
            self.stats.forwards += steps
        return noisy, target, sigmas
