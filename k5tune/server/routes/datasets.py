"""The dataset file: GET /api/datasets?path=, PUT /api/datasets ({path, backends, validate_only}) and
POST /api/datasets/preview ({backends?, frame_rate?}: the real scan, with clips, skips and buckets)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from k5tune.config.loading import build_datasets
from k5tune.config.schema import TrainConfig
from k5tune.errors import ConfigError, DatasetError
from k5tune.server import forms
from k5tune.server.context import DEFAULT_CONFIG, Ctx, read_json_file
from k5tune.server.paths import PathRefused, ProjectPaths
from k5tune.server.policy import check_backends

router = APIRouter()


class DatasetsBody(BaseModel):
    path: str | None = None
    backends: list[Any]
    validate_only: bool = False


class PreviewBody(BaseModel):
    backends: list[Any] | None = None
    path: str | None = None
    frame_rate: float | None = None
    config: str = DEFAULT_CONFIG


@router.get("/datasets")
def get_datasets(ctx: Ctx, path: str | None = None, config: str = DEFAULT_CONFIG) -> dict:
    file = ctx.paths.resolve(ctx.dataset_path(config, path))
    parsed, parse_error, text = read_json_file(file)
    result = {"path": ctx.paths.relative(file), "exists": file.is_file(), "backends": [], "text": text, "error": None}
    if parse_error:
        result["error"] = {**parse_error, "backend": None, "key": None}
    elif isinstance(parsed, list):
        result["backends"] = parsed
        try:
            build_datasets(parsed, result["path"])
        except ConfigError as exc:
            result["error"] = forms.field_error(exc, backends=parsed)
    return result


@router.put("/datasets")
def put_datasets(ctx: Ctx, body: DatasetsBody, config: str = DEFAULT_CONFIG) -> JSONResponse:
    file = ctx.paths.resolve(ctx.dataset_path(config, body.path))
    try:
        build_datasets(body.backends, ctx.paths.relative(file))
        check_backends(ctx.paths, body.backends, ctx.paths.relative(file))
    except ConfigError as exc:
        return JSONResponse({"saved": False, "error": forms.field_error(exc, backends=body.backends)},
                            status_code=422)
    except PathRefused as exc:
        return JSONResponse({"saved": False, "error": exc.field_error()}, status_code=422)
    if body.validate_only:
        return JSONResponse({"saved": False, "path": ctx.paths.relative(file)})
    if refused := ctx.unparsed(file):
        return JSONResponse({"saved": False, "error": refused}, status_code=409)
    kept = ctx.save(file, forms.dumps(body.backends))
    return JSONResponse({"saved": True, "path": ctx.paths.relative(file), "kept": kept})


@router.post("/datasets/preview")
async def preview(ctx: Ctx, body: PreviewBody) -> JSONResponse:
    if body.backends is None:
        parsed, parse_error, _ = read_json_file(ctx.paths.resolve(ctx.dataset_path(body.config, body.path)))
        if parse_error:
            return JSONResponse({"error": parse_error}, status_code=422)
        raw = parsed if parsed is not None else []
    else:
        raw = body.backends
    try:
        backends = build_datasets(raw, body.path or "dataset form")
    except ConfigError as exc:
        return JSONResponse({"error": forms.field_error(exc, backends=raw if isinstance(raw, list) else [])},
                            status_code=422)
    # folders are relative to the project (where `k5tune train` runs), and must stay inside it, links too
    check_backends(ctx.paths, raw, body.path or "dataset form", walk=True)  # PathRefused: 403
    confined = [b.model_copy(update={"instance_data_dir": str(ctx.paths.resolve(b.instance_data_dir))})
                if hasattr(b, "instance_data_dir") else b for b in backends]
    frame_rate = body.frame_rate
    if frame_rate is None:
        frame_rate = float(ctx.config_values(body.config).get("frame_rate")
                           or TrainConfig.model_fields["frame_rate"].default)
    from k5tune.data.scan import scan_backends

    try:
        records, report = await run_in_threadpool(scan_backends, confined, frame_rate)
    except DatasetError as exc:
        return JSONResponse({"error": {"message": str(exc)}}, status_code=422)
    return JSONResponse({**scan_result(records, report, ctx.paths), "frame_rate": frame_rate})


def scan_result(records, report, paths: ProjectPaths) -> dict:
    """The scan as the page shows it: usable clips, skipped files with a hint each, buckets, notes."""
    from k5tune.data.report import REASON_HINTS

    clips = [{
        "key": r.key, "backend_id": r.backend_id, "path": paths.relative(r.path), "media_type": r.media_type,
        "caption": r.captions[0] if r.captions else "", "captions": len(r.captions), "width": r.width,
        "height": r.height, "fps": r.fps, "frames": r.num_source_frames, "duration": r.duration,
        "available_frames": r.available_frames, "bucket": r.bucket.name,
    } for r in records]
    skipped = [{"path": paths.relative(s.path), "reason": str(s.reason), "detail": s.detail,
                "backend_id": s.backend_id, "hint": REASON_HINTS.get(s.reason, "")} for s in report.skipped]
    return {"found": report.found, "used": report.used, "clips": clips, "skipped": skipped,
            "buckets": report.buckets, "notes": report.notes, "upscaled": report.upscaled,
            "report": report.format()}
