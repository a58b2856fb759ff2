"""The head-crash row of the peer (issue 25): kill -9 of the head under a Ray Data job that
has Ray's job-level checkpointing on (`CheckpointConfig`, which lets a job submitted again
skip the rows already written), beside framefleet's figures from bench/recovery.py.

    framefleet bench recovery_ray_data [--rounds 3] [--videos 6] [--out FILE]

The same one-machine cluster as bench/recovery.py (a `ray start` head without CPUs and a
worker node of 2 CPUs and a logical GPU, token authentication on), the same videos (240
frames each) and the tiny DETR paced to 0.3 s a batch of 8. The job
(bench/peers/ray_data_job.py) is a driver process of its own: a row per video, the model
in two actors, a parquet row of detections per video. Each round:

1. the job submitted; once two videos are done and a row is in the output (something for
   the checkpoint to skip), kill -9 of every head process;
2. the driver ends (its GCS is gone; it is killed if it hangs on for 60 s), the worker
   node restarts, the head is started again (as KubeRay restarts the pods);
3. the job submitted again, at once (the best case: an operator or a retry loop that is
   already watching): `resume_s` from the head being up to the next video started;
4. when it ends: videos done again that were done before the crash, videos started
   again that were in progress (each a whole video: Ray Data's unit is the row), rows
   in the output twice, videos missing.

framefleet needs no step 3: its coordinator resumes by itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path; drop it (see bench/queue.py).
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from typing import Any

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support, bench

from bench import emit
from bench.queue import machine
from tests.support.fleet import wait
from tests.support.models import write_tiny_detr
from tests.support.raycluster import RECONNECT_S, LocalCluster
from tests.support.videos import write_video

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "bench" / "peers" / "ray_data_job.py"


def _work(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def _rows(out: Path) -> list[str]:
    paths: list[str] = []
    for file in sorted(out.rglob("*.parquet")):
        with contextlib.suppress(Exception):  # a file cut short by the crash: counted apart
            paths += [str(p) for p in pq.read_table(file).column("path").to_pylist()]
    return paths


def one_round(cluster: LocalCluster, tmp: Path, videos: int, model: Path) -> dict[str, Any]:
    folder = tmp / "videos"
    folder.mkdir(parents=True)
    paths = [str(write_video(folder / f"v{i}.mp4", frames=240)) for i in range(videos)]
    work_log, out = tmp / "work.jsonl", tmp / "out"
    spec = {
        "address": cluster.address,
        "paths": paths,
        "model": str(model),
        "plugin": "tests.support.plugin_model:load_paced_detection",
        "out": str(out),
        "checkpoint": str(tmp / "checkpoint"),
        "work_log": str(work_log),
        "actors": 2,
    }
    env = {**os.environ, **cluster.auth, "PYTHONPATH": str(ROOT)}
    env["RAY_gcs_rpc_server_reconnect_timeout_s"] = str(RECONNECT_S)

    def submit(name: str) -> subprocess.Popen[bytes]:
        with (tmp / f"{name}.log").open("wb") as log:
            return subprocess.Popen(
                [sys.executable, str(JOB), json.dumps(spec)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    first = submit("driver1")

    def ended() -> int:
        return sum(1 for w in _work(work_log) if w["what"] == "end")

    wait(
        lambda: (ended() >= 2 and bool(_rows(out))) or first.poll() is not None,
        600,
        "two videos done and a row written",
    )
    if first.poll() is not None:
        raise RuntimeError(f"the job ended before the crash: {(tmp / 'driver1.log').read_text()}")
    time.sleep(0.5)  # their rows written (the write follows each block)
    starts = cluster.workers[0].starts
    before = _work(work_log)
    crashed_at = time.time()
    cluster.head.kill()
    try:
        first.wait(60)
    except subprocess.TimeoutExpired:
        first.kill()
        first.wait(10)
    written = _rows(out)  # what the checkpoint has to skip
    wait(lambda: cluster.workers[0].starts > starts, 120, "the worker node to give up")
    cluster.head.start()
    cluster.head.wait_started()
    cluster.wait_nodes()
    up_at = time.time()
    second = submit("driver2")
    wait(
        lambda: any(w["what"] == "start" and w["t"] > up_at for w in _work(work_log)),
        600,
        "a video started again",
    )
    resume_s = min(w["t"] for w in _work(work_log) if w["t"] > up_at) - up_at
    rc = second.wait(900)
    after = [w for w in _work(work_log) if w["t"] > crashed_at]
    done_before = {w["path"] for w in before if w["what"] == "end"}
    started_before = {w["path"] for w in before if w["what"] == "start"} - done_before
    started_after = {w["path"] for w in after if w["what"] == "start"}
    rows = _rows(out)
    counts = Counter(rows)
    return {
        "second_job_rc": rc,
        "resume_s": round(resume_s, 2),
        "finished_s": round(time.time() - up_at, 2),
        "videos": videos,
        "done_before_crash": len(done_before),
        "in_progress_at_crash": len(started_before),
        "done_again": len(done_before & started_after),
        "in_progress_started_again": len(started_before & started_after),
        "frames_redone": 240 * len((done_before | started_before) & started_after),
        "rows_written_before_crash": len(written),
        "rows": len(rows),
        "rows_twice": sum(1 for n in counts.values() if n > 1),
        "missing": sorted(set(paths) - set(counts)),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ff-rdresume-", dir="/tmp") as tmp_name:
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
    import ray

    return {
        "bench": "recovery_ray_data",
        "ray": ray.__version__,
        "machine": machine(),
        "nodes": "head (0 CPU) + 1 worker (2 CPU, 1 GPU)",
        "reconnect_timeout_s": RECONNECT_S,
        "rounds": rounds,
        "resume_s_median": statistics.median(r["resume_s"] for r in rounds),
        "frames_redone_median": statistics.median(r["frames_redone"] for r in rounds),
        "rows_twice_total": sum(r["rows_twice"] for r in rounds),
        "missing_total": sum(len(r["missing"]) for r in rounds),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/recovery_ray_data.py", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--videos", type=int, default=6)
    parser.add_argument("--out", help="also append the JSON line to this file")
    args = parser.parse_args(argv)
    emit(run(args), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
