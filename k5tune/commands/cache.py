"""discover, probe and cache the dataset only; print the dataset report

Discover and probe the clips, cache VAE latents and text embeddings, print the report.
"""

from __future__ import annotations

import argparse

from k5tune.commands._shared import add_config_arguments, load, print_dry_run

TAKES_OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "Config keys can be overridden as in `k5tune train` (see `k5tune train --help`)."
    add_config_arguments(parser)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    loaded = load(args, extra)
    if args.dry_run:
        return print_dry_run(loaded)
    from k5tune.progress import TqdmProgress
    from k5tune.workflow import cache

    stage = cache(loaded, TqdmProgress())
    print(stage.summary())
    return 0
