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
    resume_from: str | None = None  # a checkpoint folder ("resume from here"); else the latest with `resume`


class StopBody(BaseModel):
    force: bool = False


def run_or_404(ctx: Ctx, run_id: int) -> Run:
    run = ctx.manager.get(run_id)
    if run is None:
        raise HTTPException(404, f"no run {run_id}")
    return run


def described(ctx: Ctx, run: Run) -> dict:
    """A run as the list shows it: its record, plus its dataset and steps (from its events)."""
    snapshot, state = run.snapshot(), ctx.manager.state(run)
    backends = snapshot.get("datasets") if isinstance(snapshot.get("datasets"), list) else []
    datasets = [f"{b.get('id')} ({b.get('instance_data_dir')})" for b in backends
                if isinstance(b, dict) and b.get("dataset_type") in ("video", "image")]
    done = int(state.steps[-1]["step"]) if state.steps and "step" in state.steps[-1] else state.start_step
    return {**run.to_dict(ctx.paths), "dataset_file": snapshot.get("dataset_file"), "datasets": datasets,
            "steps_done": done, "total_steps": state.total_steps, "resume_from": snapshot.get("resume_from")}


@router.get("/runs")
def list_runs(ctx: Ctx) -> list[dict]:
    return [described(ctx, run) for run in ctx.manager.list()]


@router.post("/runs", status_code=201)
def start_run(ctx: Ctx, body: RunBody) -> dict:
    return ctx.manager.submit(body.config, resume=body.resume, resume_from=body.resume_from).to_dict(ctx.paths)


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
