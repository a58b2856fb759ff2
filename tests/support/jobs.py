"""What the VideoJob tests share: a tiny real DETR, and one job's settings, queue, output
store and in-process inference over a folder of test videos."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from redis import Redis

from framefleet.queue import Queue
from framefleet.settings import (
    ModelSettings,
    PipelineSettings,
    QueueSettings,
    Settings,
    SourceSettings,
)
from framefleet.workers.model import FrameModel
from framefleet.workers.outputs import OutputStore
from framefleet.workers.pipeline import LocalInference, Pending

ROOT = Path(__file__).resolve().parents[2]


def job_env(tmp_path: Path, client: Redis, model: FrameModel, **queue: Any) -> dict[str, Any]:
    """videos/ (the allowed root), 8-frame chunks with 2 out, outputs in out/; `queue`
    overrides the queue settings (lease_s 30 by default)."""
    videos = tmp_path / "videos"
    videos.mkdir()
    settings = Settings(
        queue=replace(QueueSettings(lease_s=30), **queue),
        source=SourceSettings(allowed_roots=(videos,)),
        model=ModelSettings(model="tiny", score_threshold=0.05),
        pipeline=PipelineSettings(out=str(tmp_path / "out"), chunk_frames=8, max_inflight_chunks=2),
    )
    store = OutputStore(settings.pipeline.out, settings.source)
    return {
        "videos": videos,
        "settings": settings,
        "store": store,
        "queue": Queue(client, settings.queue),
        "inference": LocalInference(model, store),
    }


@contextlib.contextmanager
def local_ray(gpus: float = 0) -> Iterator[None]:
    """An in-process local Ray with 4 logical CPUs (and `gpus` logical GPUs) in a temp dir of
    its own; its actors import tests.support (models, plugins)."""
    import ray

    temp = tempfile.mkdtemp(prefix="ffray-", dir="/tmp")  # short: Ray's socket paths are long
    ray.init(
        num_cpus=4,
        num_gpus=gpus,
        include_dashboard=False,
        _temp_dir=temp,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
    )
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


class StopAfter:
    """In-process inference that sets `stop` (a preemption) once `n` chunks were handed to
    it: the first attempt of a video ends released, with checkpoints to resume from."""

    def __init__(self, inner: LocalInference, n: int, stop: threading.Event) -> None:
        self.inner, self.n, self.stop, self.sent = inner, n, stop, 0
        self.schema, self.model_name = inner.schema, inner.model_name

    def submit(self, item_id: str, video: str, chunk: Any) -> Pending:
        handle = self.inner.submit(item_id, video, chunk)
        self.sent += 1
        if self.sent == self.n:
            self.stop.set()
        return handle
