"""Write docs/config-reference.md from the schema (run: python -m k5tune.config.reference).

The schema is the single source of truth; a test fails when the committed page is stale.
"""

from __future__ import annotations

import json
import sys

from k5tune.config.datasets import ImageBackend, TextEmbedsBackend, VideoBackend, VideoOptions
from k5tune.config.fields import Setting, config_fields, describe


def _row(setting: Setting) -> str:
    aliases = f" (alias: {', '.join(f'`{a}`' for a in setting.aliases)})" if setting.aliases else ""
    default = "required" if setting.required else f"`{json.dumps(setting.default, default=str)}`"
    text = setting.description.replace("|", "\\|")
    return f"| `{setting.name}`{aliases} | {default} | {text} |"


def _table(settings: list[Setting]) -> list[str]:
    return ["| key | default | meaning |", "|---|---|---|", *(_row(setting) for setting in settings)]


def _sections(settings: list[Setting]) -> list[str]:
    """One table per section, in the order the sections first appear (as the web form's fieldsets)."""
    titles = list(dict.fromkeys(setting.section for setting in settings))
    lines: list[str] = []
    for title in titles:
        lines += [f"### {title}", "", *_table([s for s in settings if s.section == title]), ""]
    return lines


def render() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated from the schema by `python -m k5tune.config.reference`; do not edit by hand.",
        "Every `config.json` key can also be given on the command line as `--key=value`.",
        "",
        "## config/config.json",
        "",
        *_sections(config_fields()),
        "## config/multidatabackend.json",
        "",
        "A JSON list of backends. `dataset_type` picks the kind.",
        "",
        "### Video backend (`dataset_type: video`)",
        "",
        *_table(describe(VideoBackend, skip=("dataset_type",))),
        "",
        "#### The `video` section",
        "",
        *_table(describe(VideoOptions)),
        "",
        "### Image backend (`dataset_type: image`), trained as 1-frame clips",
        "",
        *_table(describe(ImageBackend, skip=("dataset_type",))),
        "",
        "### Text-embedding cache (`dataset_type: text_embeds`)",
        "",
        *_table(describe(TextEmbedsBackend, skip=("dataset_type",))),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(render())
