"""A leader cut off from Redis gives its fleet up by its own clock: its lease is renewed on a
client of its own with timeouts well under a third of the lease, a watchdog ends its Ray
driver once the lease has run out whatever the main loop is blocked on, and workers whose
heartbeats have failed for as long stop themselves (an inference actor frees its GPU).
Real Redis, a TCP relay that drops everything while cut (a black-holed route)."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from framefleet.coordinator.supervisor import Coordinator
from framefleet.queue import Queue, Supervision, connect
from framefleet.queue.server import EmbeddedServer
from framefleet.settings import CoordinatorSettings, QueueSettings, Settings
from framefleet.workers.actors import Heartbeat, beat_queue
from tests.support.fleet import wait
from tests.support.servers import Blackhole

TTL_S = 3.0


class _SleepDriver(Coordinator):
    """The real coordinator, with a `sleep` for its Ray driver child (started once): what is
    tested is when the leader ends its child, not what the child does."""

    started: int = 0

    def _watch_child(self) -> None:
        if self.child is None and not self.started:
            self.started += 1
            self.generation = f"g{self.name[-4:]}"
            self.supervision.add_fleet(self.generation, self.name)
            self.child = subprocess.Popen(["sleep", "600"])


def _settings(name: str) -> Settings:
    return Settings(
        queue=QueueSettings(name=name),
        coordinator=CoordinatorSettings(leader_ttl_s=TTL_S, tick_s=0.5, stale_s=TTL_S),
    )


@pytest.fixture
def relay(valkey: EmbeddedServer) -> Iterator[Blackhole]:
    with Blackhole(valkey.port) as relay:
        yield relay


def _running(c: Coordinator) -> Callable[[], bool]:
    return lambda: c.child is not None and c.child.poll() is None


def test_a_leader_cut_off_from_redis_ends_its_driver_when_its_lease_runs_out(
    valkey: EmbeddedServer, relay: Blackhole
) -> None:
    """Before, the cut-off leader's lease renewal blocked on the shared client (retries,
    30 s socket timeouts) and its driver ran until the link came back, minutes later, while
    the standby's fleet ran too."""
    settings = _settings("partition")
    a = _SleepDriver(settings, relay.url(valkey.url), name="coord-a-aaaa")
    threads = [threading.Thread(target=a.run, daemon=True)]
    threads[0].start()
    b: _SleepDriver | None = None
    try:
        wait(_running(a), 30, "the first leader's driver")
        b = _SleepDriver(settings, valkey.url, name="coord-b-bbbb")
        threads.append(threading.Thread(target=b.run, daemon=True))
        threads[1].start()
        relay.cut()
        cut = time.monotonic()
        wait(_running(b), 30, "the standby to lead and start its driver")
        took = wait(lambda: not _running(a)(), 3 * TTL_S, "the cut-off leader's driver to end")
        print(f"the cut-off leader's driver ended {time.monotonic() - cut:.1f} s after the cut")
        assert took < 3 * TTL_S
        time.sleep(TTL_S)  # it does not start another one while it cannot renew
        assert not _running(a)() and a.started == 1
        assert Supervision(Queue(connect(valkey.url), settings.queue)).leader() == b.name
    finally:
        relay.heal()
        for c in (a, b):
            if c is not None:
                c.stop()
        for t in threads:
            t.join(60)


def test_a_worker_whose_heartbeats_fail_for_its_stale_time_stops_itself(
    valkey: EmbeddedServer, relay: Blackhole
) -> None:
    """Before, a heartbeat that failed only logged a warning, for ever: the actor went on
    (an inference actor holding its GPU) after the queue had given its work to others."""
    settings = _settings("silenced")
    queue = beat_queue(relay.url(valkey.url), settings)  # as an actor's
    silenced = threading.Event()
    beat = Heartbeat(queue, "inference-g1-0", settings, silenced=silenced.set)
    try:
        time.sleep(TTL_S / 2)
        assert not silenced.is_set()  # while its beats are written
        relay.cut()
        cut = time.monotonic()
        wait(silenced.is_set, 4 * TTL_S, "the worker to stop itself")
        took = time.monotonic() - cut
        print(f"stopped itself {took:.1f} s after the cut")
        assert took >= TTL_S - 1.0  # not at the first failed beat
    finally:
        relay.heal()
        beat.closed.set()


def test_inference_actors_cut_off_from_redis_end_their_processes(
    valkey: EmbeddedServer, relay: Blackhole, tmp_path: Path
) -> None:
    """The actors of a real fleet (a local Ray) reach Redis through the relay; once it is cut
    for longer than max(stale_s, leader_ttl_s), each inference actor's process ends (its GPU
    is free) and the decode actors stop claiming. Before, they ran on for as long as the
    cut lasted."""
    import psutil

    from framefleet.settings import ModelSettings, PipelineSettings
    from framefleet.workers.actors import Fleet
    from tests.support.jobs import local_ray

    settings = Settings(
        queue=QueueSettings(name="cut-actors"),
        model=ModelSettings(plugin="tests.support.plugin_model:load"),
        pipeline=PipelineSettings(
            out=str(tmp_path / "out"),
            decode_actors=1,
            inference_actors=2,
            gpus_per_inference=0.0,
            cpus_per_inference=0.5,
            cpus_per_decoder=0.5,
        ),
        coordinator=CoordinatorSettings(tick_s=0.5, stale_s=2.0, leader_ttl_s=2.0),
    )
    with local_ray():
        fleet = Fleet(settings, relay.url(valkey.url)).start()
        try:
            a = fleet.adapter
            pids = [int(a.get(a.call(actor, "describe"))[2]) for actor in fleet.inference]
            assert all(psutil.pid_exists(pid) for pid in pids)
            relay.cut()
            cut = time.monotonic()
            wait(lambda: not any(_alive(pid) for pid in pids), 30, "the inference actors to end")
            print(f"inference actors ended {time.monotonic() - cut:.1f} s after the cut")
        finally:
            relay.heal()
            fleet.stop()


def _alive(pid: int) -> bool:
    import psutil

    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
