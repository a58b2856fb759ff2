"""Regression tests of the hardening review (issue 12) on a real local Ray: the decode and
inference actors through faults, with and without a coordinator. Each is named after its
finding and failed on the code before its fix."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pytest
from redis import Redis

from framefleet.queue import EmbeddedServer, Queue
from framefleet.settings import (
    CoordinatorSettings,
    ModelSettings,
    PipelineSettings,
    QueueSettings,
    Settings,
    SourceSettings,
)
from framefleet.workers.actors import Fleet, InferenceActor
from tests.support.deadline import left
from tests.support.fleet import Fleet as FaultFleet
from tests.support.fleet import make_fleet, wait
from tests.support.jobs import local_ray
from tests.support.videos import write_video


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    with local_ray():
        yield


def _settings(queue: str, tmp_path: Path, **pipeline: Any) -> tuple[Settings, list[Path]]:
    videos = tmp_path / "videos"
    videos.mkdir()
    paths = [write_video(videos / f"v{i}.mp4", frames=64) for i in range(3)]
    settings = Settings(
        queue=QueueSettings(name=queue, lease_s=30),
        source=SourceSettings(allowed_roots=(videos,)),
        model=ModelSettings(plugin="tests.support.plugin_model:load_slow"),  # 0.5 s a chunk
        pipeline=PipelineSettings(
            out=str(tmp_path / "out"),
            chunk_frames=8,
            max_inflight_chunks=2,
            gpus_per_inference=0.0,
            cpus_per_inference=0.5,
            cpus_per_decoder=0.5,
            **pipeline,
        ),
        coordinator=CoordinatorSettings(tick_s=0.5, stale_s=2.0),
    )
    return settings, paths


def _decoder_pid(fleet: Fleet, name: str) -> int:
    decoder = fleet.decoders[fleet.names.index(name)]
    pid, _ = fleet.adapter.get(fleet.adapter.call(decoder, "ready"))
    return int(pid)


def _in_thread(fn: Any) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    return thread, box


def test_f13_a_fleet_without_a_coordinator_survives_a_killed_decode_actor(
    ray_local: None, valkey: EmbeddedServer, valkey_client: Redis, tmp_path: Path
) -> None:
    """The README's Python path (Fleet.run_until_empty, no coordinator): kill -9 of a decode
    actor mid-video. Its video comes back (the other decode actor's sweeps), every video is
    done and run_until_empty returns. Worker names are unique to each fleet."""
    settings, paths = _settings(
        "f13", tmp_path, decode_actors=2, inference_actors=1, items_per_decoder=1
    )
    q = Queue(valkey_client, settings.queue)
    ids = q.enqueue([str(p) for p in paths])
    fleet = Fleet(settings, valkey.url).start()
    assert all(fleet.generation in name for name in fleet.names)
    assert Fleet(settings, valkey.url).generation != fleet.generation
    thread, box = _in_thread(lambda: fleet.run_until_empty(timeout=left(240)))
    try:
        wait(lambda: any(i.state == "leased" and i.chunks_done for i in q.items(ids)), 60, "mid")
        victim = next(i for i in q.items(ids) if i.state == "leased" and i.chunks_done)
        os.kill(_decoder_pid(fleet, str(victim.owner)), signal.SIGKILL)
        thread.join(300)
        assert not thread.is_alive() and "error" not in box, box.get("error")
    finally:
        fleet.stop()
        thread.join(60)  # before Ray shuts down: the thread calls it
    assert all(item.state == "done" for item in q.items(ids))
    assert q.stats().counters["acked_total"] == len(ids)


def test_f4_while_no_inference_actor_is_ready_no_video_burns_an_attempt(
    ray_local: None, valkey: EmbeddedServer, valkey_client: Redis, tmp_path: Path
) -> None:
    """The only inference actor dies mid-run. The chunks out wait inference_wait_s for
    another, then their videos go back to the queue with no attempt; the decode actor claims
    nothing while no inference actor is ready. Once one is, every video is done."""
    settings, paths = _settings(
        "f4", tmp_path, decode_actors=1, inference_actors=1, inference_wait_s=2.0
    )
    q = Queue(valkey_client, settings.queue)
    ids = q.enqueue([str(p) for p in paths])
    fleet = Fleet(settings, valkey.url).start()
    thread, box = _in_thread(lambda: fleet.run_until_empty(timeout=left(240)))
    try:
        wait(lambda: any(i.state == "leased" and i.chunks_done for i in q.items(ids)), 60, "mid")
        fleet.adapter.kill(fleet.inference[0])
        wait(lambda: q.stats().counts["leased"] == 0, 30, "the videos released")
        time.sleep(3)  # nothing is claimed meanwhile
        items = q.items(ids)
        assert all(i.attempts == 0 and i.state in ("queued", "delayed", "done") for i in items), [
            (i.state, i.attempts, i.last_error, i.release_reason) for i in items
        ]
        assert any(i.release_reason for i in items), items
        a = fleet.adapter
        fresh = a.create(
            a.remote_class(InferenceActor),
            {"num_cpus": 0.5, "num_gpus": 0.0},
            settings,
            valkey.url,
            "inference-f4-fresh",
        )
        a.wait_ready([a.call(fresh, "describe")], 120)
        fleet.inference = [fresh]
        a.get(a.call(fleet.decoders[0], "set_inference", [fresh]))
        thread.join(300)
        assert not thread.is_alive() and "error" not in box, box.get("error")
    finally:
        fleet.stop()
        thread.join(60)  # before Ray shuts down: the thread calls it
    items = q.items(ids)
    assert all(i.state == "done" and i.attempts == 0 for i in items), items


# -- under a coordinator (its own local Ray) -----------------------------------------------


@contextlib.contextmanager
def _coordinated(fleet: FaultFleet, name: str, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    proc = fleet.coordinator(name, own_session=True, **env)
    try:
        yield proc
    finally:
        _end_session(proc)


def _end_session(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then whatever of its session (its driver, its local Ray) is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGCONT)
    if proc.poll() is None:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(40)
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getsid(p.pid) == proc.pid:
                p.kill()


def _gone(proc: psutil.Process) -> bool:
    """Exited (a zombie while its parent is stopped and cannot reap it)."""
    try:
        return bool(proc.status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def _pid_gone(pid: int) -> bool:
    try:
        return _gone(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return True


def _pids(fleet: FaultFleet) -> dict[str, int]:
    return {k: v for k, v in ((fleet.supervision.health() or {}).get("pids") or {}).items() if v}


def test_f5_a_redis_restart_mid_video_loses_nothing_charges_nothing_and_kills_no_actor(
    tmp_path: Path,
) -> None:
    """kill -9 of the Redis server for 2 s mid-video under a coordinator: its clients
    retry, the decode threads carry on, the leader keeps its lease. Every video done, acked
    once, no delivery counted, and the same actors before and after.

    The leader lease is the default 10 s: an outage longer than it ends the fleet on
    purpose (the leader cannot know that no standby took over), and with make_fleet's 3 s
    a 2 s outage plus the restart came within it on a loaded machine."""
    ttl = CoordinatorSettings().leader_ttl_s
    fleet = make_fleet(tmp_path, None, {}, leader_ttl_s=ttl)
    try:
        with _coordinated(fleet, "coordinator"):
            wait(fleet.mid_video, 180, "a video half-way")
            wait(lambda: len(_pids(fleet)) == 3, 60, "the actors' pids")
            before = _pids(fleet)
            down = fleet.restart_server(down_s=2.0)
            print(f"Redis did not answer for {down:.1f} s (leader lease {ttl:.0f} s)")
            assert down < ttl - 2 * fleet.settings.coordinator.tick_s, down
            wait(fleet.done, 240, "every video done")
            after = _pids(fleet)
        fleet.check()
        assert after == before, (before, after)
    finally:
        fleet.close()


def test_f6_a_sigstopped_inference_actor_stalls_nothing_for_long(tmp_path: Path) -> None:
    """SIGSTOP of one of the two inference actors mid-run: its heartbeat goes stale, the
    coordinator kills it (out of the rotation at once) and its chunks go to the other.
    Every video is done within three lease times of the SIGSTOP."""
    lease_s = 20.0
    fleet = make_fleet(tmp_path, None, {}, lease_s=lease_s)
    try:
        with _coordinated(fleet, "coordinator"):
            wait(fleet.mid_video, 180, "a video half-way")
            wait(lambda: sum(k.startswith("inference") for k in _pids(fleet)) == 2, 60, "pids")
            victim = next(v for k, v in _pids(fleet).items() if k.startswith("inference"))
            os.kill(victim, signal.SIGSTOP)
            took = wait(fleet.done, 3 * lease_s, "every video done within three lease times")
            print(f"done {took:.1f} s after the SIGSTOP")
            # the coordinator killed it (its heartbeat went stale), and no lease or chunk
            # waits on it: nothing is leased while every video is done
            wait(lambda: _pid_gone(victim), 60, "the stopped actor to be killed")
            assert fleet.queue.stats().counts["leased"] == 0
        fleet.check()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
        fleet.close()


def test_f14_the_driver_of_a_sigstopped_leader_stops_its_fleet(tmp_path: Path) -> None:
    """SIGSTOP of the leader coordinator (its driver runs on): the standby takes the lead
    and starts its own fleet; the old driver sees that its coordinator no longer leads and
    stops its pools (their videos released) and exits, so that two fleets do not run."""
    fleet = make_fleet(tmp_path, None, {})
    second = {"FRAMEFLEET_RAY_TEMP_DIR": tempfile.mkdtemp(prefix="ffco-")}
    try:
        with _coordinated(fleet, "a") as a, _coordinated(fleet, "b", **second) as b:
            wait(fleet.mid_video, 180, "a video half-way")
            leader = a if f"-{a.pid}-" in (fleet.supervision.leader() or "") else b
            standby = b if leader is a else a
            [driver] = psutil.Process(leader.pid).children()
            os.kill(leader.pid, signal.SIGSTOP)
            wait(lambda: f"-{standby.pid}-" in (fleet.supervision.leader() or ""), 30, "lead")
            wait(lambda: _gone(driver), 60, "the old driver to stop by itself")
            wait(fleet.done, 240, "every video done")
            os.kill(leader.pid, signal.SIGCONT)
        fleet.check()
    finally:
        fleet.close()


def test_f3_a_suspect_starts_only_once_its_decode_actor_holds_nothing_else(
    ray_local: None, valkey: EmbeddedServer, valkey_client: Redis, tmp_path: Path
) -> None:
    """A video becomes a suspect (a worker holding it and another crashed) while the decode
    actor is busy with two others. A lease time later the busy actor takes it, and opens it
    only once its other videos are done: whenever the actor's process has the suspect's
    file open, it holds nothing else."""
    from framefleet.queue import Supervision

    settings, paths = _settings(
        "f3", tmp_path, decode_actors=1, inference_actors=1, items_per_decoder=2
    )
    settings = replace(settings, queue=replace(settings.queue, lease_s=3.0))
    q = Queue(valkey_client, settings.queue)
    sup = Supervision(q)
    busy = q.enqueue([str(p) for p in paths[:2]])
    fleet = Fleet(settings, valkey.url).start()
    [decoder] = fleet.names
    thread, box = _in_thread(lambda: fleet.run_until_empty(timeout=left(240)))
    seen: list[tuple[bool, set[str]]] = []
    try:
        wait(lambda: all(i.state == "leased" for i in q.items(busy)), 60, "both videos claimed")
        extra = write_video(paths[0].parent / "suspect.mp4", frames=64)
        [suspect, other] = q.enqueue([str(extra), str(paths[2])])
        q.claim(2, "decoder-crashed")
        sup.heartbeat("decoder-crashed")
        time.sleep(settings.coordinator.stale_s + 0.5)  # it never beats again
        sup.sweep(settings.coordinator.stale_s)
        assert q.get(suspect).solo  # type: ignore[union-attr]
        pid = _decoder_pid(fleet, decoder)
        while thread.is_alive() and q.get(suspect).state != "done":  # type: ignore[union-attr]
            item = q.get(suspect)
            assert item is not None
            if item.state == "leased":
                seen.append((_has_open(pid, extra), sup.held(decoder)))
            time.sleep(0.02)
        thread.join(300)
        assert not thread.is_alive() and "error" not in box, box.get("error")
    finally:
        fleet.stop()
        thread.join(60)
    waited = [held for opened, held in seen if not opened and held - {suspect}]
    assert waited, "the actor was never busy with others when it took the suspect"
    opened_with = [held for opened, held in seen if opened]
    assert opened_with and all(held == {suspect} for held in opened_with), opened_with
    assert all(i.state == "done" for i in q.items([*busy, suspect, other]))


def _has_open(pid: int, path: Path) -> bool:
    """Whether the process, or a child of it (the decoder's own process), has `path` open
    (the decoder opened the video)."""
    pids = [pid]
    with contextlib.suppress(psutil.Error):
        pids += [child.pid for child in psutil.Process(pid).children(recursive=True)]
    for each in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{each}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if fd.readlink() == path:
                        return True
    return False
