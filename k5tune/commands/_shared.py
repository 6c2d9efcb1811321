"""What `train` and `cache` share: the --config/--dry-run options, loading with overrides, --dry-run output."""

from __future__ import annotations

import argparse
import json
import sys


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="config/config.json", help="config file (default: config/config.json)")
    parser.add_argument(
        "--dry-run", action="store_true", help="validate both files, print the resolved settings and exit"
    )


def load(args: argparse.Namespace, extra: list[str]):
    from k5tune.config import load_config, parse_overrides

    return load_config(args.config, parse_overrides(extra))


def print_dry_run(loaded, derived: dict | None = None) -> int:
    print(json.dumps({**loaded.resolved(), **({"derived": derived} if derived else {})}, indent=2))
    for notice in loaded.notices():
        print(f"note: {notice}", file=sys.stderr)
    return 0
