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
from k5tune.server.saving import save_keeping_previous

DEFAULT_CONFIG = "config/config.json"


def parse_json(text: str) -> tuple[Any, dict | None]:
    """(parsed or None, parse error or None): the error as {message, line, column}."""
    try:
        return json.loads(text), None
    except json.JSONDecodeError as exc:
        detail = f"{exc.msg} at line {exc.lineno}, column {exc.colno}"
        return None, {"message": f"not valid JSON: {detail}", "detail": detail, "line": exc.lineno, "column": exc.colno}


def read_json_file(path: Path) -> tuple[Any, dict | None, str]:
    """(parsed or None, parse error or None, raw text)."""
    if not path.is_file():
        return None, None, ""
    text = path.read_text(encoding="utf-8", errors="replace")
    return (*parse_json(text), text)


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

    def save(self, file: Path, text: str) -> str | None:
        """Save a user's file, keeping the version it replaces (saving.py); where that copy lies."""
        return save_keeping_previous(self.paths, self.manager.state_dir, file, text)

    def unparsed(self, file: Path) -> dict | None:
        """Why a form must not save over `file`: it exists and is not JSON (the user's text would be
        lost); None when a form may."""
        parsed, parse_error, _ = read_json_file(file)
        if parse_error is None:
            return None
        return {**parse_error, "field": None, "key": None, "backend": None,
                "text": f"{self.paths.relative(file)} is not valid JSON ({parse_error['detail']}): "
                        "the form will not save over it; fix it as text first"}


def context(request: Request) -> ServerContext:
    """FastAPI dependency: the app's ServerContext."""
    return request.app.state.context


Ctx = Annotated[ServerContext, Depends(context)]  # a route's parameter: `ctx: Ctx`
