"""`k5tune configure --advanced`: after the usual questions, the sections most runs leave at their defaults
(attention and NABLA, the eval loss, rollout, CREPA), each key asked with its `--help` text and checked by
the schema like every other answer. A section is only walked through when the user says so."""

from __future__ import annotations

from k5tune.config.fields import config_field
from k5tune.config.sections import SECTIONS

ADVANCED_SECTIONS = ("attention", "evaluation", "scheduled sampling (rollout)", "CREPA")


class AdvancedQuestions:
    """Mixed into the Wizard (it brings `confirm`, `_ask_config` and `io`)."""

    def ask_advanced(self) -> None:
        self.io.say()
        self.io.say("Advanced settings (Enter keeps each value; 'none' clears an optional one):")
        for section in ADVANCED_SECTIONS:
            keys = SECTIONS[section]
            if not self.confirm(f"{section} ({', '.join(keys)}): change any", False):
                continue
            for key in keys:
                setting = config_field(key)
                choices = f" ({' | '.join(map(str, setting.choices))})" if setting.choices else ""
                self._ask_config(key, f"  {key}{choices}", optional=setting.nullable, hint=setting.description)
