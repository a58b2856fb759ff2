"""Serving the API: uvicorn's configuration, a graceful SIGTERM, and the ASGI layer outside
the app (the root path a proxy serves it under; the body limit is inside the app, behind its
token gate: ops/limits.py).
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

from framefleet.queue import Queue
from framefleet.settings import Settings

from .api import create_app


class RootPath:
    """ASGI middleware: FRAMEFLEET_API_ROOT_PATH as the scope's root_path (/ff/v1/queue
    routes as /v1/queue; links, redirects and cookies carry /ff). A proxy may keep the prefix
    in the path or strip it: a stripped path gets it back, since Starlette's mounts (the
    dashboard's assets) find their files only under a path that starts with the root path.
    FastAPI's own root_path parameter did the first half, and is deprecated."""

    def __init__(self, app: Any, root: str) -> None:
        self.app, self.root = app, root

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            path: str = scope["path"]
            if path != self.root and not path.startswith(self.root + "/"):
                scope["path"] = self.root + path
                if scope.get("raw_path") is not None:
                    scope["raw_path"] = quote(self.root).encode() + scope["raw_path"]
            scope["root_path"] = self.root
        await self.app(scope, receive, send)


LOOPBACK = ("127.0.0.1", "::1", "localhost")


def serve(settings: Settings, queue: Queue) -> int:
    """Serve the API until SIGTERM or Ctrl-C (requests in flight are finished, within 10 s).
    With no token configured it binds only a loopback address."""
    api = settings.api
    if api.write_token() is None and api.host not in LOOPBACK:
        raise SystemExit(
            f"refusing to serve the API on {api.host} without a token: set"
            " FRAMEFLEET_API_TOKEN or FRAMEFLEET_API_TOKEN_FILE (or bind 127.0.0.1)"
        )
    # A thread validating and enqueueing a big batch holds the GIL: the event loop gets it
    # back every 1 ms instead of 5, so short requests meanwhile wait less (bench/api.py).
    sys.setswitchinterval(0.001)
    _server_class()(server_config(settings, queue)).run()
    return 0


def server_config(settings: Settings, queue: Queue, port: int | None = None) -> Any:
    """uvicorn's configuration of the API (the app inside its body limit, under its root
    path), on the settings' address (or `port`)."""
    import uvicorn

    api = settings.api
    app: Any = create_app(settings, queue)  # its body limit inside its token gate
    if api.root_path:  # outermost: the token gate and the routes see it
        app = RootPath(app, api.root_path.rstrip("/"))
    return uvicorn.Config(
        app,
        host=api.host,
        port=api.port if port is None else port,
        log_level="warning",
        log_config=None,  # uvicorn's loggers go through framefleet's set-up (framefleet.logs)
        timeout_graceful_shutdown=10,
        access_log=False,
        proxy_headers=True,
        forwarded_allow_ips=api.forwarded_allow_ips,
    )


def _server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, whose SIGTERM or Ctrl-C ends the process with exit 0 once the
        requests in flight are done (uvicorn's own re-raises the signal at the end)."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, self.handle_exit)
            yield

    return Server
