"""write a tiny random-weight model in diffusers layout

Write a tiny random-weight Kandinsky 5 model (real classes, diffusers layout) for tests, the demo and
offline trials.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", help="output folder")
    parser.add_argument("--i2v", action="store_true", help="an image-to-video model (Kandinsky5I2VPipeline)")
    parser.add_argument("--nabla", action="store_true",
                        help="its transformer config asks for NABLA sparse attention, as the 10 s and Pro HD "
                        "checkpoints do (training and generation sizes must then be multiples of 128 px)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--dinov2", action="store_true",
                        help="also write a tiny random DINOv2 (CREPA's encoder) to DIRECTORY/dinov2 (crepa_encoder)")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from k5tune.models.tiny import make_tiny_dinov2, make_tiny_model

    path = make_tiny_model(args.directory, i2v=args.i2v, seed=args.seed, nabla=args.nabla)
    kind = ("image-to-video" if args.i2v else "text-to-video") + (" (NABLA attention)" if args.nabla else "")
    print(f"tiny {kind} model written to {path}")
    if args.dinov2:
        print(f"tiny DINOv2 (crepa_encoder) written to {make_tiny_dinov2(path / 'dinov2', seed=args.seed)}")
    return 0
