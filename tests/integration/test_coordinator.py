"""The coordinator on a local Ray: it keeps the fleet alive through kill -9 of a decode
actor's and an inference actor's processes mid-video, and every video ends done, acked once,
with the same detections as a direct single-process run."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from redis import Redis

from framefleet.coordinator.supervisor import Coordinator
from framefleet.queue import EmbeddedServer, Queue, Supervision
from framefleet.settings import (
    CoordinatorSettings,
    ModelSettings,
    PipelineSettings,
    QueueSettings,
    Settings,
    SourceSettings,
)
from framefleet.workers.decode import Sampling
from framefleet.workers.model import load_model
from framefleet.workers.outputs import OutputStore
from tests.support.detections import assert_same, direct_run, pipeline_rows
from tests.support.models import write_tiny_detr
from tests.support.videos import write_video

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fleet_settings(tmp_path: Path) -> Settings:
    videos = tmp_path / "videos"
    videos.mkdir()
    return Settings(
        queue=QueueSettings(name="coord", lease_s=60),
        source=SourceSettings(allowed_roots=(videos,)),
        model=ModelSettings(
            model=str(write_tiny_detr(tmp_path / "detr")), score_threshold=0.0, torch_threads=1
        ),
        pipeline=PipelineSettings(
            out=str(tmp_path / "out"),
            chunk_frames=8,
            max_inflight_chunks=2,
            decode_actors=1,
            inference_actors=1,
            gpus_per_inference=0.0,
            cpus_per_decoder=0.5,
            cpus_per_inference=0.5,
        ),
        coordinator=CoordinatorSettings(
            tick_s=0.5, leader_ttl_s=3.0, stale_s=4.0, ray_temp_dir=f"/tmp/ffco-{os.getpid()}"
        ),
    )


def _pid(sup: Supervision, kind: str) -> int:
    """The process of the first `kind` actor in the health report, once it is known."""
    found: list[int] = []

    def known() -> bool:
        pids = ((sup.health() or {}).get("pids") or {}).items()
        found[:] = [int(pid) for name, pid in pids if name.startswith(kind) and pid]
        return bool(found)

    _wait(known, 30, f"the pid of a {kind} actor")
    return found[0]


def _wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_fleet_survives_kill_9_of_its_actors(
    fleet_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    videos = tmp_path / "videos"
    paths = [write_video(videos / f"v{i}.mp4", frames=240) for i in range(3)]
    server = EmbeddedServer(tmp_path / "redis").start()
    client = Redis.from_url(server.url, decode_responses=True)
    queue = Queue(client, fleet_settings.queue)
    sup = Supervision(queue)
    ids = queue.enqueue([str(p) for p in paths])
    coordinator = Coordinator(fleet_settings, server.url)
    thread = threading.Thread(target=coordinator.run, daemon=True)
    thread.start()
    try:

        def mid_video() -> bool:
            return any(
                (item := queue.get(i)) is not None and item.state == "leased" and item.chunks_done
                for i in ids
            )

        _wait(mid_video, 120, "a video half-way")
        os.kill(_pid(sup, "decoder"), signal.SIGKILL)
        _wait(lambda: queue.stats().counters.get("orphaned_total", 0) >= 1, 30, "the orphan")
        _wait(mid_video, 120, "a video half-way again")
        os.kill(_pid(sup, "inference"), signal.SIGKILL)
        _wait(lambda: queue.stats().counts["done"] == len(ids), 240, "every video done")
    finally:
        coordinator.stop()
        thread.join(60)
    stats = queue.stats()
    assert stats.counts["dead"] == 0
    assert stats.counters["acked_total"] == len(ids)  # none acknowledged twice
    assert not thread.is_alive()
    model = load_model(fleet_settings.model)
    store = OutputStore(fleet_settings.pipeline.out, fleet_settings.source)
    for item_id, path in zip(ids, paths, strict=True):
        assert_same(pipeline_rows(store, item_id), direct_run(model, path, Sampling()))
    assert sup.leader() is None  # the lease was given up on stop
    client.close()
    server.stop()
