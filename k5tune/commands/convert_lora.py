"""convert a LoRA between the diffusers and ComfyUI key layouts

Convert a LoRA file between the diffusers and ComfyUI key layouts. Reads diffusers, ComfyUI, PEFT
('base_model.model.') and unprefixed files; tensors are copied bit for bit and the scale (alpha / rank) is
kept: as '.alpha' tensors for ComfyUI, as the peft config in the 'lora_adapter_metadata' header for
diffusers. The k5tune.* header entries are kept.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "input", metavar="IN",
        help="LoRA .safetensors file, or a folder holding pytorch_lora_weights.safetensors (a training output)",
    )
    parser.add_argument(
        "output", metavar="OUT",
        help="file to write (replaced atomically), or an existing folder: then pytorch_lora_weights.safetensors "
        "for --to diffusers, <IN name>_comfyui.safetensors for --to comfyui",
    )
    parser.add_argument(
        "--to", required=True, choices=["comfyui", "diffusers"],
        help="layout to write: 'comfyui' (diffusion_model.*.lora_down/lora_up/alpha, for ComfyUI's native "
        "Kandinsky 5 loader) or 'diffusers' (transformer.*.lora_A/lora_B, for load_lora_weights and k5tune)",
    )


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from k5tune.lora.convert import convert_file

    written, layout, modules = convert_file(args.input, args.output, args.to)
    print(f"wrote {written}: {modules} LoRA modules, {layout} layout -> {args.to} layout")
    return 0
