"""One fault test's fleet: a queue of test videos on an embedded Redis, settings for a
coordinator subprocess (the tiny DETR paced to 0.3 s per batch, so that faults land
mid-video), and the checks every run ends with. Used by tests/integration/test_coordinator.py
and bench/recovery.py, which
both run `crash_head`."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from redis import Redis

from framefleet.queue import EmbeddedServer, Queue, Supervision
from framefleet.settings import (
    CoordinatorSettings,
    ModelSettings,
    PipelineSettings,
    QueueSettings,
    RedisSettings,
    Settings,
    SourceSettings,
)
from framefleet.workers.decode import Sampling
from framefleet.workers.model import load_model
from framefleet.workers.outputs import OutputStore
from tests.support import deadline
from tests.support.detections import assert_same, direct_run, pipeline_rows
from tests.support.models import write_tiny_detr
from tests.support.raycluster import LocalCluster
from tests.support.videos import write_video

ROOT = Path(__file__).resolve().parents[2]
VIDEOS = 3


@dataclass
class Fleet:
    """One run's queue, settings, videos and coordinator logs."""

    settings: Settings
    server: EmbeddedServer
    queue: Queue
    supervision: Supervision
    ids: list[str]
    paths: list[Path]
    env: dict[str, str]
    logs: Path

    def coordinator(
        self, name: str, own_session: bool = False, **env: str
    ) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "framefleet.cli", "coordinator"],
                env={**self.env, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=own_session,
            )

    def enqueue(self) -> None:
        """The videos enqueued at once (a burst)."""
        self.ids = self.queue.enqueue([str(p) for p in self.paths])

    def close(self) -> None:
        self.queue.client.close()
        self.server.stop()

    def restart_server(self, down_s: float) -> float:
        """kill -9 of the Redis server, `down_s` seconds down, then started again from its
        append-only file on the same port. Returns how long it did not answer, in seconds."""
        killed = time.monotonic()
        self.server.kill()
        time.sleep(down_s)
        self.server = EmbeddedServer(self.server.data_dir, port=self.server.port).start()
        return time.monotonic() - killed

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]

    def mid_video(self) -> bool:
        """Some video is leased with part of its chunks checkpointed (and none is dead)."""
        dead = self.queue.items_in("dead")
        assert not dead, f"a video went dead: {dead[0].dead_reason}"
        return any(i.state == "leased" and i.chunks_done for i in self.queue.items(self.ids))

    def chunks_done(self) -> int:
        return sum(item.chunks_done for item in self.queue.items(self.ids))

    def done(self) -> bool:
        return self.queue.stats().counts["done"] == len(self.ids)

    def pid(self, kind: str) -> int:
        """The process of a `kind` actor in the health report, once it is known."""
        found: list[int] = []

        def known() -> bool:
            pids = ((self.supervision.health() or {}).get("pids") or {}).items()
            found[:] = [int(pid) for name, pid in pids if name.startswith(kind) and pid]
            return bool(found)

        wait(known, 60, f"the pid of a {kind} actor")
        return found[0]

    def check(self, charged: int = 0) -> None:
        """Every video done, each acknowledged once, detections as a direct run gives, and at
        most `charged` deliveries counted against any video (a fleet-wide fault, such as a
        lost head or driver, charges none)."""
        stats = self.queue.stats()
        assert stats.counts["dead"] == 0
        assert stats.counters["acked_total"] == len(self.ids)
        deliveries = {item.id: item.deliveries for item in self.queue.items(self.ids)}
        assert max(deliveries.values()) <= charged, deliveries
        model = load_model(self.settings.model)
        store = OutputStore(self.settings.pipeline.out, self.settings.source)
        for item_id, path in zip(self.ids, self.paths, strict=True):
            assert_same(
                pipeline_rows(store, self.queue, item_id), direct_run(model, path, Sampling())
            )


def make_fleet(
    tmp_path: Path,
    ray_address: str | None,
    auth: dict[str, str],
    tick_s: float = 0.5,
    items_per_decoder: int = 2,
    lease_s: float = 60.0,
    leader_ttl_s: float | None = None,
    videos_n: int = VIDEOS,
    enqueue: bool = True,
    pipeline: dict[str, Any] | None = None,
    coordinator: dict[str, Any] | None = None,
) -> Fleet:
    """`videos_n` videos of 240 frames, enqueued unless told not to (then `Fleet.enqueue`);
    a local Ray (no GPU) when ray_address is None; `pipeline` and `coordinator` change those
    settings."""
    videos = tmp_path / "videos"
    videos.mkdir()
    paths = [write_video(videos / f"v{i}.mp4", frames=240) for i in range(videos_n)]
    server = EmbeddedServer(tmp_path / "redis").start()
    local = ray_address is None
    settings = Settings(
        redis=RedisSettings(url=server.url),
        queue=QueueSettings(name="coord", lease_s=lease_s),
        source=SourceSettings(allowed_roots=(videos,)),
        model=ModelSettings(
            model=str(write_tiny_detr(tmp_path / "detr")),
            plugin="tests.support.plugin_model:load_paced_detection",  # gives time to strike
            score_threshold=0.0,
            torch_threads=1,
        ),
        pipeline=PipelineSettings(
            out=str(tmp_path / "out"),
            chunk_frames=8,
            max_inflight_chunks=2,
            decode_actors=1,
            items_per_decoder=items_per_decoder,
            inference_actors=2,
            gpus_per_inference=0.0 if local else 0.25,
            cpus_per_decoder=0.5,
            cpus_per_inference=0.5,
        ),
        coordinator=CoordinatorSettings(
            ray_address=ray_address,
            ray_temp_dir=tempfile.mkdtemp(prefix="ffco-") if local else None,
            tick_s=tick_s,
            leader_ttl_s=leader_ttl_s or max(3.0, 2 * tick_s),
            stale_s=max(4.0, 3 * tick_s),  # the settings ask three ticks at least
        ),
    )
    settings = replace(
        settings,
        pipeline=replace(settings.pipeline, **(pipeline or {})),
        coordinator=replace(settings.coordinator, **(coordinator or {})),
    )
    client = Redis.from_url(server.url, decode_responses=True)
    queue = Queue(client, settings.queue)
    ids = queue.enqueue([str(p) for p in paths]) if enqueue else []
    env = {**os.environ, **settings.to_env(), **auth, "PYTHONPATH": str(ROOT)}
    logs = tmp_path / "logs"
    logs.mkdir()
    return Fleet(settings, server, queue, Supervision(queue), ids, paths, env, logs)


def wait(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until predicate() held; AssertionError after timeout, or sooner if the
    test's own time limit comes first (a slow run then says what it was waiting for)."""
    started = time.monotonic()
    allowed = deadline.left(timeout)
    end, cut = started + allowed, allowed < timeout
    while time.monotonic() < end:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.1)
    why = " (the test's time limit is near)" if cut else ""
    raise AssertionError(f"timed out after {end - started:.0f} s waiting for {what}{why}")


def crash_head(fleet: Fleet, cluster: LocalCluster) -> tuple[float, float]:
    """kill -9 of every head process mid-video, then the head started again, with a
    coordinator running. Returns (seconds from the kill to the lost GCS in the health
    report, seconds from the head being up again to the next chunk checkpointed)."""
    wait(fleet.mid_video, 300, "a video half-way")
    starts, killed = cluster.workers[0].starts, time.monotonic()
    cluster.head.kill()
    wait(lambda: (fleet.supervision.health() or {}).get("gcs") is False, 60, "the lost GCS")
    detect_s = time.monotonic() - killed
    # The worker node's raylet gives up on the dead head after RECONNECT_S, and its actors
    # work on until then. Start the head once they are gone, so that what happens next is
    # the coordinator's doing.
    wait(lambda: cluster.workers[0].starts > starts, 120, "the worker node to give up")
    cluster.head.start()
    cluster.head.wait_started()
    before = fleet.chunks_done()
    resume_s = wait(lambda: fleet.chunks_done() > before or fleet.done(), 300, "processing")
    return detect_s, resume_s


@contextlib.contextmanager
def reaped(*procs: subprocess.Popen[bytes], logs: Path | None = None) -> Iterator[None]:
    """The processes killed at the end; on a failure, the tail of each log in `logs` is
    printed first (pytest shows it with the failure)."""
    try:
        yield
    except BaseException:
        for path in sorted(logs.glob("*.log")) if logs else []:
            print(f"--- {path.name} ---\n{path.read_text(errors='replace')[-6000:]}")
        raise
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
