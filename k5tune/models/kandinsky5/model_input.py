"""Build the transformer's inputs from cached tensors, with the diffusers pipelines' conventions.

- latents are channel-last (B, T, H, W, 16); with `visual_cond` the input gets 16 conditioning
  channels and 1 mask channel appended (zeros for text-to-video, as `prepare_latents` does);
- `timestep` is sigma * 1000 (the scheduler's `num_train_timesteps`);
- visual RoPE positions are aranges over latent frames and patch rows/columns, and the RoPE scale
  factor depends on the resolution exactly as in `Kandinsky5T2VPipeline._get_scale_factor`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NUM_TRAIN_TIMESTEPS = 1000


def rope_scale_factor(height: int, width: int) -> tuple[float, float, float]:
    """Pixel height/width -> the pipeline's RoPE scale (it rescales positions above ~480p)."""
    from diffusers import Kandinsky5T2VPipeline

    return Kandinsky5T2VPipeline._get_scale_factor(None, height, width)


def visual_rope_positions(latent_shape: tuple[int, int, int], patch_size, device) -> list[torch.Tensor]:
    frames, height, width = latent_shape
    return [
        torch.arange(frames // patch_size[0], device=device),
        torch.arange(height // patch_size[1], device=device),
        torch.arange(width // patch_size[2], device=device),
    ]


def with_conditioning_channels(
    noisy: torch.Tensor, cond_latents: torch.Tensor | None = None, cond_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Append the 16 conditioning channels and the mask channel (zeros when nothing conditions)."""
    batch, frames, height, width, _ = noisy.shape
    cond = torch.zeros_like(noisy) if cond_latents is None else cond_latents.to(noisy.dtype)
    mask = (
        torch.zeros(batch, frames, height, width, 1, dtype=noisy.dtype, device=noisy.device)
        if cond_mask is None
        else cond_mask.to(noisy.dtype)
    )
    return torch.cat([noisy, cond, mask], dim=-1)


@dataclass
class TextBatch:
    """Padded prompt embeddings of a batch, with the mask that says which tokens are real."""

    qwen: torch.Tensor  # (B, L, D), right-padded
    clip: torch.Tensor  # (B, D2)
    mask: torch.Tensor  # (B, L) bool, True for real tokens

    @property
    def needs_mask(self) -> bool:
        return not bool(self.mask.all())


def pad_prompts(qwen_list: list[torch.Tensor], clip_list: list[torch.Tensor]) -> TextBatch:
    longest = max(q.shape[0] for q in qwen_list)
    qwen = qwen_list[0].new_zeros(len(qwen_list), longest, qwen_list[0].shape[-1])
    mask = torch.zeros(len(qwen_list), longest, dtype=torch.bool)
    for i, q in enumerate(qwen_list):
        qwen[i, : q.shape[0]] = q
        mask[i, : q.shape[0]] = True
    return TextBatch(qwen=qwen, clip=torch.stack(clip_list), mask=mask)


def transformer_kwargs(
    transformer, model_input: torch.Tensor, text: TextBatch, sigmas: torch.Tensor, pixel_size: tuple[int, int]
) -> dict:
    """Keyword arguments for `transformer(**kwargs, return_dict=False)`; with NABLA installed (nabla.py),
    the `sparse_params` the pipeline would pass for this shape."""
    device = model_input.device
    _, frames, height, width, _ = model_input.shape
    extra = {}
    settings = getattr(transformer, "_k5_nabla", None)
    if settings is not None:
        from k5tune.models.kandinsky5.nabla import cached_sparse_params

        patch = transformer.config.patch_size
        extra["sparse_params"] = cached_sparse_params((frames // patch[0], height // patch[1], width // patch[2]),
                                                      settings, device)
    return {**extra,
        "hidden_states": model_input,
        "encoder_hidden_states": text.qwen.to(device=device, dtype=model_input.dtype),
        "pooled_projections": text.clip.to(device=device, dtype=model_input.dtype),
        "timestep": (sigmas * NUM_TRAIN_TIMESTEPS).to(device=device, dtype=model_input.dtype),
        "visual_rope_pos": visual_rope_positions((frames, height, width), transformer.config.patch_size, device),
        "text_rope_pos": torch.arange(text.qwen.shape[1], device=device),
        "scale_factor": rope_scale_factor(*pixel_size),
    }


def with_first_frame_condition(noisy: torch.Tensor, first_frame: torch.Tensor) -> torch.Tensor:
    """Image-to-video input, as `Kandinsky5I2VPipeline.prepare_latents` builds it.

    The image's latent replaces latent frame 0 of the noisy channels, the 16 conditioning channels
    stay zero, and the mask channel is 1 at frame 0 only.
    """
    conditioned = noisy.clone()
    conditioned[:, :1] = first_frame.to(noisy.dtype)
    batch, frames, height, width, _ = noisy.shape
    mask = torch.zeros(batch, frames, height, width, 1, dtype=noisy.dtype, device=noisy.device)
    mask[:, :1] = 1
    return with_conditioning_channels(conditioned, None, mask)


def first_frame_loss_weights(batch: int, frames: int) -> torch.Tensor:
    """(B, T) weights that keep the clean conditioning frame out of the loss."""
    weights = torch.ones(batch, frames)
    weights[:, 0] = 0
    return weights

