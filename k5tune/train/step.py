"""One micro-batch's loss, from cached tensors: what `k5tune train` and `k5tune bench` both run.

Randomness comes from generators keyed by (seed, step, micro-batch, position in the global batch),
so a resumed run, or one spread over several processes, draws exactly what one uninterrupted process
would have.
"""

from __future__ import annotations

import contextlib
import hashlib

import torch

from k5tune.cache.result import EMPTY_CAPTION, CacheResult
from k5tune.data.discovery import pick_caption
from k5tune.models.kandinsky5 import nabla
from k5tune.models.kandinsky5.model_input import (
    first_frame_loss_weights,
    pad_prompts,
    transformer_kwargs,
    with_conditioning_channels,
    with_first_frame_condition,
)
from k5tune.models.kandinsky5.text_mask import set_text_mask
from k5tune.models.kandinsky5.tread import set_tread_step
from k5tune.runtime import Runtime
from k5tune.train import objective
from k5tune.train.crepa import Crepa
from k5tune.train.rollout import Rollout


def step_generator(seed: int, *parts: int) -> torch.Generator:
    """A CPU generator for one (step, micro-batch, position): draws never depend on what ran before."""
    digest = hashlib.sha256(":".join(map(str, (seed, *parts))).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


@contextlib.contextmanager
def step_scope(transformer):
    """State a step sets on the model (the batch's text mask, TREAD's generators) lives from its forward
    to the end of its backward (checkpointed blocks recompute with it) and no longer: whatever runs next
    (validation, another batch) starts clean."""
    nabla.share_masks(transformer, True)  # each layer's NABLA mask: built in forward, reused in backward
    try:
        yield
    finally:
        set_text_mask(transformer, None)
        set_tread_step(transformer, None)
        nabla.share_masks(transformer, False)


def micro_batch_loss(transformer, cache: CacheResult, batch, samples: list[dict], positions: list[int], epoch: int,
                     seed: int, step: int, micro: int, cfg, shift: float, runtime: Runtime,
                     rollout: Rollout | None = None, crepa: Crepa | None = None) -> torch.Tensor:
    """Mean loss of one slice of a global batch, from its cached samples and prompt embeddings.

    Each sample draws its caption dropout, noise and sigma from its own generator (and, with rollout,
    whether and how far it is rolled out from another, so that its other draws never change). With
    CREPA the samples carry their teacher features (`crepa`), and the loss its term."""
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
    noisy, target = objective.add_noise(latents, noise, sigmas), objective.velocity_target(latents, noise)
    if rollout is not None:
        draws = [rollout.settings.draw(step_generator(seed, step, micro, position, ROLLOUT_DRAWS), step)
                 for position in positions]

        def predict(index: int):
            text_of_one = pad_prompts([prompts[index][0]], [prompts[index][1]])
            frame = None if first_frames is None else first_frames[index:index + 1]
            return lambda x, sigma: predict_velocity(transformer, x[None], sigma, text_of_one, pixel_size, runtime,
                                                     frame)[0]

        noisy, target, sigmas = rollout.apply(latents, noise, sigmas, noisy, target, draws, predict)
    teacher = torch.stack([s["crepa"] for s in samples]) if crepa is not None else None
    return prediction_loss(transformer, noisy, target, text, sigmas, pixel_size, runtime, first_frames,
                           route_generator=generators, crepa=crepa, teacher=teacher)


ROLLOUT_DRAWS = 1  # (a sample's rollout draws come from its generator keyed with this, apart from its noise)


def flow_matching_step_loss(transformer, latents, text, noise, sigmas, pixel_size, runtime: Runtime,
                            first_frames: torch.Tensor | None = None,
                            route_generator: torch.Generator | list[torch.Generator] | None = None,
                            crepa: Crepa | None = None, teacher: torch.Tensor | None = None) -> torch.Tensor:
    """The loss of one micro-batch from its tensors (the bench times this).

    `route_generator` draws the TREAD routing when routes are installed: one generator per sample (each
    sample's own, in training), or one for the batch. `crepa`, `teacher`: CREPA and the batch's features."""
    noisy, target = objective.add_noise(latents, noise, sigmas), objective.velocity_target(latents, noise)
    return prediction_loss(transformer, noisy, target, text, sigmas, pixel_size, runtime, first_frames,
                           route_generator, crepa, teacher)


def _model_input(noisy: torch.Tensor, first_frames: torch.Tensor | None) -> torch.Tensor:
    # I2V: frame 0 is the clean image latent (as the I2V pipeline places it)
    return with_conditioning_channels(noisy) if first_frames is None else with_first_frame_condition(noisy,
                                                                                                     first_frames)


def prediction_loss(transformer, noisy, target, text, sigmas, pixel_size, runtime: Runtime,
                    first_frames: torch.Tensor | None = None,
                    route_generator: torch.Generator | list[torch.Generator] | None = None,
                    crepa: Crepa | None = None, teacher: torch.Tensor | None = None) -> torch.Tensor:
    """The model's prediction at `noisy` (level `sigmas`) against `target`; I2V's frame 0 out of the loss
    (and out of CREPA's term, which `crepa` adds from the aligned block's hidden states and `teacher`)."""
    frame_weights = None if first_frames is None else first_frame_loss_weights(*noisy.shape[:2])
    device, dtype = runtime.device, runtime.compute_dtype
    model_input = _model_input(noisy, first_frames).to(device=device, dtype=dtype)
    set_text_mask(transformer, text.mask.to(device) if text.needs_mask else None)
    set_tread_step(transformer, route_generator, protect_first_frame=first_frames is not None)
    if crepa is not None:
        crepa.arm()
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        prediction = transformer(**transformer_kwargs(transformer, model_input, text, sigmas.to(device), pixel_size),
                                 return_dict=False)
    frame_weights = None if frame_weights is None else frame_weights.to(device)
    flow = objective.flow_matching_loss(prediction, target.to(device), frame_weights)
    return flow if crepa is None else crepa.loss(flow, teacher, tuple(noisy.shape), frame_weights)


@torch.no_grad()
def predict_velocity(transformer, noisy, sigma, text, pixel_size, runtime: Runtime,
                     first_frames: torch.Tensor | None = None) -> torch.Tensor:
    """The model's velocity as the sampler asks for it: eval mode (no dropout; TREAD dense), no gradient,
    no text mask (one caption), on the CPU in fp32 afterwards."""
    was_training = transformer.training
    transformer.eval()
    try:
        device, dtype = runtime.device, runtime.compute_dtype
        model_input = _model_input(noisy, first_frames).to(device=device, dtype=dtype)
        set_text_mask(transformer, None)
        sigmas = torch.as_tensor(sigma, dtype=torch.float32).reshape(1).expand(noisy.shape[0])
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            velocity = transformer(**transformer_kwargs(transformer, model_input, text, sigmas.to(device),
                                                        pixel_size), return_dict=False)
        return velocity.float().cpu()
    finally:
        transformer.train(was_training)
