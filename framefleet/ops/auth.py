"""Who may call the API: a bearer token on every route but /healthz, compared in constant
time. The write token may do anything; the read token (if set) only GET; read-only mode
refuses every write whatever the token. With no token configured the API serves loopback
only (server.serve checks), and lets every local caller through.

TokenGate checks the token before anything else runs, for every path: FastAPI reads and parses
a route's JSON body before the route's own dependencies (may_read, may_write) are called, and
its /openapi.json has none. The dependencies then name the caller for the audit log."""

from __future__ import annotations

import base64
import hmac
import ipaddress
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse

from framefleet.settings import ApiSettings


@dataclass(frozen=True, slots=True)
class Tokens:
    write: str | None
    read: str | None
    read_only: bool

    @classmethod
    def of(cls, settings: ApiSettings) -> Tokens:
        return cls(settings.write_token(), settings.read_token or None, settings.read_only)


EVENTS = "/v1/events/s3"  # SNS can send only Basic credentials (in the endpoint's URL)


def _bearer(request: Request) -> str | None:
    """The token: `Authorization: Bearer <token>`; on the S3 events route also `Basic` with
    the token as the password (any user name), which is all an SNS HTTPS subscription can
    send (https://user:TOKEN@host/v1/events/s3)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() == "bearer" and token:
        return token
    if scheme.lower() == "basic" and token and route_path(request.scope) == EVENTS:
        try:
            _, sep, password = base64.b64decode(token, validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        return password if sep and password else None
    return None


def _same(given: str, expected: str | None) -> bool:
    return expected is not None and hmac.compare_digest(given.encode(), expected.encode())


def _check(request: Request, write: bool) -> str:
    """The caller's name ("write", "read" or "local"), or 401/403."""
    tokens: Tokens = request.app.state.tokens
    if write and tokens.read_only:
        raise HTTPException(403, "the API is read-only (FRAMEFLEET_API_READ_ONLY)")
    if tokens.write is None:
        return "local"
    token = _bearer(request)
    # SNS sends its Basic credentials only once challenged for them
    basic = ', Basic realm="framefleet"' if route_path(request.scope) == EVENTS else ""
    challenge = {"WWW-Authenticate": f'Bearer realm="framefleet"{basic}'}
    if token is None:
        raise HTTPException(401, "a bearer token is needed", challenge)
    if _same(token, tokens.write):
        return "write"
    if _same(token, tokens.read):
        if write:
            raise HTTPException(403, "the read token may only GET")
        return "read"
    raise HTTPException(401, "wrong token", challenge)


async def may_read(request: Request) -> str:
    return _check(request, write=False)


async def may_write(request: Request) -> str:
    return _check(request, write=True)


OPEN = ("/healthz", "/")  # liveness, and the front door (a redirect to the dashboard)
PAGES = "/ui"  # the dashboard checks its own session cookie (ops/ui.py, ops/session.py)


def route_path(scope: Any) -> str:
    """The path the routes see: without the root path when a proxy left it in."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root + "/") else path


class TokenGate:
    """ASGI middleware: a request to any path but /healthz is answered 401 without a known
    token, 403 for a method but GET (or HEAD) without the write one, before the app reads its
    body or routes it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = route_path(scope) if scope["type"] == "http" else ""
        pages = path == PAGES or path.startswith(PAGES + "/")
        try:
            if scope["type"] == "http" and path != "/healthz":
                _tokenless_guard(Request(scope))
            if scope["type"] == "http" and path not in OPEN and not pages:
                _check(Request(scope), write=scope["method"] not in ("GET", "HEAD"))
        except HTTPException as exc:
            answer = JSONResponse({"detail": exc.detail}, exc.status_code, exc.headers)
            await answer(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _tokenless_guard(request: Request) -> None:
    """With no token configured every local caller is let through, so "loopback only" must
    hold for browsers too: a web page the operator opens may send CORS-simple requests to
    127.0.0.1 (no preflight), and a DNS-rebinding page reaches it under its own host name.
    So: a Host that is not a loopback name or address is refused (rebinding), and so is a
    write from another site (Sec-Fetch-Site, else Origin, as the dashboard's forms are)."""
    tokens: Tokens = request.app.state.tokens
    if tokens.write is not None:  # a token: a page cannot send it, nor read the answers
        return
    host = request.headers.get("host", "")
    if not _loopback_host(host):
        raise HTTPException(
            403, f"with no token this API answers loopback names only, not {host!r}"
        )
    if request.method not in ("GET", "HEAD", "OPTIONS") and _cross_site(request):
        raise HTTPException(403, "a write from another site: refused (no token is configured)")


def _loopback_host(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _cross_site(request: Request) -> bool:
    """A browser's write from another site. Browsers send Sec-Fetch-Site, or Origin, with
    every cross-origin write: a caller that sends neither is a tool, not a page."""
    if "sec-fetch-site" not in request.headers and "origin" not in request.headers:
        return False
    return not same_origin(request)


def same_origin(request: Request) -> bool:
    """Whether a write comes from one of our own pages: a browser's `Sec-Fetch-Site` must
    say `same-origin` (or `none`: typed by the user), else `Origin` must name this host
    (the dashboard's forms, as Sidekiq Web checks them; and the tokenless guard above)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return False
    return urlsplit(origin).netloc == request.headers.get("host", "")
