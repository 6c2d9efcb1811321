"""Write docs/config-reference.md from the schema (run: python -m k5tune.config.reference).

The schema is the single source of truth; a test fails when the committed page is stale.
"""

from __future__ import annotations

import json
import sys

from pydantic import AliasChoices, BaseModel

from k5tune.config.datasets import ImageBackend, TextEmbedsBackend, VideoBackend, VideoOptions
from k5tune.config.schema import TrainConfig


def _default(info) -> str:
    value = info.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    return f"`{json.dumps(value, default=str)}`"


def _aliases(info) -> str:
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        others = [str(a) for a in alias.choices][1:]
        return f" (alias: {', '.join(f'`{a}`' for a in others)})" if others else ""
    return ""


def _table(model: type[BaseModel], skip: tuple[str, ...] = ()) -> list[str]:
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        text = (info.description or "").replace("|", "\\|")
        rows.append(f"| `{name}`{_aliases(info)} | {_default(info)} | {text} |")
    return rows


def render() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated from the schema by `python -m k5tune.config.reference`; do not edit by hand.",
        "Every `config.json` key can also be given on the command line as `--key=value`.",
        "",
        "## config/config.json",
        "",
        *_table(TrainConfig),
        "",
        "## config/multidatabackend.json",
        "",
        "A JSON list of backends. `dataset_type` picks the kind.",
        "",
        "### Video backend (`dataset_type: video`)",
        "",
        *_table(VideoBackend, skip=("dataset_type",)),
        "",
        "#### The `video` section",
        "",
        *_table(VideoOptions),
        "",
        "### Image backend (`dataset_type: image`), trained as 1-frame clips",
        "",
        *_table(ImageBackend, skip=("dataset_type",)),
        "",
        "### Text-embedding cache (`dataset_type: text_embeds`)",
        "",
        *_table(TextEmbedsBackend, skip=("dataset_type",)),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(render())
