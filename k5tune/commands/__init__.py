"""The `k5tune` subcommands, one module each; k5tune.cli builds the parser from COMMANDS.

A command module declares NAME (as typed on the command line), HELP (its line in `k5tune --help`),
DESCRIPTION (the top of its own --help), TAKES_OVERRIDES (whether `--key=value` config overrides may
follow), `add_arguments(parser)` and `run(args, extra) -> exit code`. Modules import only the standard
library at the top: everything heavy is imported inside `run`, so `k5tune --help` and
`train --dry-run` stay fast and load no model code.
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
    NAME: str
    HELP: str
    DESCRIPTION: str
    TAKES_OVERRIDES: bool

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace, extra: list[str]) -> int: ...


# in the order `k5tune --help` lists them
COMMANDS: tuple[Command, ...] = (
    train, cache, demo, generate, bench, estimate, server, configure, make_tiny_model, convert_lora, probe,
)
