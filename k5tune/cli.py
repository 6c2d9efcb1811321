"""The `k5tune` command: build the parser from the command registry and call one command's `run`.

Each command lives in its own module under k5tune/commands/. User mistakes (K5TuneError) become one
line on stderr and exit code 2; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from k5tune import __version__
from k5tune.commands import COMMANDS, command_help, command_name, takes_overrides
from k5tune.errors import K5TuneError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="k5tune",
        description="Train LoRA adapters for the Kandinsky 5.0 Video models (T2V/I2V, Lite/Pro).",
    )
    parser.add_argument("--version", action="version", version=f"k5tune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        line, description = command_help(command)
        command_parser = sub.add_parser(command_name(command), help=line, description=description)
        command.add_arguments(command_parser)
        command_parser.set_defaults(func=command.run, takes_overrides=takes_overrides(command))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(argv)
    # only commands that read config.json take the `--key=value` overrides parse_known_args leaves over
    if extra and not getattr(args, "takes_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.func(args, extra) or 0)
    except K5TuneError as exc:
        print(f"k5tune: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("k5tune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
