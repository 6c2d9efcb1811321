"""The `k5tune` subcommands, one module each; k5tune.cli builds the parser from COMMANDS.

A command module is named after its command (make_tiny_model is `make-tiny-model`). Its docstring is its
help: the first line is its line in `k5tune --help`, the rest the top of its own --help (one paragraph,
rewrapped). It defines `add_arguments(parser)` and `run(args, extra) -> exit code`, and
`TAKES_OVERRIDES = True` where `--key=value` config overrides may follow (the default is False). Modules
import only the standard library at the top: everything heavy is imported inside `run`, so
`k5tune --help` and `train --dry-run` stay fast and load no model code.
"""

from __future__ import annotations

import argparse
from typing import Protocol

from k5tune.commands import (
    bench,
    cache,
    configure,
    convert_lora,
    demo,
    estimate,
    generate,
    make_tiny_model,
    probe,
    server,
    train,
)


class Command(Protocol):
    __name__: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace, extra: list[str]) -> int: ...


# in the order `k5tune --help` lists them
COMMANDS: tuple[Command, ...] = (
    train, cache, demo, generate, bench, estimate, server, configure, make_tiny_model, convert_lora, probe,
)


def command_name(command: Command) -> str:
    """As typed on the command line: the module's name with dashes."""
    return command.__name__.rpartition(".")[2].replace("_", "-")


def command_help(command: Command) -> tuple[str, str]:
    """(its line in `k5tune --help`, the top of its own --help), from the module's docstring.

    argparse %-formats help lines (not descriptions), so the line's % signs are escaped. The rest is
    folded into one paragraph, as argparse's default formatter does; train's raw one (kept for its
    epilog) would otherwise print the docstring's line breaks.
    """
    line, _, rest = (command.__doc__ or "").strip().partition("\n")
    return line.strip().replace("%", "%%"), " ".join(rest.split())


def takes_overrides(command: Command) -> bool:
    """Whether `--key=value` config overrides may follow the command (only for those reading config.json)."""
    return bool(getattr(command, "TAKES_OVERRIDES", False))
