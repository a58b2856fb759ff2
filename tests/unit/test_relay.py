"""The chaos rig's relay (tests/support/servers.py Blackhole) over real loopback sockets:
it passes bytes both ways, holds them while cut, and gives back each connection's sockets
once both ends are done (an hour's soak relays thousands of connections: they leaked)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.support.servers import Blackhole


@pytest.fixture
def echo() -> Iterator[int]:
    """A TCP echo server on loopback: its port."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


def _until(predicate: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def test_the_relay_passes_holds_and_gives_back_its_sockets(echo: int) -> None:
    with Blackhole(echo) as relay:
        for n in range(20):
            with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as conn:
                conn.sendall(b"ping %d" % n)
                assert conn.recv(100) == b"ping %d" % n
        # every connection closed by its client: the relay keeps none of their sockets
        assert _until(lambda: relay._socks == []), len(relay._socks)

        with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as conn:
            conn.sendall(b"a")
            assert conn.recv(10) == b"a"
            relay.cut()
            conn.sendall(b"held")
            conn.settimeout(0.3)
            with pytest.raises(TimeoutError):
                conn.recv(10)
            relay.heal()
            conn.settimeout(5)
            assert conn.recv(10) == b"held"
            assert len(relay._socks) == 2  # open while in use
        assert _until(lambda: relay._socks == [])
