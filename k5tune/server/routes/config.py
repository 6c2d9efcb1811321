"""config.json: GET /api/config?path= (as saved, plus the loader's verdict), PUT /api/config ({path,
values, validate_only}: checked by the real loader, then saved; refused over a file that is not JSON)
and PUT /api/config/text ({path, text}: the file as text, for one that does not parse). Every save keeps
the version it replaces (saving.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from k5tune.config.loading import build_train_config
from k5tune.errors import ConfigError
from k5tune.server import forms
from k5tune.server.context import DEFAULT_CONFIG, Ctx, parse_json, read_json_file
from k5tune.server.paths import PathRefused
from k5tune.server.policy import check_config

router = APIRouter()


class ConfigBody(BaseModel):
    path: str = DEFAULT_CONFIG
    values: dict[str, Any]
    validate_only: bool = False


class ConfigTextBody(BaseModel):
    path: str = DEFAULT_CONFIG
    text: str


@router.get("/config")
def get_config(ctx: Ctx, path: str = DEFAULT_CONFIG) -> dict:
    file = ctx.paths.resolve(path)
    parsed, parse_error, text = read_json_file(file)
    result = {"path": ctx.paths.relative(file), "exists": file.is_file(), "values": {}, "text": text,
              "error": None, "notices": []}
    if parse_error or (parsed is not None and not isinstance(parsed, dict)):
        result["error"] = {**(parse_error or {"message": "config.json must be a JSON object"}), "field": None}
        result["parse_error"] = result["error"]  # the page then offers the file as text
        return result
    result["values"] = forms.ordered_config(parsed or {})
    if parsed is not None:
        try:
            result["notices"] = build_train_config(parsed, result["path"]).notices()
        except ConfigError as exc:
            result["error"] = forms.field_error(exc)
    return result


@router.put("/config")
def put_config(ctx: Ctx, body: ConfigBody) -> JSONResponse:
    file = ctx.paths.resolve(body.path)
    values = forms.ordered_config(body.values)
    try:
        notices = build_train_config(values, ctx.paths.relative(file)).notices()
        check_config(ctx.paths, values, ctx.paths.relative(file))
    except ConfigError as exc:
        return JSONResponse({"saved": False, "error": forms.field_error(exc)}, status_code=422)
    except PathRefused as exc:
        return JSONResponse({"saved": False, "error": exc.field_error()}, status_code=422)
    if body.validate_only:
        return JSONResponse({"saved": False, "path": ctx.paths.relative(file), "notices": notices})
    if refused := ctx.unparsed(file):
        return JSONResponse({"saved": False, "error": refused}, status_code=409)
    kept = ctx.save(file, forms.dumps(values))
    return JSONResponse({"saved": True, "path": ctx.paths.relative(file), "notices": notices, "kept": kept})


@router.put("/config/text")
def put_config_text(ctx: Ctx, body: ConfigTextBody) -> JSONResponse:
    """The file as the user typed it: saved verbatim once it is a JSON object the loader accepts."""
    file = ctx.paths.resolve(body.path)
    parsed, parse_error = parse_json(body.text)
    if parse_error or not isinstance(parsed, dict):
        error = parse_error or {"message": "config.json must be a JSON object", "line": 1, "column": 1}
        return JSONResponse({"saved": False, "error": {**error, "field": None}}, status_code=422)
    try:
        notices = build_train_config(parsed, ctx.paths.relative(file)).notices()
        check_config(ctx.paths, forms.ordered_config(parsed), ctx.paths.relative(file))
    except ConfigError as exc:
        return JSONResponse({"saved": False, "error": forms.field_error(exc)}, status_code=422)
    except PathRefused as exc:
        return JSONResponse({"saved": False, "error": exc.field_error()}, status_code=422)
    kept = ctx.save(file, body.text)
    return JSONResponse({"saved": True, "path": ctx.paths.relative(file), "notices": notices, "kept": kept})
