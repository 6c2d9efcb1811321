"""`k5tune make-tiny-model`: a tiny random-weight model in diffusers layout."""

from __future__ import annotations

import argparse

NAME = "make-tiny-model"
HELP = "write a tiny random-weight model in diffusers layout"
DESCRIPTION = ("Write a tiny random-weight Kandinsky 5 model (real classes, diffusers layout) for tests, the demo "
               "and offline trials.")
TAKES_OVERRIDES = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", help="output folder")
    parser.add_argument("--i2v", action="store_true", help="an image-to-video model (Kandinsky5I2VPipeline)")
    parser.add_argument("--nabla", action="store_true",
                        help="its transformer config asks for NABLA sparse attention, as the 10 s and Pro HD "
                        "checkpoints do (training and generation sizes must then be multiples of 128 px)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from k5tune.models.tiny import make_tiny_model

    path = make_tiny_model(args.directory, i2v=args.i2v, seed=args.seed, nabla=args.nabla)
    kind = ("image-to-video" if args.i2v else "text-to-video") + (" (NABLA attention)" if args.nabla else "")
    print(f"tiny {kind} model written to {path}")
    return 0
