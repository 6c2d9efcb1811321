"""generate a video from a base model (+ LoRA, + image for I2V)

Generate a video with the diffusers Kandinsky 5 pipeline, optionally with a LoRA (diffusers, ComfyUI or PEFT
layout) and, for image-to-video flavours, a first-frame image.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="hub id or local folder in diffusers layout")
    parser.add_argument("--flavour", help="model flavour (default: from the hub id or the folder's pipeline)")
    parser.add_argument("--lora", help="LoRA file, or a training output folder")
    parser.add_argument("--lora-scale", type=float, default=1.0, help="LoRA strength (default 1.0)")
    parser.add_argument("--prompt", required=True, help="what the video shows")
    parser.add_argument("--negative-prompt", help="default: the pipeline's negative prompt")
    parser.add_argument("--image", help="first frame for image-to-video flavours (required there)")
    parser.add_argument("--frames", type=int, default=61, help="frame count, 4k+1 (default 61)")
    parser.add_argument("--resolution", default="512x768", help="HEIGHTxWIDTH (default 512x768)")
    parser.add_argument("--steps", type=int, default=50, help="denoising steps (default 50)")
    parser.add_argument("--guidance", type=float, default=5.0, help="guidance scale (default 5.0)")
    parser.add_argument("--seed", type=int, default=42, help="noise seed (default 42)")
    parser.add_argument("--fps", type=float, default=24.0, help="frame rate of the mp4 (default 24)")
    parser.add_argument("--device", help="cuda, cuda:1 or cpu (default: a GPU if there is one)")
    parser.add_argument("--output", required=True, help="the mp4 to write")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from k5tune.generate import GenerateRequest, generate

    request = GenerateRequest(
        model=args.model, prompt=args.prompt, output=Path(args.output), flavour=args.flavour, lora=args.lora,
        image=args.image, frames=args.frames, resolution=args.resolution, steps=args.steps, guidance=args.guidance,
        seed=args.seed, negative_prompt=args.negative_prompt, fps=args.fps, lora_scale=args.lora_scale,
        device=args.device,
    )
    print(f"wrote {generate(request)}")
    return 0
