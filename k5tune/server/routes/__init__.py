"""The API's routes, one module per subject; every one sits behind the Guard of auth.py."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from k5tune.server.auth import Guard
from k5tune.server.routes import config, datasets, files, info, presets, runs, system


def api_router(guard: Guard) -> APIRouter:
    api = APIRouter(prefix="/api", dependencies=[Depends(guard)])
    for module in (info, config, datasets, files, presets, runs, system):
        api.include_router(module.router)
    return api
