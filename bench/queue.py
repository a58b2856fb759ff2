"""Queue benchmark: framefleet's Redis queue against RQ, on one server, in one run.

Prints one JSON line: batch enqueue items/s (one producer); claim+ack items/s with 10,000
live leases, by 4 worker processes (the queue's capacity) and by one (one client's round
trips); idle pickup latency p50/p99; Redis memory per queued item; the same enqueue and
no-op processing workload through RQ (same worker count), with the ratio for the whole
workload (the target) and for each of its two stages; the machine; each target met or not.
Then what optional durability costs (`durability`): on a primary and one replica of their
own (loopback, AOF everysec), batch enqueue and claim+ack (no live leases) with enqueue and
ack waiting for nothing, for the replica (FRAMEFLEET_REDIS_MIN_REPLICAS=1: WAIT) and for
the primary's and the replica's append-only files fsynced (and FRAMEFLEET_REDIS_WAITAOF:
WAIT then WAITAOF 1 1, the replica on appendfsync always: on everysec it reports its fsyncs
once a second, and each call takes about that long, timed apart), the modes interleaved
within each repeat, as ratios to none; and one ack's latency in each mode.
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

from bench import emit, server_allocator
from framefleet.queue import Durability, EmbeddedServer, Queue, connect
from framefleet.settings import QueueSettings
from tests.support.sentinel import DataNode, SentinelSet

TARGETS = {
    "enqueue_per_s": (">=", 50_000),
    "claim_ack_per_s": (">=", 20_000),
    "pickup_p99_ms": ("<", 10.0),
    "bytes_per_queued_item": ("<=", 1024),
    "workload_ratio_vs_rq": (">=", 10.0),
}
# What enqueue and ack wait for, and the replica's appendfsync meanwhile (the primary's stays
# everysec: WAITAOF has it fsync at once)
DURABILITY = {
    "off": (Durability(), "everysec"),
    "wait": (Durability(replicas=1), "everysec"),  # FRAMEFLEET_REDIS_MIN_REPLICAS=1
    "waitaof": (Durability(replicas=1, aof=True), "always"),  # and FRAMEFLEET_REDIS_WAITAOF
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


def _enqueue_once(client: Redis, n: int, durability: Durability | None = None) -> tuple[int, float]:
    quiesce(client)
    q = Queue(client, QueueSettings(name="bench"), durability=durability)
    uris = _uris(n, "enq")
    t = time.perf_counter()
    added = len(q.enqueue(uris))
    return added, time.perf_counter() - t


def bench_enqueue(client: Redis, n: int, runs: int) -> float:
    return _median_rate(runs, lambda: _enqueue_once(client, n))


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


def _ff_worker(url: str, batch: int, durability: Durability | None, start: EventType) -> None:
    """A framefleet worker doing no-op work: claim a batch, ack it, until the queue is empty."""
    q = Queue(connect(url), QueueSettings(name="bench", lease_s=3600), durability=durability)
    start.wait()
    while leases := q.claim(batch, f"worker-{os.getpid()}"):
        if not all(q.ack_many([(lease, "") for lease in leases])):
            raise RuntimeError("an ack was refused")


def _claim_ack_once(
    client: Redis,
    url: str,
    n: int,
    live: int,
    workers: int,
    durability: Durability | None = None,
) -> tuple[int, float]:
    """claim(100) + ack by `workers` processes, with `live` other leases held throughout."""
    quiesce(client)
    q = Queue(client, QueueSettings(name="bench", lease_s=3600))
    q.enqueue(_uris(live, "held"))
    held = 0
    while held < live:
        held += len(q.claim(min(1000, live - held), "holder"))
    q.enqueue(_uris(n, "work"))
    seconds = _run_workers(_ff_worker, (url, 100, durability), workers)
    counts = q.stats().counts
    if (counts["done"], counts["leased"], counts["queued"]) != (n, live, 0):
        raise RuntimeError(f"unexpected end state {counts}")
    return n, seconds


def bench_claim_ack(client: Redis, url: str, n: int, live: int, runs: int, workers: int) -> float:
    return _median_rate(runs, lambda: _claim_ack_once(client, url, n, live, workers))


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


def _settle(client: Redis, replica: DataNode, appendfsync: str) -> None:
    """Both servers emptied and their append-only files compacted (the replica's grows with
    every stage too, and a rewrite of its own would compete for the CPU), then the replica's
    appendfsync for the next stage."""
    quiesce(client)
    client.wait(1, 5000)  # the replica has the flush
    with replica.admin(timeout=60) as c:
        c.bgrewriteaof()
        while True:
            info = c.info("persistence")
            if not int(info["aof_rewrite_in_progress"]) + int(info["aof_rewrite_scheduled"]):
                break
            time.sleep(0.05)
        c.config_set("appendfsync", appendfsync)


def _fsync(replica: DataNode, appendfsync: str) -> None:
    with replica.admin() as c:
        c.config_set("appendfsync", appendfsync)


def _ack_ms(
    client: Redis, replica: DataNode, modes: dict[str, tuple[Durability, str]], samples: int
) -> dict[str, float]:
    """One ack's latency (median ms) in each mode (as DURABILITY's), as a decode actor acks a
    video: claim one, ack it; each sample takes every mode in turn, so that a busy spell of
    the machine falls on them all alike."""
    _settle(client, replica, "everysec")
    Queue(client, QueueSettings(name="bench")).enqueue(_uris(samples * len(modes), "ack"))
    settings = QueueSettings(name="bench", lease_s=3600)
    queues = {m: Queue(client, settings, durability=d) for m, (d, _) in modes.items()}
    times: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(samples):
        for mode, q in queues.items():
            _fsync(replica, modes[mode][1])
            [lease] = q.claim(1, "acker")
            t = time.perf_counter()
            q.ack(lease, "")
            times[mode].append((time.perf_counter() - t) * 1000)
    return {m: statistics.median(v) for m, v in times.items()}


def _durability_rates(
    client: Redis, url: str, replica: DataNode, sizes: dict[str, int], runs: int
) -> dict[str, dict[str, float]]:
    """Each mode's enqueue and claim+ack rates, medians of `runs` with the modes interleaved
    in each (a machine whose speed drifts moves them alike), and one ack's latency."""
    n, m, w = sizes["durable_enqueue"], sizes["durable_claim_ack"], sizes["workers"]
    rates: dict[str, dict[str, list[float]]] = {k: {"enq": [], "ca": []} for k in DURABILITY}
    for _ in range(runs):
        for mode, (durability, fsync) in DURABILITY.items():
            _settle(client, replica, fsync)
            added, seconds = _enqueue_once(client, n, durability)
            rates[mode]["enq"].append(added / seconds)
            _settle(client, replica, fsync)
            done, seconds = _claim_ack_once(client, url, m, 0, w, durability)
            rates[mode]["ca"].append(done / seconds)
    ack_ms = _ack_ms(client, replica, DURABILITY, sizes["durable_acks"])
    return {
        mode: {
            "enqueue_per_s": statistics.median(rates[mode]["enq"]),
            "claim_ack_per_s": statistics.median(rates[mode]["ca"]),
            "ack_ms": ack_ms[mode],
        }
        for mode in DURABILITY
    }


def bench_durability(sizes: dict[str, int], runs: int) -> dict[str, Any]:
    """The modes of DURABILITY on a primary and one replica of their own, started here (the
    primary on appendfsync everysec); the rates also as ratios to "off"."""
    with (
        tempfile.TemporaryDirectory(prefix="ff-bench-durable-") as tmp,
        SentinelSet(Path(tmp), replicas=1, sentinels=0) as pair,
    ):
        primary, replica = pair.nodes
        with primary.admin() as c:
            c.config_set("appendfsync", "everysec")
        client = connect(primary.url)
        assert isinstance(client, Redis)  # one server's URL
        found = _durability_rates(client, primary.url, replica, sizes, runs)
        # WAITAOF with the replica on everysec: it reports its fsyncs once a second
        slow = {"waitaof": (DURABILITY["waitaof"][0], "everysec")}
        slow_ms = _ack_ms(client, replica, slow, sizes["durable_acks_slow"])["waitaof"]
        version = client.info("server")
        client.close()
    off = found["off"]
    modes = {
        mode: {
            "enqueue_per_s": round(f["enqueue_per_s"]),
            "claim_ack_per_s": round(f["claim_ack_per_s"]),
            "enqueue_vs_off": round(f["enqueue_per_s"] / off["enqueue_per_s"], 3),
            "claim_ack_vs_off": round(f["claim_ack_per_s"] / off["claim_ack_per_s"], 3),
            "ack_ms": round(f["ack_ms"], 3),
        }
        for mode, f in found.items()
    }
    name = version.get("valkey_version", version.get("redis_version"))
    return {
        "server": f"valkey {name}: a primary and one replica, loopback, AOF everysec (the"
        " replica on always for waitaof)",
        "modes": modes,
        "waitaof_replica_everysec_ack_ms": round(slow_ms, 1),
    }


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
        "durable_enqueue": 2_000 if quick else 50_000,  # each durability mode's
        "durable_claim_ack": 1_000 if quick else 20_000,
        "durable_acks": 50 if quick else 500,  # one ack's latency, samples
        "durable_acks_slow": 2 if quick else 5,  # the same with a replica on everysec (~1 s)
    }
    runs = 1 if quick else repeats
    with tempfile.TemporaryDirectory(prefix="ff-bench-") as tmp:
        server = EmbeddedServer(Path(tmp), appendfsync="everysec").start()
        try:
            client = connect(server.url)
            assert isinstance(client, Redis)  # the embedded server's URL
            version = client.info("server")
            result: dict[str, Any] = {
                "benchmark": "queue",
                "server": f"valkey {version.get('valkey_version', version.get('redis_version'))} "
                f"(embedded, AOF everysec, {server_allocator(server)})",
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
    result["durability"] = bench_durability(sizes, runs)
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
