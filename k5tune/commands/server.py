"""web UI at http://localhost:8001

Edit config and datasets, start/stop/watch training, see loss and validation videos. Binds 127.0.0.1 by
default (no token needed there); any other address requires a token, generated and printed at start unless
--token is given.
"""

from __future__ import annotations

import argparse

from k5tune.errors import K5TuneError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8001, help="port (default 8001)")
    parser.add_argument("--token", help="access token for the API (default: none on 127.0.0.1, generated otherwise)")
    parser.add_argument("--project-dir", default=".",
                        help="the project folder: files outside it are never read or served (default: here)")
    parser.add_argument("--allow-root", action="append", default=[], metavar="DIR",
                        help="a folder outside the project that settings may name too (models, datasets, caches); "
                             "repeat for several")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    try:
        from k5tune.server.app import serve
    except ImportError as exc:
        raise K5TuneError(f"the web UI needs its extra packages ({exc.name} is missing): "
                          "pip install 'k5tune[server]'") from None
    return serve(host=args.host, port=args.port, token=args.token, project_dir=args.project_dir,
                 allowed_roots=args.allow_root)
