"""What every route needs: the project's paths, the run manager, the thumbnail cache, and reading the
project's two JSON files as the user left them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request

from k5tune.config.schema import TrainConfig
from k5tune.server import forms
from k5tune.server.outputs import Thumbnails
from k5tune.server.paths import ProjectPaths
from k5tune.server.runs import RunManager

DEFAULT_CONFIG = "config/config.json"


def read_json_file(path: Path) -> tuple[Any, str | None, str]:
    """(parsed or None, parse error or None, raw text)."""
    if not path.is_file():
        return None, None, ""
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        return json.loads(text), None, text
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}", text


@dataclass
class ServerContext:
    paths: ProjectPaths
    manager: RunManager
    thumbnails: Thumbnails
    token: str | None

    def config_values(self, config: str) -> dict:
        """config.json's settings in the schema's order ({} when missing or not an object)."""
        parsed, _, _ = read_json_file(self.paths.resolve(config))
        return forms.ordered_config(parsed) if isinstance(parsed, dict) else {}

    def named_in_config(self, config: str, key: str) -> str:
        """A path setting of config.json (output_dir, data_backend_config), else its default."""
        named = self.config_values(config).get(key)
        return named if isinstance(named, str) else TrainConfig.model_fields[key].default

    def dataset_path(self, config: str, path: str | None) -> str:
        return path or self.named_in_config(config, "data_backend_config")


def context(request: Request) -> ServerContext:
    """FastAPI dependency: the app's ServerContext."""
    return request.app.state.context


Ctx = Annotated[ServerContext, Depends(context)]  # a route's parameter: `ctx: Ctx`
