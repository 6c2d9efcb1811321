"""`k5tune generate`: one video from a base model, optionally with a LoRA and (I2V) an image.

The diffusers Kandinsky 5 pipelines do the work; k5tune adds model/flavour resolution, LoRA loading
in any known key layout (diffusers, ComfyUI, PEFT), input checks and mp4 writing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from k5tune.config.frames import MIN_I2V_FRAMES, frame_count_problem, parse_resolution, snap_resolution
from k5tune.errors import ConfigError
from k5tune.models.flavours import DEFAULT_FLAVOUR, FLAVOURS, require_flavour
from k5tune.models.kandinsky5 import Kandinsky5Components, resolve_model_source
from k5tune.runtime import Runtime
from k5tune.validate.media import write_mp4


@dataclass
class GenerateRequest:
    model: str
    prompt: str
    output: Path
    flavour: str | None = None
    lora: str | None = None
    image: str | None = None
    frames: int = 61
    resolution: str = "512x768"
    steps: int = 50
    guidance: float = 5.0
    seed: int = 42
    negative_prompt: str | None = None
    fps: float = 24.0
    lora_scale: float = 1.0
    device: str | None = None


def infer_flavour(model: str) -> str:
    """The flavour of a hub id from the registry, or the task of a local folder from its pipeline class."""
    for name, flavour in FLAVOURS.items():
        if flavour.hub_id == model:
            return name
    index = Path(model) / "model_index.json"
    if index.is_file() and json.loads(index.read_text()).get("_class_name") == "Kandinsky5I2VPipeline":
        return "i2v-lite-5s"
    return DEFAULT_FLAVOUR


def check_request(request: GenerateRequest) -> tuple[str, int, int]:
    flavour = require_flavour(request.flavour or infer_flavour(request.model), "--flavour")
    problem = frame_count_problem(request.frames)
    if problem:
        raise ConfigError(problem, key="--frames")
    try:
        height, width = snap_resolution(*parse_resolution(request.resolution))
    except ValueError as exc:
        raise ConfigError(str(exc), key="--resolution") from None
    if FLAVOURS[flavour].is_i2v:
        if not request.image:
            raise ConfigError(f"{flavour} is image-to-video: give the first frame with --image PATH", key="--image")
        if request.frames < MIN_I2V_FRAMES:
            raise ConfigError(f"image-to-video needs at least {MIN_I2V_FRAMES} frames (the I2V pipeline returns "
                              "NaN frames at 13 or fewer)", key="--frames")
    if request.image and not Path(request.image).is_file():
        raise ConfigError(f"image not found: {request.image}", key="--image")
    if request.image and not FLAVOURS[flavour].is_i2v:
        raise ConfigError(f"--image is for image-to-video flavours; {flavour} is text-to-video", key="--image")
    return flavour, height, width


@torch.no_grad()
def generate(request: GenerateRequest) -> Path:
    from PIL import Image

    from k5tune.lora.convert import load_lora_into_transformer
    from k5tune.models.kandinsky5.nabla import NablaSettings
    from k5tune.models.kandinsky5.nabla import install as install_nabla

    flavour, height, width = check_request(request)
    runtime = Runtime.detect("bf16", request.device)
    components = Kandinsky5Components(resolve_model_source(flavour, request.model))
    transformer = components.transformer(dtype=runtime.compute_dtype, device=runtime.device)
    settings = NablaSettings.from_transformer_config(dict(transformer.config))
    if settings is not None:  # the sparse attention the checkpoint runs, as training and validation run it
        install_nabla(transformer, settings)
    if request.lora:
        adapter = load_lora_into_transformer(transformer, request.lora)
        transformer.set_adapters([adapter], weights=[request.lora_scale])
    pipe = components.pipeline(
        transformer=transformer,
        vae=components.vae(dtype=runtime.vae_dtype, device=runtime.device),
        text_encoder=components.text_encoder(dtype=runtime.text_dtype, device=runtime.device),
        text_encoder_2=components.text_encoder_2(dtype=runtime.text_dtype, device=runtime.device),
    )
    extra = {"image": Image.open(request.image).convert("RGB")} if request.image else {}
    if request.negative_prompt is not None:
        extra["negative_prompt"] = request.negative_prompt
    frames = pipe(
        prompt=request.prompt,
        height=height,
        width=width,
        num_frames=request.frames,
        num_inference_steps=request.steps,
        guidance_scale=request.guidance,
        generator=torch.Generator(device="cpu").manual_seed(request.seed),
        output_type="np",
        **extra,
    ).frames[0]
    return write_mp4(frames, request.output, fps=request.fps)
