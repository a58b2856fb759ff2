"""Queue benchmark: framefleet's Redis queue against RQ, on one server, in one run.

Prints one JSON line: batch enqueue items/s (one producer); claim+ack items/s with 10,000
live leases, by 4 worker processes (the queue's capacity) and by one (one client's round
trips); idle pickup latency p50/p99; Redis memory per queued item; the same enqueue and
no-op processing workload through RQ (same worker count), with the ratio for the whole
workload (the target) and for each of its two stages; the machine; each target met or not.
Every rate is the median of --repeats runs. Run: `framefleet bench queue` or
`python bench/queue.py [--quick] [--out FILE]`.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path, and this file's name would
# shadow the standard library's `queue` (which redis-py imports). Drop that entry first.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    del sys.path[0]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support, bench

import argparse
import multiprocessing
import os
import platform
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as EventType
from typing import Any

from redis import Redis

from bench import emit
from framefleet.queue import EmbeddedServer, Queue, connect
from framefleet.settings import QueueSettings

TARGETS = {
    "enqueue_per_s": (">=", 50_000),
    "claim_ack_per_s": (">=", 20_000),
    "pickup_p99_ms": ("<", 10.0),
    "bytes_per_queued_item": ("<=", 1024),
    "workload_ratio_vs_rq": (">=", 10.0),
}


def _uris(n: int, tag: str) -> list[str]:
    # Realistic references: ~80-byte S3 keys.
    return [f"s3://customer-videos/uploads/2026/11/22/{tag}-{uuid.uuid4()}.mp4" for _ in range(n)]


def quiesce(client: Redis) -> None:
    """Empty the database and let the server compact its append-only file now, so that no
    rewrite left over from an earlier stage runs (and competes for the CPU) during the next."""
    client.flushdb()
    client.bgrewriteaof()
    while True:
        info = client.info("persistence")
        if not info.get("aof_rewrite_in_progress") and not info.get("aof_rewrite_scheduled"):
            break
        time.sleep(0.05)
    time.sleep(0.2)


def _median_rate(runs: int, fn: Callable[[], tuple[int, float]]) -> float:
    rates = []
    for _ in range(runs):
        n, seconds = fn()
        rates.append(n / seconds)
    return statistics.median(rates)


def bench_enqueue(client: Redis, n: int, runs: int) -> float:
    def once() -> tuple[int, float]:
        quiesce(client)
        q = Queue(client, QueueSettings(name="bench"))
        uris = _uris(n, "enq")
        t = time.perf_counter()
        added = len(q.enqueue(uris))
        return added, time.perf_counter() - t

    return _median_rate(runs, once)


def _run_workers(target: Callable[..., None], args: tuple[Any, ...], workers: int) -> float:
    """Fork `workers` processes running target(*args, start), release them together and
    return the seconds until the last one has finished (process start-up not counted)."""
    ctx = multiprocessing.get_context("fork")
    start = ctx.Event()
    procs = [ctx.Process(target=target, args=(*args, start)) for _ in range(workers)]
    for proc in procs:
        proc.start()
    time.sleep(0.5)
    t = time.perf_counter()
    start.set()
    for proc in procs:
        proc.join()
        if proc.exitcode != 0:
            raise RuntimeError(f"a benchmark worker exited with {proc.exitcode}")
    return time.perf_counter() - t


def _ff_worker(url: str, batch: int, start: EventType) -> None:
    """A framefleet worker doing no-op work: claim a batch, ack it, until the queue is empty."""
    q = Queue(connect(url), QueueSettings(name="bench", lease_s=3600))
    start.wait()
    while leases := q.claim(batch, f"worker-{os.getpid()}"):
        if not all(q.ack_many([(lease, "") for lease in leases])):
            raise RuntimeError("an ack was refused")


def bench_claim_ack(client: Redis, url: str, n: int, live: int, runs: int, workers: int) -> float:
    """claim(100) + ack by `workers` processes, with `live` other leases held throughout."""

    def once() -> tuple[int, float]:
        quiesce(client)
        q = Queue(client, QueueSettings(name="bench", lease_s=3600))
        q.enqueue(_uris(live, "held"))
        held = 0
        while held < live:
            held += len(q.claim(min(1000, live - held), "holder"))
        q.enqueue(_uris(n, "work"))
        seconds = _run_workers(_ff_worker, (url, 100), workers)
        counts = q.stats().counts
        if (counts["done"], counts["leased"], counts["queued"]) != (n, live, 0):
            raise RuntimeError(f"unexpected end state {counts}")
        return n, seconds

    return _median_rate(runs, once)


def _pickup_worker(url: str, samples: int, conn: Connection) -> None:
    """Child process: block in claim, report the moment each item arrives."""
    q = Queue(connect(url), QueueSettings(name="bench", poll_s=5.0))
    for _ in range(samples):
        conn.send("ready")
        leases = q.claim(1, "idle-worker", block=10.0)
        conn.send(time.perf_counter() if leases else -1.0)


def bench_pickup(client: Redis, url: str, samples: int) -> tuple[float, float]:
    """Latency from the start of enqueue() to a claimer in another process, idle and
    blocked in claim(), holding the item (perf_counter is system-wide on Linux)."""
    quiesce(client)
    q = Queue(client, QueueSettings(name="bench", poll_s=5.0))
    parent, child = multiprocessing.get_context("fork").Pipe()
    worker = multiprocessing.get_context("fork").Process(
        target=_pickup_worker, args=(url, samples, child), daemon=True
    )
    worker.start()
    latencies = []
    for i in range(samples):
        assert parent.recv() == "ready"
        time.sleep(0.005)  # let the worker block in BLPOP
        t0 = time.perf_counter()
        q.enqueue([f"/pickup/{i}.mp4"])
        t1 = parent.recv()
        if t1 < 0:
            raise RuntimeError("the idle worker timed out waiting for an item")
        latencies.append((t1 - t0) * 1000)
    worker.join(10)
    qs = statistics.quantiles(latencies, n=100)
    return statistics.median(latencies), qs[98]


def bench_memory(client: Redis, n: int) -> float:
    quiesce(client)
    before = int(client.info("memory")["used_memory"])
    Queue(client, QueueSettings(name="bench")).enqueue(_uris(n, "mem"))
    after = int(client.info("memory")["used_memory"])
    return (after - before) / n


def _rq_noop(uri: str) -> None:
    return None


def _rq_worker(url: str, start: EventType) -> None:
    from rq import SimpleWorker

    worker = SimpleWorker(["bench"], connection=Redis.from_url(url))
    start.wait()
    worker.work(burst=True, logging_level="ERROR")


def bench_rq(url: str, n: int, runs: int, workers: int) -> tuple[float, float]:
    """The peer: RQ's batch enqueue (enqueue_many, pipelined) and `workers` processes each
    running RQ's in-process SimpleWorker in burst mode (no fork per job, its fastest)."""
    from rq import Queue as RQQueue

    conn = Redis.from_url(url)

    def enqueue_once() -> tuple[int, float]:
        quiesce(conn)
        rq = RQQueue("bench", connection=conn)
        datas = [RQQueue.prepare_data(_rq_noop, args=(u,)) for u in _uris(n, "rq")]
        t = time.perf_counter()
        jobs = rq.enqueue_many(datas)
        return len(jobs), time.perf_counter() - t

    def process_once() -> tuple[int, float]:
        enqueue_once()
        seconds = _run_workers(_rq_worker, (url,), workers)
        done = RQQueue("bench", connection=conn).finished_job_registry.count
        if done != n:
            raise RuntimeError(f"RQ finished {done} of {n} jobs")
        return done, seconds

    return _median_rate(runs, enqueue_once), _median_rate(runs, process_once)


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "os": platform.platform(),
    }


def verdicts(result: dict[str, Any]) -> dict[str, bool]:
    ops: dict[str, Callable[[float, float], bool]] = {
        ">=": lambda a, b: a >= b,
        "<": lambda a, b: a < b,
        "<=": lambda a, b: a <= b,
    }
    return {k: ops[op](result[k], bound) for k, (op, bound) in TARGETS.items()}


def run(quick: bool, repeats: int) -> dict[str, Any]:
    sizes = {
        "enqueue": 5_000 if quick else 100_000,
        "claim_ack": 2_000 if quick else 50_000,
        "live_leases": 1_000 if quick else 10_000,
        "pickup_samples": 50 if quick else 500,
        "memory_items": 5_000 if quick else 100_000,
        "rq_items": 500 if quick else 5_000,
        "workers": 2 if quick else 4,  # worker processes for claim+ack and no-op processing
    }
    runs = 1 if quick else repeats
    with tempfile.TemporaryDirectory(prefix="ff-bench-") as tmp:
        server = EmbeddedServer(Path(tmp), appendfsync="everysec").start()
        try:
            client = connect(server.url)
            version = client.info("server")
            result: dict[str, Any] = {
                "benchmark": "queue",
                "server": f"valkey {version.get('valkey_version', version.get('redis_version'))} "
                "(embedded, AOF everysec)",
                "machine": machine(),
                "sizes": sizes,
                "runs": runs,
            }
            result["enqueue_per_s"] = round(bench_enqueue(client, sizes["enqueue"], runs))
            w = sizes["workers"]
            result["claim_ack_per_s"] = round(
                bench_claim_ack(
                    client, server.url, sizes["claim_ack"], sizes["live_leases"], runs, w
                )
            )
            result["claim_ack_one_worker_per_s"] = round(
                bench_claim_ack(
                    client, server.url, sizes["claim_ack"], sizes["live_leases"], runs, 1
                )
            )
            p50, p99 = bench_pickup(client, server.url, sizes["pickup_samples"])
            result["pickup_p50_ms"], result["pickup_p99_ms"] = round(p50, 3), round(p99, 3)
            result["bytes_per_queued_item"] = round(bench_memory(client, sizes["memory_items"]))
            ff_process = bench_claim_ack(client, server.url, sizes["rq_items"] * 4, 0, runs, w)
            rq_enqueue, rq_process = bench_rq(server.url, sizes["rq_items"], runs, w)
            result["ff_process_per_s"] = round(ff_process)
            result["rq_enqueue_per_s"] = round(rq_enqueue)
            result["rq_process_per_s"] = round(rq_process)
            result["enqueue_ratio_vs_rq"] = round(result["enqueue_per_s"] / rq_enqueue, 1)
            result["process_ratio_vs_rq"] = round(ff_process / rq_process, 1)
            # The whole workload, enqueue then no-op processing, items/s for each system.
            ff_workload = 1 / (1 / result["enqueue_per_s"] + 1 / ff_process)
            rq_workload = 1 / (1 / rq_enqueue + 1 / rq_process)
            result["workload_ratio_vs_rq"] = round(ff_workload / rq_workload, 1)
            client.close()
        finally:
            server.stop()
    result["targets"] = {k: f"{op} {bound}" for k, (op, bound) in TARGETS.items()}
    result["met"] = verdicts(result)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/queue.py", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small sizes, one run (a smoke test)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", help="also append the JSON line to this file")
    args = p.parse_args(argv)
    result = run(args.quick, args.repeats)
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
