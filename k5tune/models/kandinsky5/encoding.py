"""Prompt and video encoding with the conventions of the diffusers Kandinsky 5 pipelines.

Prompts go through the pipeline's own `encode_prompt` (template, cleaning, truncation, cut of the
template tokens), so cached embeddings are exactly what inference would use. Video latents follow
the pipeline's decode path in reverse: pixels in [-1, 1], `vae.encode`, times the VAE config's
scaling factor, channel-last `(B, T, H, W, C)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Qwen tokens of a caption kept after the template: the diffusers pipelines' own `max_sequence_length`
# default, so training sees a long caption cut where inference cuts it (config: caption_max_tokens).
MAX_CAPTION_TOKENS = 512


@dataclass
class PromptEmbedding:
    """One caption: Qwen last hidden state (unpadded, template cut) and CLIP pooled output."""

    qwen: torch.Tensor  # (tokens, text_dim)
    clip: torch.Tensor  # (clip_dim,)


def text_pipeline(components, text_encoder, text_encoder_2):
    """A pipeline holding only the text parts, to call its encode_prompt."""
    from diffusers import Kandinsky5T2VPipeline

    pipe = Kandinsky5T2VPipeline(
        transformer=None,
        vae=None,
        text_encoder=text_encoder,
        tokenizer=components.tokenizer(),
        text_encoder_2=text_encoder_2,
        tokenizer_2=components.tokenizer_2(),
        scheduler=None,
    )
    pipe.prompt_template_encode_start_idx = components.prompt_start_index
    return pipe


def caption_tokens(pipe, captions: list[str]) -> list[int]:
    """Qwen tokens of each caption after the pipeline's template and cleaning (what the cap applies to).
    Needs only the pipeline's tokenizer (`text_pipeline(components, None, None)` will do)."""
    from diffusers.pipelines.kandinsky5.pipeline_kandinsky import prompt_clean

    texts = [pipe.prompt_template.format(prompt_clean(caption)) for caption in captions]
    mask = pipe.tokenizer(text=texts, images=None, videos=None, return_tensors="pt", padding="longest")["attention_mask"]
    return [int(n) - pipe.prompt_template_encode_start_idx for n in mask.sum(1)]


def _encode_batch(pipe, captions: list[str], device, dtype, max_tokens: int) -> list[PromptEmbedding]:
    qwen, clip, cu_seqlens = pipe.encode_prompt(
        captions, max_sequence_length=max_tokens, device=device, dtype=dtype
    )
    lengths = cu_seqlens.diff().tolist()
    return [
        PromptEmbedding(qwen=qwen[i, :length].detach().to("cpu").clone(), clip=clip[i].detach().to("cpu").clone())
        for i, length in enumerate(lengths)
    ]


@torch.no_grad()
def encode_prompts(pipe, captions: list[str], device: torch.device, dtype: torch.dtype,
                   max_tokens: int = MAX_CAPTION_TOKENS) -> list[PromptEmbedding]:
    """Encode captions in one batch and split them back into unpadded per-caption embeddings.

    Qwen is causal and the tokenizer pads on the right, so a caption's tokens never see padding:
    batching gives the same embedding as encoding alone. Captions the pipeline truncates are encoded
    alone: its truncation step (diffusers 0.42.1) reads the padded ids of the whole batch and cuts the
    padding, as if it were text, off every shorter caption of the batch, leaving them empty.
    """
    too_long = [n > max_tokens for n in caption_tokens(pipe, captions)]
    batched = [i for i, long in enumerate(too_long) if not long]
    out: list[PromptEmbedding | None] = [None] * len(captions)
    if batched:
        encoded = _encode_batch(pipe, [captions[i] for i in batched], device, dtype, max_tokens)
        for i, embedding in zip(batched, encoded, strict=True):
            out[i] = embedding
    for i, long in enumerate(too_long):
        if long:
            out[i] = _encode_batch(pipe, [captions[i]], device, dtype, max_tokens)[0]
    return out  # type: ignore[return-value]


@torch.no_grad()
def encode_video(vae, pixels: torch.Tensor, generator: torch.Generator | None = None, sample: bool = False) -> torch.Tensor:
    """Pixels (B, 3, F, H, W) in [-1, 1] -> scaled latents (B, F', H/8, W/8, C), channel-last.

    The posterior mean is used by default so a cache is deterministic; `sample=True` draws from the
    posterior as the I2V pipeline does for its conditioning image.
    """
    parameter = next(vae.parameters())
    pixels = pixels.to(device=parameter.device, dtype=parameter.dtype)
    posterior = vae.encode(pixels).latent_dist
    latents = posterior.sample(generator=generator) if sample else posterior.mode()
    latents = latents * vae.config.scaling_factor
    return latents.permute(0, 2, 3, 4, 1).contiguous()
