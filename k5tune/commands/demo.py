"""train a tiny random-weight model on synthetic clips, on CPU, in minutes

Build a tiny Kandinsky 5 model and synthetic captioned clips, then run the whole training pipeline (cache,
train, validate, save) on CPU.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default="k5tune-demo", help="folder for the demo's files (default: k5tune-demo)")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from k5tune.demo import run_demo
    from k5tune.train.outputs import describe_outputs

    workdir, result = run_demo(args.workdir)
    print(f"demo finished in {workdir} (its config is {workdir}/config/config.json)")
    print(describe_outputs(result))
    return 0
