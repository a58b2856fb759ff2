"""The Ray driver's loop (coordinator/driver.py) with Ray scripted in memory behind the
RayAdapter's surface and a real queue in Redis: a head lost while the pools' tick is inside a
Ray call (which then hangs until Ray's reconnect timeout) is reported within a tick and ends
the driver after gcs_grace_s, as a head lost between ticks is. The same on a real cluster,
where the timing is left to chance, is test_coordinator's kill -9 of the head."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from framefleet.coordinator.driver import GCS_LOST, Driver
from framefleet.queue import Supervision
from framefleet.queue.server import EmbeddedServer
from framefleet.settings import CoordinatorSettings, ModelSettings

from .test_pools import SETTINGS, ScriptedRay

GRACE_S, TICK_S = 1.0, 0.2


class HeadLostInTick(ScriptedRay):
    """A cluster whose head dies, once `armed`, inside the pools' next Ray call: its GCS port
    refuses connections from then on, and that call hangs (as ray.nodes() and the state API
    do while the GCS is down)."""

    def __init__(self, gcs: socket.socket) -> None:
        super().__init__(cpus=8, gpus=1)
        self.gcs = gcs
        self.armed = threading.Event()
        self.hung = threading.Event()  # a tick is inside a Ray call that will not return
        self.hung_at = 0.0
        self.released = threading.Event()

    def init(self, *args: Any) -> None:
        pass

    def gcs_address(self) -> str:
        host, port = self.gcs.getsockname()
        return f"{host}:{port}"

    def alive_nodes(self) -> int:
        return 1

    def draining_nodes(self) -> set[str]:  # every tick asks
        if self.armed.is_set():
            self.gcs.close()  # kill -9 of the head
            self.hung_at = time.monotonic()
            self.hung.set()
            self.released.wait(120)
        return super().draining_nodes()


@pytest.fixture
def gcs() -> Iterator[socket.socket]:
    listener = socket.create_server(("127.0.0.1", 0))
    yield listener
    listener.close()


def test_a_head_lost_inside_a_ticks_ray_call_is_reported_and_ends_the_driver(
    valkey: EmbeddedServer, gcs: socket.socket, tmp_path: Path
) -> None:
    settings = replace(
        SETTINGS,
        queue=replace(SETTINGS.queue, name="driver"),
        model=ModelSettings(random_weights=True),
        pipeline=replace(SETTINGS.pipeline, out=str(tmp_path / "out")),
        coordinator=CoordinatorSettings(
            tick_s=TICK_S, gcs_grace_s=GRACE_S, leader_ttl_s=10.0, stale_s=10.0
        ),
    )
    driver = Driver(settings, valkey.url, "g-driver", leader="leader-1")
    ray = HeadLostInTick(gcs)
    driver.adapter = ray  # type: ignore[assignment]
    supervision: Supervision = driver.supervision
    assert supervision.hold_leadership("leader-1", ttl_s=60)
    seen: dict[str, Any] = {}

    def kill_mid_tick() -> None:
        end = time.monotonic() + 30
        while time.monotonic() < end and (supervision.health() or {}).get("gcs") is not True:
            time.sleep(0.02)  # a whole tick has been reported: the pools run
        ray.armed.set()
        ray.hung.wait(30)
        while time.monotonic() < end and (supervision.health() or {}).get("gcs") is not False:
            time.sleep(0.02)
        seen["reported_at"] = time.monotonic()
        seen["report"] = supervision.health()

    watcher = threading.Thread(target=kill_mid_tick, daemon=True)
    watcher.start()
    try:
        code = driver.run()  # the main thread's: run() sets its signal handlers
        ended = time.monotonic()
    finally:
        ray.released.set()
        driver.ticker.shutdown(wait=True)
    watcher.join(30)
    assert ray.hung.is_set(), "the head was not lost inside a tick's Ray call"
    assert code == GCS_LOST
    report = seen["report"]
    assert report["gcs"] is False and report["generation"] == "g-driver", report
    # noticed within a few ticks of the hang (the bound leaves room for a loaded machine),
    # not when Ray's call gives up (a minute: the call here hangs until the test ends)
    assert seen["reported_at"] - ray.hung_at < 10.0
    # and the driver gave up after its grace time, while the tick still hung
    assert GRACE_S <= ended - ray.hung_at < GRACE_S + 10.0


def test_the_health_report_counts_replacements_and_says_why_it_is_not_ok(
    valkey: EmbeddedServer, gcs: socket.socket, tmp_path: Path
) -> None:
    """Until an inference actor is ready the report is not ok and says why; an actor that
    dies is replaced, and `replaced` counts it on every report after (not only the tick's)."""
    settings = replace(
        SETTINGS,
        queue=replace(SETTINGS.queue, name="driver-replaced"),
        model=ModelSettings(random_weights=True),
        pipeline=replace(SETTINGS.pipeline, out=str(tmp_path / "out")),
        coordinator=CoordinatorSettings(tick_s=TICK_S, leader_ttl_s=10.0, stale_s=10.0),
    )
    driver = Driver(settings, valkey.url, "g-replaced", leader="leader-2")
    ray = HeadLostInTick(gcs)  # never armed: the head stays up
    driver.adapter = ray  # type: ignore[assignment]
    supervision: Supervision = driver.supervision
    assert supervision.hold_leadership("leader-2", ttl_s=60)
    reports: list[dict[str, Any]] = []
    write = supervision.write_health

    def kept(report: dict[str, Any], ttl_s: float) -> None:  # every report, as written
        reports.append(report)
        write(report, ttl_s)

    supervision.write_health = kept  # type: ignore[method-assign]

    def kill_one_then_stop() -> None:
        end = time.monotonic() + 30
        while time.monotonic() < end and not any(r.get("ok") for r in reports):
            time.sleep(0.01)
        [victim, *_] = ray.live("InferenceActor")
        ray.kill(victim)  # it dies: Ray says so at the next ping
        while time.monotonic() < end and not any(r.get("replaced") for r in reports):
            time.sleep(0.01)
        seen = len(reports)
        while time.monotonic() < end and len(reports) < seen + 3:  # three ticks more
            time.sleep(0.01)
        driver.stopping.set()

    watcher = threading.Thread(target=kill_one_then_stop, daemon=True)
    watcher.start()
    try:
        assert driver.run() == 0
    finally:
        driver.ticker.shutdown(wait=True)
    watcher.join(30)
    first = reports[0]
    assert first["ok"] is False and first["error"].startswith("no inference actor ready yet")
    replaced = [r["replaced"] for r in reports if "replaced" in r]
    at = replaced.index(1)
    assert replaced[at:] == [1] * len(replaced[at:]) and len(replaced[at:]) >= 3, replaced
