"""Recovery after a head-node crash: how soon the coordinator notices, how soon processing
resumes once the head is back. Targets: noticed within 10 s, resumed within 30 s.

On a one-machine Ray cluster (tests/support/raycluster.py: `ray start` head without CPUs, a
worker node with 2 CPUs and a logical GPU, token authentication on, the worker raylets'
reconnect timeout at 5 s) with a `framefleet coordinator` subprocess and the tiny DETR
paced to 0.3 s per batch, each round:

1. enqueues fresh videos and waits until one is half-way;
2. kill -9 of every head process; `detect_s`: until the health report says the GCS is lost;
3. waits for the worker node to give up on the dead head and restart (as KubeRay restarts a
   pod), then starts the head again; `resume_s`: from the head being up to the next chunk
   checkpointed;
4. waits for every video to be done, and checks that none was acknowledged twice.

Prints one JSON line (medians and each round). Ray Data, the peer, has no figure here: a
head crash ends its job, and a new job starts the videos over.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path; drop it (see bench/queue.py).
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

import argparse
import json
import os
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from framefleet.queue import EmbeddedServer, Queue, Supervision, connect  # noqa: E402
from framefleet.settings import (  # noqa: E402
    CoordinatorSettings,
    ModelSettings,
    PipelineSettings,
    QueueSettings,
    RedisSettings,
    Settings,
)
from tests.support.models import write_tiny_detr  # noqa: E402
from tests.support.raycluster import RECONNECT_S, LocalCluster  # noqa: E402
from tests.support.videos import write_video  # noqa: E402


def wait(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


def one_round(cluster: LocalCluster, tmp: Path, n: int, model: Path) -> dict[str, Any]:
    videos = tmp / "videos"
    videos.mkdir(parents=True)
    paths = [write_video(videos / f"v{i}.mp4", frames=240) for i in range(n)]
    server = EmbeddedServer(tmp / "redis").start()
    settings = Settings(
        redis=RedisSettings(url=server.url),
        queue=QueueSettings(name="recovery"),
        model=ModelSettings(
            model=str(model),
            plugin="tests.support.plugin_model:load_paced_detection",
            score_threshold=0.0,
        ),
        pipeline=PipelineSettings(
            out=str(tmp / "out"),
            chunk_frames=8,
            max_inflight_chunks=2,
            decode_actors=1,
            inference_actors=2,
            gpus_per_inference=0.25,
            cpus_per_decoder=0.5,
            cpus_per_inference=0.5,
        ),
        coordinator=CoordinatorSettings(ray_address=cluster.address, stale_s=4.0),
    )
    queue = Queue(connect(server.url), settings.queue)
    supervision = Supervision(queue)
    ids = queue.enqueue([str(p) for p in paths])
    env = {**os.environ, **settings.to_env(), **cluster.auth, "PYTHONPATH": str(ROOT)}
    log = (tmp / "coordinator.log").open("wb")
    coordinator = subprocess.Popen(
        [sys.executable, "-m", "framefleet.cli", "coordinator"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def chunks() -> int:
        return sum(item.chunks_done for item in map(queue.get, ids) if item is not None)

    def mid_video() -> bool:
        return any(
            item is not None and item.state == "leased" and item.chunks_done
            for item in map(queue.get, ids)
        )

    try:
        wait(mid_video, 300, "a video half-way")
        starts, killed = cluster.workers[0].starts, time.monotonic()
        cluster.head.kill()
        wait(lambda: (supervision.health() or {}).get("gcs") is False, 60, "the lost GCS")
        detect_s = time.monotonic() - killed
        wait(lambda: cluster.workers[0].starts > starts, 120, "the worker node to give up")
        cluster.head.start()
        cluster.head.wait_started()
        before = chunks()
        resume_s = wait(lambda: chunks() > before, 300, "processing again")
        wait(lambda: queue.stats().counts["done"] == n, 600, "every video done")
        stats = queue.stats()
        coordinator.send_signal(signal.SIGTERM)
        coordinator.wait(60)
    finally:
        if coordinator.poll() is None:
            coordinator.kill()
        log.close()
        queue.client.close()
        server.stop()
    return {
        "detect_s": round(detect_s, 2),
        "resume_s": round(resume_s, 2),
        "done": stats.counts["done"],
        "dead": stats.counts["dead"],
        "acked_once": stats.counters.get("acked_total", 0) == n,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ff-recovery-", dir="/tmp") as tmp_name:
        tmp = Path(tmp_name)
        model = write_tiny_detr(tmp / "detr")
        cluster = LocalCluster(workers=1, cpus=2, gpus=1).start()
        cluster.supervise()
        rounds = []
        try:
            for i in range(args.rounds):
                cluster.wait_nodes()
                rounds.append(one_round(cluster, tmp / f"round{i}", args.videos, model))
                print(json.dumps(rounds[-1]), file=sys.stderr, flush=True)
        finally:
            cluster.stop()
    return {
        "bench": "recovery",
        "machine": {"cores": os.cpu_count(), "nodes": "head (0 CPU) + 1 worker (2 CPU, 1 GPU)"},
        "reconnect_timeout_s": RECONNECT_S,
        "rounds": rounds,
        "detect_s_median": statistics.median(r["detect_s"] for r in rounds),
        "resume_s_median": statistics.median(r["resume_s"] for r in rounds),
        "targets": {"detect_s": 10, "resume_s": 30},
        "all_done_acked_once": all(r["acked_once"] and r["dead"] == 0 for r in rounds),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/recovery.py", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--videos", type=int, default=3)
    parser.add_argument("--out", help="also append the JSON line to this file")
    args = parser.parse_args(argv)
    line = json.dumps(run(args), sort_keys=True)
    print(line, flush=True)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
