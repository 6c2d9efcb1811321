"""GET /api/info (project folder, version, whether a token is in use) and GET /api/schema (the form
fields of both files, from the schema)."""

from __future__ import annotations

from fastapi import APIRouter

from k5tune import __version__
from k5tune.server import forms
from k5tune.server.context import DEFAULT_CONFIG, Ctx

router = APIRouter()


@router.get("/info")
def info(ctx: Ctx) -> dict:
    return {"project_dir": str(ctx.paths.root), "version": __version__, "token_required": ctx.token is not None,
            "default_config": DEFAULT_CONFIG}


@router.get("/schema")
def schema() -> dict:
    return forms.form_schema()
