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
    # noticed within a tick or two of the hang, not when Ray's call gives up
    assert seen["reported_at"] - ray.hung_at < 5 * TICK_S + 1.0
    # and the driver gave up after its grace time, while the tick still hung
    assert GRACE_S <= ended - ray.hung_at < GRACE_S + 5 * TICK_S + 1.0
