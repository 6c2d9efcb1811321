"""GET /api/system: each GPU's memory used/total and utilisation (or "no GPU"), and the queue: the runs
running or waiting, in the order they start."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from k5tune.server import system
from k5tune.server.context import Ctx
from k5tune.server.runs import ACTIVE

router = APIRouter()


@router.get("/system")
async def system_state(ctx: Ctx) -> dict:
    gpus = await run_in_threadpool(system.gpus)
    runs = sorted(ctx.manager.list(), key=lambda run: run.id)
    active = [run.to_dict(ctx.paths) for run in runs if run.status in ACTIVE]
    waiting = [run.to_dict(ctx.paths) for run in runs if run.status == "queued"]
    queue = [{key: run[key] for key in ("id", "status", "output_dir", "config_path", "created_at", "started_at")}
             for run in active + waiting]
    return {**gpus, "queue": queue}
