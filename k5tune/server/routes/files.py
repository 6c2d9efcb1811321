"""Files of the project: GET /api/thumbnail?path= (first frame of a clip, JPEG), GET /api/files?path=
(a file, with range requests so that <video> can seek; `download=1`: as an attachment under its own name) and GET /api/outputs?dir= (checkpoints and
validation videos of an output folder)."""

from __future__ import annotations

import mimetypes

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, Response
from starlette.concurrency import run_in_threadpool

from k5tune.server.context import DEFAULT_CONFIG, Ctx
from k5tune.server.outputs import ThumbnailError, list_outputs

mimetypes.add_type("video/mp4", ".mp4")
mimetypes.add_type("text/javascript", ".js")
router = APIRouter()


@router.get("/thumbnail")
async def thumbnail(ctx: Ctx, path: str) -> Response:
    file = ctx.paths.resolve(path, must_exist=True)
    try:
        data = await run_in_threadpool(ctx.thumbnails.get, file)
    except ThumbnailError as exc:
        raise HTTPException(415, str(exc)) from None
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=60"})


@router.get("/files")
def files(ctx: Ctx, path: str, download: bool = False) -> FileResponse:
    file = ctx.paths.resolve(path, must_exist=True)
    if not file.is_file():
        raise HTTPException(404, f"not a file: {path}")
    media_type = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
    if file.suffix in (".log", ".txt", ".json", ".csv"):
        media_type = "text/plain; charset=utf-8"
    return FileResponse(file, media_type=media_type, filename=file.name,
                        content_disposition_type="attachment" if download else "inline")


@router.get("/outputs")
def outputs(ctx: Ctx, dir: str | None = None, config: str = DEFAULT_CONFIG) -> dict:
    folder = dir if dir is not None else ctx.named_in_config(config, "output_dir")
    return list_outputs(ctx.paths.resolve(folder), ctx.paths)
