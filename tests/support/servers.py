"""Real servers the worker tests talk to: moto's S3 server in a subprocess, a proxy in front
of it that fails the first requests (what a struggling S3 does), and a small HTTP server
that serves files or answers with a chosen status (or hangs), on loopback."""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unread_bytes(port: int) -> int:
    """Bytes sent to the server listening on `port` on this machine that it has not read yet:
    the receive queues of its established connections (/proc/net/tcp). A stopped server's
    pending requests show here."""
    total = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                local, state, queues = fields[1], fields[3], fields[4]
                if state == "01" and int(local.rsplit(":", 1)[1], 16) == port:
                    total += int(queues.split(":")[1], 16)
    return total


@contextmanager
def moto_s3_server(env: dict[str, str] | None = None) -> Iterator[str]:
    """moto in server mode: a real S3 HTTP endpoint on loopback. Yields its URL. `env` is
    moto's own configuration (INITIAL_NO_AUTH_ACTION_COUNT=n: requests after the first n
    are authenticated and authorised against its IAM)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError("moto server exited") from None
                time.sleep(0.05)
        else:
            raise RuntimeError("moto server did not start")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


class FileServer:
    """Serves files from `root`; paths under /status/<code> answer that code, /hang never
    answers within a test's timeout, /flaky/<n>/<file> fails with 503 n times first,
    /redirect?to=<url> redirects there, /nolength/<file> sends it without a Content-Length."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.hits: dict[str, int] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                # the client may give up first (the timeout tests)
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self._get()

            def _get(self) -> None:
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                parts = self.path.strip("/").split("/")
                if parts[0].startswith("redirect?to="):
                    self.send_response(302)
                    self.send_header("Location", self.path.split("=", 1)[1])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if parts[0] == "status":
                    self.send_error(int(parts[1]))
                    return
                if parts[0] == "hang":
                    time.sleep(5)
                    self.send_error(504)
                    return
                if parts[0] == "nolength":  # no Content-Length: read until the connection ends
                    data = server.root.joinpath(*parts[1:]).read_bytes()
                    self.send_response(200)
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(data)
                    self.close_connection = True
                    return
                if parts[0] == "flaky":
                    if server.hits[self.path] <= int(parts[1]):
                        self.send_error(503)
                        return
                    parts = parts[2:]
                path = server.root.joinpath(*parts)
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class FaultyProxy:
    """A reverse proxy to `upstream` that answers the first `failures` requests with
    `status` itself and passes every later one through unchanged (headers and body both
    ways, so that the upstream's own answers, signatures included, reach the client).
    `conditional_status`: what it answers, itself, to every request with If-None-Match (a
    store without conditional writes answers 501). `dribble_s`: a GET's answer body is sent
    one byte every dribble_s (a slow S3-compatible endpoint), until the client hangs up.
    `failures` and `status` are attributes: a chaos run sets failures past the requests so
    far to fail everything from now on, and back to end it."""

    def __init__(
        self,
        upstream: str,
        failures: int,
        status: int = 503,
        conditional_status: int = 0,
        dribble_s: float = 0.0,
    ) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.requests = 0
        self.failures, self.status = failures, status
        lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _relay(self) -> None:
                with lock:
                    proxy.requests += 1
                    fail = proxy.requests <= proxy.failures
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                answer_status = proxy.status
                if conditional_status and self.headers.get("If-None-Match"):
                    fail, answer_status = True, conditional_status
                if fail:
                    message = b"<Error><Code>ServiceUnavailable</Code></Error>"
                    self.send_response(answer_status)
                    self.send_header("Content-Length", str(len(message)))
                    self.end_headers()
                    self.wfile.write(message)
                    return
                conn = http.client.HTTPConnection(host, int(port), timeout=30)
                try:
                    conn.request(self.command, self.path, body, dict(self.headers))
                    answer = conn.getresponse()
                    data = answer.read()
                    self.send_response(answer.status, answer.reason)
                    for name, value in answer.getheaders():
                        if name.lower() not in ("transfer-encoding", "connection"):
                            self.send_header(name, value)
                    if answer.getheader("Content-Length") is None:
                        self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command == "GET" and dribble_s:
                        with contextlib.suppress(OSError):  # until the client hangs up
                            for byte in data:
                                self.wfile.write(bytes([byte]))
                                self.wfile.flush()
                                time.sleep(dribble_s)
                    elif self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _relay

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FaultyProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Blackhole:
    """A TCP relay to 127.0.0.1:`upstream` that can be cut like a network partition: from
    `cut()` until `heal()` nothing passes, new connections and old ones hang (no reset, no
    close: packets dropped after the handshake), then everything held passes again."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.open = threading.Event()
        self.open.set()
        self.closed = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, redis_url: str) -> str:
        """`redis_url` (to the upstream port) through this relay."""
        return redis_url.replace(f":{self.upstream}/", f":{self.port}/")

    def cut(self) -> None:
        self.open.clear()

    def heal(self) -> None:
        self.open.set()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._join, args=(client,), daemon=True).start()

    def _join(self, client: socket.socket) -> None:
        self.open.wait()
        try:
            server = socket.create_connection(("127.0.0.1", self.upstream))
        except OSError:
            client.close()
            return
        pair = [client, server]
        with self._lock:
            self._socks += pair
        ended = threading.Barrier(2, action=lambda: self._drop(pair))
        for a, b in ((client, server), (server, client)):
            threading.Thread(target=self._pipe, args=(a, b, ended), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket, ended: threading.Barrier) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                self.open.wait()
                b.sendall(data)
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(threading.BrokenBarrierError):
            ended.wait()  # both directions over: the pair is closed (a long run's fds)

    def _drop(self, pair: list[socket.socket]) -> None:
        with self._lock:
            self._socks = [s for s in self._socks if s not in pair]
        for s in pair:
            with contextlib.suppress(OSError):
                s.close()

    def close(self) -> None:
        self.closed.set()
        self.open.set()
        self.listener.close()
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            with contextlib.suppress(OSError):
                s.close()

    def __enter__(self) -> Blackhole:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
