"""interactive wizard that writes config/config.json and config/multidatabackend.json

Ask for the flavour, dataset folder, resolution, frames, a memory preset for your GPU and validation, check
every answer with the config schema, and write config/config.json and config/multidatabackend.json (existing
values are the defaults; other keys are kept). With --example, copy the packaged example files instead.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--example", action="store_true", help="write the packaged *.example files")
    parser.add_argument("--directory", default="config", help="where to write (default: config)")
    parser.add_argument("--force", action="store_true", help="with --example: overwrite existing example files")
    parser.add_argument("--yes", "-y", action="store_true",
                        help="take every default without asking (scripts, CI; needs no terminal)")
    parser.add_argument("--advanced", action="store_true",
                        help="also walk through the advanced sections: attention (NABLA), eval loss, rollout, CREPA")
    parser.add_argument("--config", help="config file to write (default: DIRECTORY/config.json)")
    parser.add_argument("--datasets", help="dataset file to write (default: the one the existing config names, "
                        "else DIRECTORY/multidatabackend.json)")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    if not args.example:
        from k5tune.wizard import run_command

        return run_command(yes=args.yes, directory=args.directory, config=args.config, datasets=args.datasets,
                           advanced=args.advanced)
    from k5tune.config.loading import EXAMPLES_DIR

    target = Path(args.directory)
    target.mkdir(parents=True, exist_ok=True)
    for example in sorted(EXAMPLES_DIR.glob("*.example")):
        destination = target / example.name
        if destination.exists() and not args.force:
            print(f"kept existing {destination}")
            continue
        destination.write_text(example.read_text(encoding="utf-8"), encoding="utf-8")
        print(f"wrote {destination}")
    print(f"next: cp {target}/config.json.example {target}/config.json and "
          f"cp {target}/multidatabackend.json.example {target}/multidatabackend.json, then edit them")
    return 0
