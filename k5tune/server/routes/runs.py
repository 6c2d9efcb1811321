"""Training runs: GET /api/runs (history, newest first), POST /api/runs ({config, resume}: queue a
`k5tune train` run), GET /api/runs/{id} (one run and the end of its log), POST /api/runs/{id}/stop
({force}), GET /api/runs/{id}/log?tail= (the log as text) and GET /api/runs/{id}/events (Server-Sent
Events: status, metrics, log lines, outputs)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from fastapi.responses import PlainTextResponse, StreamingResponse
from pydantic import BaseModel

from k5tune.server.context import DEFAULT_CONFIG, Ctx
from k5tune.server.runs import Run
from k5tune.server.stream import run_events
from k5tune.server.tail import read_tail

router = APIRouter()


class RunBody(BaseModel):
    config: str = DEFAULT_CONFIG
    resume: bool = False


class StopBody(BaseModel):
    force: bool = False


def run_or_404(ctx: Ctx, run_id: int) -> Run:
    run = ctx.manager.get(run_id)
    if run is None:
        raise HTTPException(404, f"no run {run_id}")
    return run


@router.get("/runs")
def list_runs(ctx: Ctx) -> list[dict]:
    return [run.to_dict(ctx.paths) for run in ctx.manager.list()]


@router.post("/runs", status_code=201)
def start_run(ctx: Ctx, body: RunBody) -> dict:
    return ctx.manager.submit(body.config, resume=body.resume).to_dict(ctx.paths)


@router.get("/runs/{run_id}")
def get_run(ctx: Ctx, run_id: int, tail: int = 40) -> dict:
    run = run_or_404(ctx, run_id)
    return {**run.to_dict(ctx.paths), "log_tail": read_tail(run.log_path, max(1, min(tail, 2000)))}


@router.post("/runs/{run_id}/stop")
def stop_run(ctx: Ctx, run_id: int, body: StopBody | None = None) -> dict:
    run_or_404(ctx, run_id)
    return ctx.manager.stop(run_id, force=bool(body and body.force)).to_dict(ctx.paths)


@router.get("/runs/{run_id}/log")
def run_log(ctx: Ctx, run_id: int, tail: int = 500) -> PlainTextResponse:
    run = run_or_404(ctx, run_id)
    return PlainTextResponse("\n".join(read_tail(run.log_path, max(1, min(tail, 20000)), max_bytes=8 << 20)))


@router.get("/runs/{run_id}/events")
async def run_stream(ctx: Ctx, run_id: int) -> StreamingResponse:
    run_or_404(ctx, run_id)
    return StreamingResponse(run_events(ctx.manager, ctx.paths, run_id), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
