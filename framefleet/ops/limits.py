"""The request body limit (FRAMEFLEET_API_MAX_BODY_BYTES), an ASGI layer inside the API's
token gate (auth.TokenGate): a body is read only for a caller whose token was accepted, so
unauthenticated half-sent bodies cost nothing (outside the gate, 16 of them held 8 MiB each).
"""

from __future__ import annotations

from typing import Any

from .auth import OPEN, PAGES, route_path

PAGES_LIMIT = 64 * 1024  # the dashboard's forms (a reason, a token): its login page is open
BODILESS = ("GET", "HEAD", "OPTIONS", "DELETE")  # no route of these reads a body


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is answered 413 before the app
    sees it: by its Content-Length, or, sent without one, counted as it is read (it is then
    held, at most `limit` bytes, and handed to the app whole). Only where a route reads a
    body: a method that takes none, or a path the token gate leaves open (/healthz, /), is
    passed on without reading it; the dashboard's pages (whose session is checked by their
    routes, after the form is read) take at most PAGES_LIMIT."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in BODILESS:
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        if path in OPEN:
            await self.app(scope, receive, send)
            return
        limit = PAGES_LIMIT if path == PAGES or path.startswith(PAGES + "/") else self.limit
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > limit:
                await _too_large(send, limit)
                return
            await self.app(scope, receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                await _too_large(send, limit)
                return
        sent = False

        async def replay() -> Any:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def _too_large(send: Any, limit: int) -> None:
    body = f'{{"detail":"the request body is over {limit} bytes"}}'.encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})
