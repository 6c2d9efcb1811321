"""`k5tune server`: the FastAPI app behind the web UI.

Routes (all /api routes pass the Guard of auth.py; every path a request names is confined to the
project folder by paths.py):

  GET  /                            the page (static/index.html; scripts and styles under /static)
  GET  /api/info                    project folder, version, whether a token is in use
  GET  /api/schema                  form fields of config.json and the dataset file, from the schema
  GET  /api/config?path=            config.json as saved, plus the loader's verdict
  PUT  /api/config                  {path, values, validate_only}: checked by the real loader, saved
  GET  /api/datasets?path=          the dataset file
  PUT  /api/datasets                {path, backends, validate_only}
  POST /api/datasets/preview        {backends?, frame_rate?}: the real scan (clips, skips, buckets)
  GET  /api/thumbnail?path=         first frame of a clip, JPEG
  GET  /api/files?path=             a file (range requests: <video> can seek)
  GET  /api/outputs?dir=            checkpoints and validation videos of an output folder
  GET  /api/runs                    run history, newest first
  POST /api/runs                    {config, resume}: queue a `k5tune train` run
  GET  /api/runs/{id}               one run and the end of its log
  POST /api/runs/{id}/stop          {force}: clean stop (SIGINT), or cancel while queued
  GET  /api/runs/{id}/log?tail=     the run's log as text
  GET  /api/runs/{id}/events        Server-Sent Events: status, metrics, log lines, outputs
"""

from __future__ import annotations

import json
import mimetypes
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from k5tune import __version__
from k5tune.atomic import atomic_write_text
from k5tune.config.loading import build_datasets, build_train_config
from k5tune.config.schema import TrainConfig
from k5tune.errors import ConfigError, DatasetError
from k5tune.server import forms
from k5tune.server.auth import Guard
from k5tune.server.events import run_events
from k5tune.server.outputs import ThumbnailError, Thumbnails, list_outputs
from k5tune.server.paths import PathRefused, ProjectPaths
from k5tune.server.runs import RunManager, read_tail

STATIC_DIR = Path(__file__).parent / "static"
DEFAULT_CONFIG = "config/config.json"
STATE_FOLDER = ".k5tune"
mimetypes.add_type("video/mp4", ".mp4")
mimetypes.add_type("text/javascript", ".js")


class ConfigBody(BaseModel):
    path: str = DEFAULT_CONFIG
    values: dict[str, Any]
    validate_only: bool = False


class DatasetsBody(BaseModel):
    path: str | None = None
    backends: list[Any]
    validate_only: bool = False


class PreviewBody(BaseModel):
    backends: list[Any] | None = None
    path: str | None = None
    frame_rate: float | None = None
    config: str = DEFAULT_CONFIG


class RunBody(BaseModel):
    config: str = DEFAULT_CONFIG
    resume: bool = False


class StopBody(BaseModel):
    force: bool = False


def _read_json_file(path: Path) -> tuple[Any, str | None, str]:
    """(parsed or None, parse error or None, raw text)."""
    if not path.is_file():
        return None, None, ""
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        return json.loads(text), None, text
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}", text


def create_app(project_dir: str | Path = ".", token: str | None = None, *, state_dir: str | Path | None = None,
               check_host: bool = True, kill_runs_on_shutdown: bool = False) -> FastAPI:
    paths = ProjectPaths(project_dir)
    manager = RunManager(paths, Path(state_dir) if state_dir else paths.root / STATE_FOLDER)
    thumbnails = Thumbnails()
    guard = Guard(token, check_host=check_host)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        manager.recover()
        yield
        manager.close(kill_runs=kill_runs_on_shutdown)

    app = FastAPI(title="k5tune", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.manager, app.state.paths = manager, paths

    @app.exception_handler(PathRefused)
    async def refused(request: Request, exc: PathRefused) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=403)

    @app.exception_handler(FileNotFoundError)
    async def missing(request: Request, exc: FileNotFoundError) -> JSONResponse:
        return JSONResponse({"detail": f"not found: {exc}"}, status_code=404)

    api = APIRouter(prefix="/api", dependencies=[Depends(guard)])

    def config_values(config: str) -> dict:
        parsed, _, _ = _read_json_file(paths.resolve(config))
        return parsed if isinstance(parsed, dict) else {}

    def dataset_path(config: str, path: str | None) -> str:
        if path:
            return path
        named = forms.ordered_config(config_values(config)).get("data_backend_config")
        return named if isinstance(named, str) else TrainConfig.model_fields["data_backend_config"].default

    # --- info and schema ------------------------------------------------------------------------
    @api.get("/info")
    def info() -> dict:
        return {"project_dir": str(paths.root), "version": __version__, "token_required": token is not None,
                "default_config": DEFAULT_CONFIG}

    @api.get("/schema")
    def schema() -> dict:
        return forms.form_schema()

    # --- config.json --------------------------------------------------------------------------------
    @api.get("/config")
    def get_config(path: str = DEFAULT_CONFIG) -> dict:
        file = paths.resolve(path)
        parsed, parse_error, text = _read_json_file(file)
        result = {"path": paths.relative(file), "exists": file.is_file(), "values": {}, "text": text,
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

    @api.put("/config")
    def put_config(body: ConfigBody) -> JSONResponse:
        file = paths.resolve(body.path)
        values = forms.ordered_config(body.values)
        try:
            notices = build_train_config(values, paths.relative(file)).notices()
        except ConfigError as exc:
            return JSONResponse({"saved": False, "error": forms.field_error(exc)}, status_code=422)
        if not body.validate_only:
            atomic_write_text(file, forms.dumps(values))
        return JSONResponse({"saved": not body.validate_only, "path": paths.relative(file), "notices": notices})

    # --- dataset file -----------------------------------------------------------------------------
    @api.get("/datasets")
    def get_datasets(path: str | None = None, config: str = DEFAULT_CONFIG) -> dict:
        file = paths.resolve(dataset_path(config, path))
        parsed, parse_error, text = _read_json_file(file)
        result = {"path": paths.relative(file), "exists": file.is_file(), "backends": [], "text": text, "error": None}
        if parse_error:
            result["error"] = {"message": parse_error, "backend": None, "key": None}
        elif isinstance(parsed, list):
            result["backends"] = parsed
            try:
                build_datasets(parsed, result["path"])
            except ConfigError as exc:
                result["error"] = forms.field_error(exc, backends=parsed)
        return result

    @api.put("/datasets")
    def put_datasets(body: DatasetsBody, config: str = DEFAULT_CONFIG) -> JSONResponse:
        file = paths.resolve(dataset_path(config, body.path))
        try:
            build_datasets(body.backends, paths.relative(file))
        except ConfigError as exc:
            return JSONResponse({"saved": False, "error": forms.field_error(exc, backends=body.backends)},
                                status_code=422)
        if not body.validate_only:
            atomic_write_text(file, forms.dumps(body.backends))
        return JSONResponse({"saved": not body.validate_only, "path": paths.relative(file)})

    @api.post("/datasets/preview")
    async def preview(body: PreviewBody) -> JSONResponse:
        if body.backends is None:
            parsed, parse_error, _ = _read_json_file(paths.resolve(dataset_path(body.config, body.path)))
            if parse_error:
                return JSONResponse({"error": {"message": parse_error}}, status_code=422)
            raw = parsed if parsed is not None else []
        else:
            raw = body.backends
        try:
            backends = build_datasets(raw, body.path or "dataset form")
        except ConfigError as exc:
            return JSONResponse({"error": forms.field_error(exc, backends=raw if isinstance(raw, list) else [])},
                                status_code=422)
        # folders are relative to the project (where `k5tune train` runs), and must stay inside it
        confined = [b.model_copy(update={"instance_data_dir": str(paths.resolve(b.instance_data_dir))})
                    if hasattr(b, "instance_data_dir") else b for b in backends]
        frame_rate = body.frame_rate
        if frame_rate is None:
            values = forms.ordered_config(config_values(body.config))
            frame_rate = float(values.get("frame_rate") or TrainConfig.model_fields["frame_rate"].default)
        from k5tune.data.report import REASON_HINTS
        from k5tune.data.scan import scan_backends

        try:
            records, report = await run_in_threadpool(scan_backends, confined, frame_rate)
        except DatasetError as exc:
            return JSONResponse({"error": {"message": str(exc)}}, status_code=422)
        clips = [{
            "key": r.key, "backend_id": r.backend_id, "path": paths.relative(r.path), "media_type": r.media_type,
            "caption": r.captions[0] if r.captions else "", "captions": len(r.captions), "width": r.width,
            "height": r.height, "fps": r.fps, "frames": r.num_source_frames, "duration": r.duration,
            "available_frames": r.available_frames, "bucket": r.bucket.name,
        } for r in records]
        skipped = [{"path": paths.relative(s.path), "reason": str(s.reason), "detail": s.detail,
                    "backend_id": s.backend_id, "hint": REASON_HINTS.get(s.reason, "")} for s in report.skipped]
        return JSONResponse({"found": report.found, "used": report.used, "clips": clips, "skipped": skipped,
                             "buckets": report.buckets, "notes": report.notes, "upscaled": report.upscaled,
                             "frame_rate": frame_rate, "report": report.format()})

    # --- files ----------------------------------------------------------------------------------------
    @api.get("/thumbnail")
    async def thumbnail(path: str) -> Response:
        file = paths.resolve(path, must_exist=True)
        try:
            data = await run_in_threadpool(thumbnails.get, file)
        except ThumbnailError as exc:
            raise HTTPException(415, str(exc)) from None
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=60"})

    @api.get("/files")
    def files(path: str) -> FileResponse:
        file = paths.resolve(path, must_exist=True)
        if not file.is_file():
            raise HTTPException(404, f"not a file: {path}")
        media_type = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        if file.suffix in (".log", ".txt", ".json", ".csv"):
            media_type = "text/plain; charset=utf-8"
        return FileResponse(file, media_type=media_type, content_disposition_type="inline")

    @api.get("/outputs")
    def outputs(dir: str | None = None, config: str = DEFAULT_CONFIG) -> dict:
        if dir is None:
            named = forms.ordered_config(config_values(config)).get("output_dir")
            dir = named if isinstance(named, str) else TrainConfig.model_fields["output_dir"].default
        return list_outputs(paths.resolve(dir), paths)

    # --- runs --------------------------------------------------------------------------------------
    def run_or_404(run_id: int):
        run = manager.get(run_id)
        if run is None:
            raise HTTPException(404, f"no run {run_id}")
        return run

    @api.get("/runs")
    def list_runs() -> list[dict]:
        return [run.to_dict(paths) for run in manager.list()]

    @api.post("/runs", status_code=201)
    def start_run(body: RunBody) -> dict:
        return manager.submit(body.config, resume=body.resume).to_dict(paths)

    @api.get("/runs/{run_id}")
    def get_run(run_id: int, tail: int = 40) -> dict:
        run = run_or_404(run_id)
        return {**run.to_dict(paths), "log_tail": read_tail(run.log_path, max(1, min(tail, 2000)))}

    @api.post("/runs/{run_id}/stop")
    def stop_run(run_id: int, body: StopBody | None = None) -> dict:
        run_or_404(run_id)
        return manager.stop(run_id, force=bool(body and body.force)).to_dict(paths)

    @api.get("/runs/{run_id}/log")
    def run_log(run_id: int, tail: int = 500) -> PlainTextResponse:
        run = run_or_404(run_id)
        return PlainTextResponse("\n".join(read_tail(run.log_path, max(1, min(tail, 20000)), max_bytes=8 << 20)))

    @api.get("/runs/{run_id}/events")
    async def run_stream(run_id: int) -> StreamingResponse:
        run_or_404(run_id)
        return StreamingResponse(run_events(manager, paths, run_id), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    app.include_router(api)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-store"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def serve(host: str = "127.0.0.1", port: int = 8001, token: str | None = None, project_dir: str = ".") -> int:
    """Run the web UI until Ctrl-C. Training runs keep going when it stops (the next start adopts them)."""
    import uvicorn

    from k5tune.server.auth import server_token

    token = server_token(host, token)  # any address but loopback: nobody gets in without one
    app = create_app(project_dir, token)
    shown = f"[{host}]" if ":" in host else host
    if host in ("0.0.0.0", "::"):
        shown = "localhost"
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    print(f"k5tune server: project folder {app.state.paths.root}")
    print(f"k5tune server: open {url}")
    if token:
        print(f"k5tune server: API token: {token} (header 'Authorization: Bearer <token>' or ?token=)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
    running = app.state.manager.running_count()
    if running:
        print(f"k5tune server: {running} training run(s) keep going; start the server again to watch or stop them")
    return 0
