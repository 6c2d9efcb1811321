"""Generate validation videos with the LoRA as it is at this step.

The diffusers pipeline does the sampling (it is the reference for inference conventions). Prompts
come from the text cache, so the text encoders are never loaded during training; the VAE is loaded
on the device only for decoding and freed afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from k5tune.validate.media import write_mp4

# The negative prompt the diffusers pipeline uses when none is given.
PIPELINE_NEGATIVE_PROMPT = (
    "Static, 2D cartoon, cartoon, 2d animation, paintings, images, worst quality, low quality, ugly, "
    "deformed, walking backwards"
)


def validation_prompts(train_config) -> list[str]:
    prompts: list[str] = []
    if train_config.validation_prompt:
        prompts.append(train_config.validation_prompt)
    if train_config.validation_prompt_library:
        library = Path(train_config.validation_prompt_library)
        prompts += [line.strip() for line in library.read_text(encoding="utf-8").splitlines() if line.strip()]
    return prompts


def negative_prompt(train_config) -> str:
    return train_config.validation_negative_prompt or PIPELINE_NEGATIVE_PROMPT


@dataclass
class ValidationVideo:
    prompt: str
    path: Path


@torch.no_grad()
def run_validation(
    components, transformer, cache, train_config, runtime, step: int, output_dir: Path, tracker=None
) -> list[ValidationVideo]:
    prompts = validation_prompts(train_config)
    if not prompts or train_config.disable_validation:
        return []
    height, width = train_config.validation_size
    was_training = transformer.training
    transformer.eval()
    vae = components.vae(dtype=runtime.vae_dtype, device=runtime.device)
    # prompts come from the cache: the text encoders are not loaded during training
    pipe = components.pipeline(transformer=transformer, vae=vae, text_encoder=None, text_encoder_2=None)
    pipe.set_progress_bar_config(disable=True)
    negative_qwen, negative_clip = cache.prompt(negative_prompt(train_config))
    videos: list[ValidationVideo] = []
    folder = output_dir / "validation" / f"step-{step:06d}"
    for index, prompt in enumerate(prompts):
        qwen, clip = cache.prompt(prompt)
        generator = torch.Generator(device="cpu").manual_seed(train_config.validation_seed + index)
        frames = pipe(
            prompt_embeds_qwen=qwen[None].to(runtime.device),
            prompt_embeds_clip=clip[None].to(runtime.device),
            prompt_cu_seqlens=torch.tensor([0, qwen.shape[0]], dtype=torch.int32, device=runtime.device),
            negative_prompt_embeds_qwen=negative_qwen[None].to(runtime.device),
            negative_prompt_embeds_clip=negative_clip[None].to(runtime.device),
            negative_prompt_cu_seqlens=torch.tensor([0, negative_qwen.shape[0]], dtype=torch.int32,
                                                    device=runtime.device),
            height=height,
            width=width,
            num_frames=train_config.validation_num_video_frames,
            num_inference_steps=train_config.validation_num_inference_steps,
            guidance_scale=train_config.validation_guidance,
            generator=generator,
            output_type="np",
        ).frames[0]
        path = write_mp4(frames, folder / f"prompt-{index:02d}.mp4", fps=train_config.frame_rate)
        videos.append(ValidationVideo(prompt=prompt, path=path))
        if tracker is not None:
            tracker.video(step, f"prompt-{index:02d}", path, frames, train_config.frame_rate, prompt)
    (folder / "prompts.txt").write_text("\n".join(f"prompt-{i:02d}.mp4\t{p}" for i, p in enumerate(prompts)) + "\n")
    components.unload("vae")
    runtime.empty_cache()
    transformer.train(was_training)
    return videos
