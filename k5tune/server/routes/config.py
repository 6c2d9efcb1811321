"""config.json: GET /api/config?path= (as saved, plus the loader's verdict) and PUT /api/config
({path, values, validate_only}: checked by the real loader, then saved)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from k5tune.atomic import atomic_write_text
from k5tune.config.loading import build_train_config
from k5tune.errors import ConfigError
from k5tune.server import forms
from k5tune.server.context import DEFAULT_CONFIG, Ctx, read_json_file

router = APIRouter()


class ConfigBody(BaseModel):
    path: str = DEFAULT_CONFIG
    values: dict[str, Any]
    validate_only: bool = False


@router.get("/config")
def get_config(ctx: Ctx, path: str = DEFAULT_CONFIG) -> dict:
    file = ctx.paths.resolve(path)
    parsed, parse_error, text = read_json_file(file)
    result = {"path": ctx.paths.relative(file), "exists": file.is_file(), "values": {}, "text": text,
              "error": None, "notices": []}
    if parse_error or (parsed is not None and not isinstance(parsed, dict)):
        result["error"] = {"message": parse_error or "config.json must be a JSON object", "field": None}
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
    except ConfigError as exc:
        return JSONResponse({"saved": False, "error": forms.field_error(exc)}, status_code=422)
    if not body.validate_only:
        atomic_write_text(file, forms.dumps(values))
    return JSONResponse({"saved": not body.validate_only, "path": ctx.paths.relative(file), "notices": notices})
