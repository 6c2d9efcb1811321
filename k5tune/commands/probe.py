"""check that training learns the content of clips: two motions and a noise control, on the tiny model

Train three LoRAs of the tiny model with identical captions: on shapes moving right, on shapes moving down,
and on random noise; compare their eval losses on held-out clips of both motions. Passes when each motion
LoRA's eval loss is at least 10% lower on its own motion and the noise LoRA prefers neither. Runs on the CPU
in minutes.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default="k5tune-probe", help="folder for the probe's files (default: k5tune-probe)")
    parser.add_argument("--steps", type=int, default=300, help="training steps of each LoRA (default 300)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the clips and the training (default 0)")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from k5tune.probe import run_probe

    result = run_probe(args.workdir, steps=args.steps, seed=args.seed)
    print(result.table())
    return 0 if result.learned and not result.control_passes else 1
