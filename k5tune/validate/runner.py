"""Generate validation videos with the LoRA as it is at this step.

The diffusers pipelines do the sampling (they are the reference for inference conventions). Prompts
come from the text cache, so the text encoders are never loaded during training; the VAE is loaded
on the device only for decoding and freed afterwards.

Image-to-video flavours need a conditioning image per prompt: `validation_image` (one path for all
prompts, or one per prompt), or else the first frame of a text-to-video generation made by the same
checkpoint through `Kandinsky5T2VPipeline` (conditioning channels zero, as the T2V models use them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from k5tune.config.validation import negative_prompt, validation_image_paths, validation_prompts
from k5tune.errors import ConfigError
from k5tune.validate.media import write_mp4


@dataclass
class ValidationVideo:
    prompt: str
    path: Path
    image: Path | None = None  # I2V conditioning image used


def _embeddings(cache, prompt: str, negative: str, device) -> dict:
    qwen, clip = cache.prompt(prompt)
    negative_qwen, negative_clip = cache.prompt(negative)
    return {
        "prompt_embeds_qwen": qwen[None].to(device),
        "prompt_embeds_clip": clip[None].to(device),
        "prompt_cu_seqlens": torch.tensor([0, qwen.shape[0]], dtype=torch.int32, device=device),
        "negative_prompt_embeds_qwen": negative_qwen[None].to(device),
        "negative_prompt_embeds_clip": negative_clip[None].to(device),
        "negative_prompt_cu_seqlens": torch.tensor([0, negative_qwen.shape[0]], dtype=torch.int32, device=device),
    }


def first_frame_from_text(components, transformer, vae, embeddings: dict, height: int, width: int,
                          steps: int, guidance: float, generator: torch.Generator):
    """A conditioning image for I2V validation: one frame generated as text-to-video by the same model."""
    from diffusers import Kandinsky5T2VPipeline
    from PIL import Image

    if not getattr(transformer.config, "visual_cond", False):
        raise ConfigError("this model cannot make a first frame from text; set validation_image",
                          key="validation_image")
    pipe = Kandinsky5T2VPipeline(transformer=transformer, vae=vae, text_encoder=None, tokenizer=components.tokenizer(),
                                 text_encoder_2=None, tokenizer_2=components.tokenizer_2(),
                                 scheduler=components.scheduler())
    pipe.set_progress_bar_config(disable=True)
    frames = pipe(**embeddings, height=height, width=width, num_frames=1, num_inference_steps=steps,
                  guidance_scale=guidance, generator=generator, output_type="np").frames[0]
    return Image.fromarray((frames[0].clip(0, 1) * 255 + 0.5).astype("uint8"))


@torch.no_grad()
def run_validation(
    components, transformer, cache, train_config, runtime, step: int, output_dir: Path, tracker=None
) -> list[ValidationVideo]:
    from PIL import Image

    prompts = validation_prompts(train_config)
    if not prompts or train_config.disable_validation:
        return []
    i2v = components.source.flavour.is_i2v
    image_paths = validation_image_paths(train_config, len(prompts)) if i2v else None
    height, width = train_config.validation_size
    was_training = transformer.training
    transformer.eval()
    vae = components.vae(dtype=runtime.vae_dtype, device=runtime.device)
    # prompts come from the cache: the text encoders are not loaded during training
    pipe = components.pipeline(transformer=transformer, vae=vae, text_encoder=None, text_encoder_2=None)
    pipe.set_progress_bar_config(disable=True)
    videos: list[ValidationVideo] = []
    folder = output_dir / "validation" / f"step-{step:06d}"
    for index, prompt in enumerate(prompts):
        embeddings = _embeddings(cache, prompt, negative_prompt(train_config), runtime.device)
        generator = torch.Generator(device="cpu").manual_seed(train_config.validation_seed + index)
        extra, image_path = {}, None
        if i2v:
            if image_paths:
                image_path = image_paths[index]
                image = Image.open(image_path).convert("RGB")
            else:
                image = first_frame_from_text(components, transformer, vae, embeddings, height, width,
                                              train_config.validation_num_inference_steps,
                                              train_config.validation_guidance, generator)
                image_path = folder / f"prompt-{index:02d}-first-frame.png"
                image_path.parent.mkdir(parents=True, exist_ok=True)
                image.save(image_path)
            extra["image"] = image
        frames = pipe(
            **extra,
            **embeddings,
            height=height,
            width=width,
            num_frames=train_config.validation_num_video_frames,
            num_inference_steps=train_config.validation_num_inference_steps,
            guidance_scale=train_config.validation_guidance,
            generator=generator,
            output_type="np",
        ).frames[0]
        path = write_mp4(frames, folder / f"prompt-{index:02d}.mp4", fps=train_config.frame_rate)
        videos.append(ValidationVideo(prompt=prompt, path=path, image=image_path))
        if tracker is not None:
            tracker.video(step, f"prompt-{index:02d}", path, frames, train_config.frame_rate, prompt)
    (folder / "prompts.txt").write_text("\n".join(f"prompt-{i:02d}.mp4\t{p}" for i, p in enumerate(prompts)) + "\n")
    components.unload("vae")
    runtime.empty_cache()
    transformer.train(was_training)
    return videos
