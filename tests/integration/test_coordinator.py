"""The coordinator on a real multi-process Ray cluster (tests/support/raycluster.py: a head
without CPUs and a worker node with CPUs and a logical GPU, token authentication on), run
as `framefleet coordinator` subprocesses, through the faults it is there for:

- kill -9 of a decode actor's and of an inference actor's process mid-video, then SIGTERM to
  the coordinator mid-video (it releases the leases and exits within 30 s) and a new one;
- kill -9 of the leader coordinator: the standby takes over;
- SIGTERM to the worker node (a drained or preempted pod): its leases come back at once;
- kill -9 of every head process, then the head started again: the fleet resumes by itself;
- and on one machine without a cluster, kill -9 of the driver's local Ray: a new one starts.

Each ends with every video done, none acknowledged twice, and the detections equal to a
direct single-process run of the same model (what a fault-free run gives).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.support.fleet import Fleet, crash_head, make_fleet, reaped, wait
from tests.support.raycluster import LocalCluster

ROOT = Path(__file__).resolve().parents[2]
VIDEOS = 3
SIGTERM_EXIT_S = 30.0  # the bound: a coordinator exits this soon after SIGTERM


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    ray = LocalCluster(workers=1, cpus=2, gpus=1).start()
    ray.supervise()  # as KubeRay would: a worker node that exits is started again
    try:
        yield ray
    finally:
        ray.stop()


@pytest.fixture
def fleet(cluster: LocalCluster, tmp_path: Path) -> Iterator[Fleet]:
    cluster.wait_nodes()
    made = make_fleet(tmp_path, cluster.address, cluster.auth)
    yield made
    made.close()


def sigterm(proc: subprocess.Popen[bytes]) -> float:
    """SIGTERM to a coordinator; the seconds it took to exit (0 on success, asserted)."""
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(SIGTERM_EXIT_S + 30)
    took = time.monotonic() - started
    assert code == 0, f"coordinator exit code {code}"
    assert took < SIGTERM_EXIT_S, f"coordinator took {took:.1f} s to exit on SIGTERM"
    return took


def leader_process(fleet: Fleet, procs: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    """The coordinator holding the leader lease (its pid is part of its name)."""
    found: list[subprocess.Popen[bytes]] = []

    def known() -> bool:
        name = fleet.supervision.leader() or ""
        found[:] = [p for p in procs if f"-{p.pid}-" in name]
        return bool(found)

    wait(known, 30, "a leader")
    return found[0]


def test_kill_9_of_the_local_ray_and_the_coordinator_starts_another(tmp_path: Path) -> None:
    """On one machine (no --ray-address) the driver's local Ray is the head: kill -9 of all
    its processes, and the coordinator's next driver starts a new one and finishes. The
    decode actor holds one video at a time, so that only the driver's exit (a fleet-wide
    event) tells its crash from the video's fault: no delivery is charged."""
    fleet = make_fleet(tmp_path, None, {}, items_per_decoder=1)
    coordinator = fleet.coordinator("coordinator", own_session=True)
    try:
        wait(fleet.mid_video, 180, "a video half-way")
        driver = int((fleet.supervision.health() or {})["driver_pid"])
        ray = psutil.Process(driver).children(recursive=True)  # GCS, raylet, agents, actors
        assert any(p.name() == "gcs_server" for p in ray)
        for proc in ray:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        wait(
            lambda: not psutil.pid_exists(driver) or psutil.Process(driver).status() == "zombie",
            60,
            "the old driver to go",
        )
        wait(
            lambda: (
                (fleet.supervision.health() or {}).get("driver_pid") not in (None, driver)
                and (fleet.supervision.health() or {}).get("ready_inference", 0) > 0
            ),
            120,
            "a new driver with its own local Ray",
        )
        wait(fleet.done, 240, "every video done")
        sigterm(coordinator)
        fleet.check()  # nothing charged: the driver's exit ended its fleet
        assert fleet.queue.stats().counters["fleet_released_total"] >= 1
    finally:
        for proc in psutil.process_iter():  # whatever of its session is left
            with contextlib.suppress(psutil.Error, OSError):
                if os.getsid(proc.pid) == coordinator.pid:
                    proc.kill()
        fleet.close()


def test_kill_9_of_actors_then_sigterm_to_the_coordinator(fleet: Fleet) -> None:
    first = fleet.coordinator("first")
    with reaped(first, logs=fleet.logs):
        wait(fleet.mid_video, 180, "a video half-way")
        os.kill(fleet.pid("decoder"), signal.SIGKILL)
        wait(lambda: fleet.queue.stats().counters.get("orphaned_total", 0) >= 1, 30, "orphan")
        wait(fleet.mid_video, 120, "a video half-way again")
        os.kill(fleet.pid("inference"), signal.SIGKILL)
        before = fleet.chunks_done()
        wait(lambda: fleet.chunks_done() > before + 2, 120, "progress after the kill")
        wait(fleet.mid_video, 120, "a video half-way, for the SIGTERM")
        released = fleet.queue.stats().counters.get("released_total", 0)
        sigterm(first)
    stats = fleet.queue.stats()
    assert stats.counts["leased"] == 0, "a lease outlived the coordinator's SIGTERM"
    assert stats.counters.get("released_total", 0) > released
    assert fleet.supervision.leader() is None  # the lease was given up
    # a lease was released at the SIGTERM, so a video is left for a second coordinator (the
    # decode actor killed may have held one video alone: that one is charged)
    assert not fleet.done()
    second = fleet.coordinator("second")
    with reaped(second, logs=fleet.logs):
        wait(fleet.done, 240, "every video done")
        sigterm(second)
    fleet.check(charged=1)


def test_ray_address_given_as_a_flag_and_a_missing_token_is_named_in_the_health_report(
    fleet: Fleet, cluster: LocalCluster
) -> None:
    """`framefleet coordinator --ray-address ADDR` (nothing in the environment) connects to
    that cluster; without the cluster's token its health report says which address it could
    not reach and what to give it; with the token, the fleet there runs."""
    env = {
        k: v
        for k, v in fleet.env.items()
        if k not in ("FRAMEFLEET_RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
    }
    command = [sys.executable, "-m", "framefleet.cli", "coordinator"]
    command += ["--ray-address", cluster.address]
    with open(fleet.logs / "tokenless.log", "ab") as log:
        tokenless = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    with reaped(tokenless, logs=fleet.logs):
        report: dict[str, object] = {}

        def refused() -> bool:
            report.update(fleet.supervision.health() or {})
            return report.get("ok") is False and "error" in report

        wait(refused, 120, "a health report of the refused connection")
        error = str(report["error"])
        assert f"cannot connect to Ray at {cluster.address}" in error, error
        assert "RAY_AUTH_TOKEN" in error, error
        sigterm(tokenless)
    with open(fleet.logs / "token.log", "ab") as log:
        connected = subprocess.Popen(
            command, env={**env, **cluster.auth}, stdout=log, stderr=subprocess.STDOUT
        )
    with reaped(connected, logs=fleet.logs):
        wait(fleet.mid_video, 180, "a video half-way on the cluster")
        assert (fleet.supervision.health() or {}).get("ok") is True
        sigterm(connected)


def test_a_standby_takes_over_from_a_killed_leader(fleet: Fleet) -> None:
    procs = [fleet.coordinator("a"), fleet.coordinator("b")]
    with reaped(*procs, logs=fleet.logs):
        leader = leader_process(fleet, procs)
        standby = next(p for p in procs if p is not leader)
        wait(fleet.mid_video, 180, "a video half-way")
        driver = psutil.Process(leader.pid).children()
        assert driver, "the leader runs no driver process: nothing would be orphaned"
        leader.kill()
        leader.wait(10)
        took = wait(
            lambda: f"-{standby.pid}-" in (fleet.supervision.leader() or ""), 30, "takeover"
        )
        print(f"takeover {took:.1f} s after the kill")
        # the orphaned driver of the dead leader stops its pools and exits by itself
        psutil.wait_procs(driver, timeout=40)
        assert not [p for p in driver if p.is_running() and p.status() != "zombie"]
        wait(fleet.done, 240, "every video done")
        sigterm(standby)
    fleet.check()


def test_sigterm_to_a_worker_node_gives_its_videos_back_at_once(
    fleet: Fleet, cluster: LocalCluster
) -> None:
    """`ray start` drains its node on SIGTERM (up to 30 s, then ends it): the coordinator
    sees the drain and the node's decode actor releases its videos without an attempt."""
    coordinator = fleet.coordinator("coordinator")
    with reaped(coordinator, logs=fleet.logs):
        wait(fleet.mid_video, 180, "a video half-way")
        starts = cluster.workers[0].starts
        cluster.workers[0].terminate()  # the node's only decode actor holds leases
        # Ray drains the node for up to 30 s before it ends it: the leases come back well
        # within that (released, below, not expired), however loaded the machine
        took = wait(lambda: fleet.queue.stats().counts["leased"] == 0, 45, "the leases back")
        print(f"leases released {took:.1f} s after the SIGTERM")
        counters = fleet.queue.stats().counters
        assert counters.get("released_total", 0) >= 1
        assert counters.get("orphaned_total", 0) == 0  # released, not expired
        for item_id in fleet.ids:
            item = fleet.queue.get(item_id)
            assert item is not None and item.attempts == item.deliveries == 0
        wait(lambda: cluster.workers[0].starts > starts, 60, "the node restarted")
        wait(fleet.done, 240, "every video done")
        sigterm(coordinator)
    fleet.check()


def test_kill_9_of_the_head_node_and_the_fleet_resumes(fleet: Fleet, cluster: LocalCluster) -> None:
    coordinator = fleet.coordinator("coordinator")
    with reaped(coordinator, logs=fleet.logs):
        detected, resumed = crash_head(fleet, cluster)  # kill -9 of the head, then restart
        print(f"GCS loss noticed after {detected:.1f} s; resumed {resumed:.1f} s after the head")
        wait(fleet.done, 240, "every video done")
        sigterm(coordinator)
    fleet.check()
