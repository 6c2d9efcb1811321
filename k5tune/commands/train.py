"""cache, train, validate and save a LoRA from config/config.json

Read config/config.json and the dataset file it names, cache latents and text embeddings, train the LoRA,
validate and save.
"""

from __future__ import annotations

import argparse
import json

from k5tune.commands._shared import add_config_arguments, load, print_dry_run

TAKES_OVERRIDES = True


def config_keys_epilog() -> str:
    """Every config key with its default and description, read from the schema."""
    from k5tune.config.fields import config_fields

    lines = ["config keys (any of them can be given as --key=value or --key value; bare --flag means true):"]
    for setting in config_fields():
        shown = json.dumps(setting.default, default=str)
        lines.append(f"  --{setting.name} (default {shown})\n      {setting.description}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = config_keys_epilog()
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the epilog's line breaks
    add_config_arguments(parser)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    import os

    from k5tune.errors import K5TuneError
    from k5tune.train.events import record_early_failure

    try:
        loaded = load(args, extra)
    except K5TuneError as exc:
        record_early_failure(exc)  # the web UI's run learns why from its events file
        raise
    if args.dry_run:
        from k5tune.train.summary import training_summary

        return print_dry_run(loaded, training_summary(loaded))
    from k5tune import distributed
    from k5tune.progress import TqdmProgress
    from k5tune.train.outputs import describe_outputs
    from k5tune.workflow import train

    if loaded.train.num_processes > 1 and "WORLD_SIZE" not in os.environ:
        # start the processes for the user: torchrun runs this same command once per GPU
        return distributed.launch(loaded.train.num_processes, ["train", "--config", args.config, *extra])
    try:
        result = train(loaded, progress=TqdmProgress())
    finally:
        distributed.shutdown()
    if result.is_main:
        print(describe_outputs(result))
    return 0
