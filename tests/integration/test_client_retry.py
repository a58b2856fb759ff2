"""Clients retry a command for 20 s or more while the server does not answer (README,
"Redis"): a server killed and started again meanwhile is waited for, not reported; one that
stays away past the retry window is reported as a connection error, no sooner."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from unittest import mock

import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry

from framefleet.queue import EmbeddedServer, Queue, connect
from framefleet.queue.connect import RETRY_S, retry
from framefleet.settings import QueueSettings

DOWN_S = 3.0  # how long the server stays away in the restart test


def _least_wait_s(client_retry: Retry) -> float:
    """The least a Retry waits in all before it gives up: its backoff's own waits, each
    with its random part at its smallest, summed over its retries."""
    with mock.patch("redis.backoff.random.uniform", lambda low, high: low):
        waits = [client_retry._backoff.compute(k) for k in range(1, client_retry.get_retries() + 1)]
    return float(sum(waits))


def test_the_default_retry_window_is_20_s_or_more(tmp_path: Path) -> None:
    """What connect() gives a client by default waits at least RETRY_S, and RETRY_S is the
    README's 20 s (the tests below use shorter windows to stay short)."""
    assert RETRY_S == 20.0
    assert _least_wait_s(retry()) >= 20.0
    with EmbeddedServer(tmp_path) as server:
        client = connect(server.url)
        try:
            assert isinstance(client, Redis)  # one server's URL
            client_retry = client.get_retry()
            assert client_retry is not None and _least_wait_s(client_retry) >= 20.0
        finally:
            client.close()


def test_a_command_issued_while_the_server_is_down_succeeds_once_it_is_back(
    tmp_path: Path,
) -> None:
    """kill -9 of the server, a command issued at once, the server started again DOWN_S
    later on its port and data dir: the command waits for it and succeeds (with the default
    retry window), and nothing acknowledged before the kill is lost (appendfsync always)."""
    server = EmbeddedServer(tmp_path, appendfsync="always").start()
    try:
        client = connect(server.url)
        q = Queue(client, QueueSettings())
        [first] = q.enqueue(["/v/before.mp4"])
        server.kill()
        issued = threading.Event()
        restarted_at: list[float] = []

        def restart() -> None:
            issued.wait()
            time.sleep(DOWN_S)  # time for the command to find the server away
            restarted_at.append(time.monotonic())
            server.start()

        thread = threading.Thread(target=restart, daemon=True)
        thread.start()
        started = time.monotonic()
        issued.set()
        [second] = q.enqueue(["/v/during.mp4"])  # issued while the server is down
        answered = time.monotonic()
        thread.join()
        assert restarted_at and started < restarted_at[0] <= answered
        assert answered - started >= DOWN_S
        for item_id in (first, second):
            item = q.get(item_id)
            assert item is not None and item.state == "queued", item
        client.close()
    finally:
        server.stop()


def test_a_server_that_stays_down_past_the_retry_window_is_a_connection_error(
    tmp_path: Path,
) -> None:
    """With a 3 s window: a connection error, after 3 s at least (the client waited the
    window out), and not much later (it did give up)."""
    retry_s = 3.0
    with EmbeddedServer(tmp_path) as server:
        client = connect(server.url, retry_s=retry_s)
        try:
            assert client.ping()
            server.kill()
            started = time.monotonic()
            with pytest.raises(RedisConnectionError):
                client.ping()
            waited = time.monotonic() - started
        finally:
            client.close()
    assert retry_s <= waited < retry_s * 2 + 5, waited
