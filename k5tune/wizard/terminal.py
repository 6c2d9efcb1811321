"""The wizard's terminal: input and output through a `Terminal` (tests script the answers; `--yes` is a
terminal that answers every question with its default), and the prompts built on it: a question asked
until its answer is accepted, a numbered choice, a yes/no.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, Protocol

from k5tune.errors import ConfigError

LONG_DEFAULT = 40  # characters; longer defaults are printed on their own line


class BadAnswer(ValueError):
    """An answer the schema (or the wizard) rejects; the question is asked again with this message."""


class Aborted(Exception):
    """The user declined to write the files."""


class Terminal(Protocol):
    interactive: bool

    def ask(self, prompt: str) -> str:
        """One line of input (raises EOFError at end of input, KeyboardInterrupt on Ctrl-C)."""

    def say(self, text: str = "") -> None: ...


class ConsoleTerminal:
    """stdin/stdout; line editing with readline where the platform has it."""

    interactive = True

    def __init__(self) -> None:
        if sys.stdin.isatty():
            try:
                import readline  # noqa: F401  (imported for its side effect: arrow keys and history in input())
            except ImportError:
                pass

    def ask(self, prompt: str) -> str:
        return input(prompt)

    def say(self, text: str = "") -> None:
        print(text, flush=True)


class DefaultsTerminal:
    """`--yes`: every question takes its default; the question and the choice are still printed."""

    interactive = False

    def __init__(self, say: Callable[[str], None] | None = None) -> None:
        self._say = say or (lambda text: print(text, flush=True))

    def ask(self, prompt: str) -> str:
        self._say(prompt.rstrip() + " (default)")
        return ""

    def say(self, text: str = "") -> None:
        self._say(text)


def show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, str):
        return value
    return json.dumps(value)


class Prompter:
    """Questions on `self.io`: the answer is checked, and a rejected one is asked again with the reason."""

    io: Terminal

    def ask(self, question: str, default: Any, check: Callable[[str], Any], hint: str | None = None) -> Any:
        """Ask until `check` accepts the answer; an empty answer takes the default."""
        if hint:
            self.io.say(f"  {hint}")
        shown = show(default)
        if len(shown) > LONG_DEFAULT:  # a long prompt line scrolls or wraps badly: show the default above it
            self.io.say(f"  default: {shown}")
        while True:
            bracket = "Enter = the default above" if len(shown) > LONG_DEFAULT else shown
            raw = self.io.ask(f"{question} [{bracket}]: " if shown else f"{question}: ").strip()
            text = raw if raw else shown
            try:
                return check(text)
            except BadAnswer as exc:
                if not self.io.interactive:
                    raise ConfigError(f"{question}: the default {show(default)!r} is not valid: {exc}") from None
                self.io.say(f"  ! {exc}")

    def choose(self, question: str, options: list[tuple[str, str]], default: str) -> str:
        """A numbered list; the answer is a number or a name."""
        self.io.say(f"{question}:")
        width = max(len(name) for name, _ in options)
        for number, (name, text) in enumerate(options, 1):
            if self.io.interactive:  # --yes: the list is noise in a script's log
                self.io.say(f"  {number:>2}. {name:<{width}}  {text}")
        names = [name for name, _ in options]

        def check(text: str) -> str:
            if text.isdigit() and 1 <= int(text) <= len(names):
                return names[int(text) - 1]
            if text in names:
                return text
            raise BadAnswer(f"'{text}' is not one of the choices; type a number 1-{len(names)} or a name")

        return self.ask(f"{question}, 1-{len(names)} or a name", default, check)

    def confirm(self, question: str, default: bool) -> bool:
        def check(text: str) -> bool:
            lowered = text.lower()
            if lowered in ("y", "yes"):
                return True
            if lowered in ("n", "no"):
                return False
            raise BadAnswer("answer y or n")

        return self.ask(f"{question} (y/n)", "y" if default else "n", check)

