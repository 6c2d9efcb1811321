"""Who may call the API.

- Bound to a loopback address without --token: no token, but requests must name a loopback host
  (a DNS-rebinding page cannot pose as localhost) and a state-changing request from a browser must
  come from the page's own origin (another site cannot start or stop runs behind the user's back).
- With a token (required for any other address; generated when not given): every /api request
  carries it as `Authorization: Bearer T`, or as `?token=T` where a browser cannot set headers
  (EventSource, <video>, <img>).
"""

from __future__ import annotations

import ipaddress
import secrets
import sys
from urllib.parse import urlsplit

from fastapi import HTTPException, Request

from k5tune.errors import K5TuneError

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}
UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
SHORT_TOKEN = 16  # characters: a shorter token is accepted with a warning


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def server_token(host: str, token: str | None) -> str | None:
    """The token a server bound to `host` uses: the given one; none on loopback; else a new one. An empty
    token is refused (nobody could get in); a short one is used with a warning."""
    if token is not None:
        if not token.strip():
            raise K5TuneError("--token is empty: nobody could use the server. Give a token of at least "
                              f"{SHORT_TOKEN} characters, or leave --token out (a token is generated off 127.0.0.1)")
        if len(token) < SHORT_TOKEN:
            print(f"k5tune server: warning: the token is only {len(token)} characters long; one of at least "
                  f"{SHORT_TOKEN} (or none, to have one generated) is much harder to guess", file=sys.stderr)
        return token
    return None if is_loopback(host) else secrets.token_urlsafe(24)


def _host_name(host_header: str) -> str:
    if host_header.startswith("["):
        return host_header.split("]")[0] + "]"
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


class Guard:
    def __init__(self, token: str | None, check_host: bool = True):
        self.token = token
        self.check_host = check_host and token is None

    def supplied_token(self, request: Request) -> str | None:
        header = request.headers.get("authorization", "")
        if header[:7].lower() == "bearer ":
            return header[7:].strip()
        return request.query_params.get("token")

    def __call__(self, request: Request) -> None:
        """FastAPI dependency of every /api route."""
        host_header = request.headers.get("host", "")
        if self.check_host and not is_loopback(_host_name(host_header)):
            raise HTTPException(403, "this server answers only to localhost (start it with --token to expose it)")
        origin = request.headers.get("origin")
        # "null" (a sandboxed frame) is refused too: only the page's own origin may change things
        if request.method in UNSAFE_METHODS and origin is not None and urlsplit(origin).netloc != host_header:
            raise HTTPException(403, "cross-origin request refused")
        if self.token is None:
            return
        supplied = self.supplied_token(request)
        if not supplied or not secrets.compare_digest(supplied.encode(), self.token.encode()):
            raise HTTPException(401, "missing or wrong token", headers={"WWW-Authenticate": "Bearer"})
