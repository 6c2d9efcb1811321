"""`k5tune server`: the app factory behind the web UI, and `serve`.

  GET /            the page (static/index.html; scripts and styles under /static)
  /api/...         routes/ (info, config, datasets, files, runs), all behind the Guard of auth.py;
                   every path a request names is confined to the project folder by paths.py
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from k5tune import __version__
from k5tune.server.auth import Guard
from k5tune.server.context import ServerContext
from k5tune.server.outputs import Thumbnails
from k5tune.server.paths import PathRefused, ProjectPaths
from k5tune.server.routes import api_router
from k5tune.server.runs import RunManager

STATIC_DIR = Path(__file__).parent / "static"
STATE_FOLDER = ".k5tune"
# the page's scripts and styles are files of its own origin (no inline script, nothing from elsewhere),
# and no other site may frame it (a click in a foreign frame must not save or start anything)
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
                                 b"form-action 'self'; frame-ancestors 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


class SecurityHeaders:
    """ASGI middleware: every response carries SECURITY_HEADERS (event streams included)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(project_dir: str | Path = ".", token: str | None = None, *, state_dir: str | Path | None = None,
               check_host: bool = True, kill_runs_on_shutdown: bool = False,
               allowed_roots: Iterable[str | Path] = ()) -> FastAPI:
    if token is not None and not token.strip():
        raise ValueError("an empty token would lock everyone out")
    paths = ProjectPaths(project_dir, allowed_roots)
    manager = RunManager(paths, Path(state_dir) if state_dir else paths.root / STATE_FOLDER)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        manager.recover()
        yield
        manager.close(kill_runs=kill_runs_on_shutdown)

    app = FastAPI(title="k5tune", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.manager, app.state.paths = manager, paths
    app.state.context = ServerContext(paths, manager, Thumbnails(), token)
    app.add_exception_handler(PathRefused, _refused)
    app.add_exception_handler(FileNotFoundError, _missing)
    app.include_router(api_router(Guard(token, check_host=check_host)))
    app.add_api_route("/", _index, include_in_schema=False)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(SecurityHeaders)
    return app


async def _refused(request: Request, exc: PathRefused) -> JSONResponse:
    return JSONResponse({"detail": str(exc), "error": exc.field_error()}, status_code=403)


async def _missing(request: Request, exc: FileNotFoundError) -> JSONResponse:
    return JSONResponse({"detail": f"not found: {exc}"}, status_code=404)


def _index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-store"})


def serve(host: str = "127.0.0.1", port: int = 8001, token: str | None = None, project_dir: str = ".",
          allowed_roots: Iterable[str] = ()) -> int:
    """Run the web UI until Ctrl-C. Training runs keep going when it stops (the next start adopts them)."""
    import uvicorn

    from k5tune.server.auth import server_token

    token = server_token(host, token)  # any address but loopback: nobody gets in without one
    app = create_app(project_dir, token, allowed_roots=allowed_roots)
    shown = f"[{host}]" if ":" in host else host
    if host in ("0.0.0.0", "::"):
        shown = "localhost"
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    print(f"k5tune server: project folder {app.state.paths.root}")
    for root in app.state.paths.allowed:
        print(f"k5tune server: also allowed: {root}")
    print(f"k5tune server: open {url}")
    if token:
        print(f"k5tune server: API token: {token} (header 'Authorization: Bearer <token>' or ?token=)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
    running = app.state.manager.running_count()
    if running:
        print(f"k5tune server: {running} training run(s) keep going; start the server again to watch or stop them")
    return 0
