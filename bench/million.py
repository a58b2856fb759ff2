"""A million items queued: the queue's costs stay flat (O(log n)) from 1,000 to 1,000,000
items, in one run on one server (the embedded Valkey, AOF everysec).

For each backlog (1,000, then 1,000,000 more: `--items`):
- enqueue: the backlog's items/s (one producer, 10,000 a call to `Queue.enqueue`), and the
  Redis memory it holds (bytes an item; target: a million in <= 1 GB);
- claim+ack: --work items of higher priority enqueued on top, claimed 100 at a time and
  acked by --workers processes (items/s); the backlog is not touched;
- one claim(1) + ack, alone, --samples times: p50 / p99 / max (ms);
- `Queue.stats()`, a `/metrics` scrape and two dashboard pages (the overview and the queued
  items) through `framefleet api` in its own process: p50 / p99 (ms). Targets: stats and
  /metrics under 100 ms, a page under 300 ms.
Then retention: the million made done (claimed and acked), their retention run out, and the
coordinator's upkeep (`Queue.sweep`, as each tick runs it) called until they are gone, while
another process claims and acks one item at a time from a second queue on the same server:
the trim's seconds and passes, and the claims' p50 / p99 / max during it (the server runs
one script at a time: a long sweep pass would show here).

Prints one JSON line (appended to --out). Run: `framefleet bench million [--quick]`.
"""

from __future__ import annotations

import sys
from pathlib import Path

if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    del sys.path[0]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support, bench

import argparse
import multiprocessing
import os
import tempfile
import time
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as EventType
from typing import Any, cast

from redis import Redis

from bench import emit, server_allocator
from bench.api import QUEUE, _wait_rewrite, api_server, quantiles
from bench.dashboard import login
from bench.queue import _run_workers, machine
from framefleet.queue import EmbeddedServer, NewItem, Queue, connect
from framefleet.queue.queue import SWEEP_PASS
from framefleet.settings import QueueSettings

TARGETS_MS = {"stats": 100.0, "metrics": 100.0, "page": 300.0}
SIDE = "bench-side"  # a second queue on the same server, without the backlog
MEMORY_TARGET = 1 << 30  # a million items in at most this


def _settings(name: str = QUEUE) -> QueueSettings:
    return QueueSettings(name=name, lease_s=3600, poll_s=5.0)


def _uri(tag: str, n: int) -> str:
    return f"s3://customer-videos/uploads/2026/12/07/{tag}-{n:08d}.mp4"  # ~60 bytes


def enqueue_backlog(q: Queue, n: int, tag: str) -> float:
    started = time.perf_counter()
    for i in range(0, n, 10_000):
        q.enqueue([_uri(tag, k) for k in range(i, min(n, i + 10_000))])
    return n / (time.perf_counter() - started)


def _worker(url: str, per_worker: int, name: str, start: EventType) -> None:
    q = Queue(connect(url), _settings(name))
    start.wait()
    done = 0
    while done < per_worker:
        leases = q.claim(min(100, per_worker - done), f"bench-{done}")
        if not leases or not all(q.ack_many([(lease, "") for lease in leases])):
            raise RuntimeError("a claim came back empty or an ack was refused")
        if any(not lease.id.startswith("w") for lease in leases):
            raise RuntimeError("a backlog item was claimed before the work")
        done += len(leases)


def claim_ack_rate(q: Queue, url: str, work: int, workers: int, tag: str) -> float:
    """Priority-9 items on top of the backlog, claimed and acked by `workers` processes."""
    per = work // workers
    items = [NewItem(_uri(tag, k), id=f"w{tag}-{k}", priority=9) for k in range(per * workers)]
    q.enqueue(items)
    seconds = _run_workers(_worker, (url, per, q.settings.name), workers)
    return per * workers / seconds


def claim_latency(q: Queue, samples: int, tag: str) -> dict[str, float]:
    items = [NewItem(_uri(tag, k), id=f"w{tag}-{k}", priority=9) for k in range(samples)]
    q.enqueue(items)
    ms = []
    for _ in range(samples):
        started = time.perf_counter()
        (lease,) = q.claim(1, "bench-one")
        q.ack(lease)
        ms.append((time.perf_counter() - started) * 1000)
    return quantiles(ms)


def reads(q: Queue, api: Any, samples: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    timed: dict[str, list[float]] = {"stats": [], "metrics": [], "overview": [], "queued": []}
    with api.client() as client:
        browser = login(api)
        try:
            for _ in range(samples + 1):
                for name, fetch in (
                    ("stats", q.stats),
                    ("metrics", lambda: client.get("/metrics").raise_for_status()),
                    ("overview", lambda: browser.get("/ui/").raise_for_status()),
                    ("queued", lambda: browser.get("/ui/items?state=queued").raise_for_status()),
                ):
                    started = time.perf_counter()
                    fetch()
                    timed[name].append((time.perf_counter() - started) * 1000)
        finally:
            browser.close()
    for name, ms in timed.items():
        out[name] = quantiles(ms[1:])  # the first, a cold one, left out
    return out


def _claimer(url: str, stop: EventType, out: Connection) -> None:
    """Claims and acks one item at a time from its own queue until told to stop."""
    q = Queue(connect(url), _settings("trim-probe"))
    q.enqueue([_uri("probe", k) for k in range(200_000)])
    out.send("ready")
    ms = []
    while not stop.is_set():
        started = time.perf_counter()
        (lease,) = q.claim(1, "probe")
        q.ack(lease)
        ms.append((time.perf_counter() - started) * 1000)
    out.send(ms)


def trim(q: Queue, url: str, n: int) -> dict[str, Any]:
    """The backlog done, then its retention run out; the sweep until it is gone."""
    started = time.perf_counter()
    while q.stats().counts["queued"]:
        leases = q.claim(1000, "bench-drain")
        q.ack_many([(lease, "") for lease in leases])
    drained_s = time.perf_counter() - started
    done = q.stats().counts["done"]
    _wait_rewrite(cast(Redis, q.client))
    expired = Queue(q.client, QueueSettings(name=QUEUE, lease_s=3600, done_ttl_s=0.001))
    ctx = multiprocessing.get_context("fork")
    stop, (parent, child) = ctx.Event(), ctx.Pipe()
    probe = ctx.Process(target=_claimer, args=(url, stop, child), daemon=True)
    probe.start()
    assert parent.recv() == "ready"
    time.sleep(0.5)  # its steady pace first
    passes, started = 0, time.perf_counter()
    while expired.stats().counts["done"]:
        expired.sweep()
        passes += 1
    trim_s = time.perf_counter() - started
    stop.set()
    claims: list[float] = parent.recv()
    probe.join(30)
    return {
        "done_items": done,
        "drain_s": round(drained_s, 1),
        "trim_s": round(trim_s, 1),
        "sweeps": passes,
        "deleted_per_sweep": SWEEP_PASS,
        "claim_ms_during_trim": quantiles(claims),
    }


def _claim_ack(q: Queue, url: str, args: Any, tag: str) -> dict[str, Any]:
    """The claim+ack rate, with the server's own time in the scripts per item and the
    AOF's delayed fsyncs (the main thread waiting on a busy disk) while it ran; then again
    once the kernel has written out its dirty pages (`sync`): the backlog's append-only
    file, hundreds of MB at a million items, is still being written back to the disk when
    the first measure starts; then on another queue of the same server, empty but for its
    work (`_side`): what the backlog's mere presence in the server's keyspace costs, apart
    from the queue's own structures (its sorted set of a million)."""
    client = cast(Redis, q.client)
    out: dict[str, Any] = {}
    side = Queue(q.client, _settings(SIDE))
    for when in ("", "_synced", "_side"):
        if when:
            os.sync()
        dirty_mb = _dirty_mb()
        client.config_resetstat()
        delayed = int(client.info("persistence").get("aof_delayed_fsync", 0))
        on = side if when == "_side" else q
        rate = claim_ack_rate(on, url, args.work, args.workers, tag + "r" + when)
        stats = client.info("commandstats")
        scripts = ("cmdstat_evalsha", "cmdstat_eval")
        script_us = sum(v["usec"] for k, v in stats.items() if k.split("|")[0] in scripts)
        out[f"claim_ack_per_s{when}"] = round(rate)
        out[f"claim_ack_server_us_per_item{when}"] = round(script_us / (args.work * 2), 1)
        out[f"claim_ack_aof_delayed_fsync{when}"] = (
            int(client.info("persistence").get("aof_delayed_fsync", 0)) - delayed
        )
        out[f"dirty_mb_at_start{when}"] = dirty_mb
    return out


def _dirty_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Dirty:"):
            return int(line.split()[1]) // 1024
    return -1


def stage(q: Queue, api: Any, url: str, adding: int, tag: str, args: Any) -> dict[str, Any]:
    """`adding` more items queued, then every measure with what is queued now."""
    client = cast(Redis, q.client)  # one server's
    before = int(client.info("memory")["used_memory"])
    rate = enqueue_backlog(q, adding, tag)
    used = int(client.info("memory")["used_memory"])
    _wait_rewrite(client)  # the append-only file's rewrite the backlog started: not timed
    return {
        "queued": q.stats().counts["queued"],
        "enqueue_per_s": round(rate),
        "used_memory_mb": round(used / 2**20),
        "bytes_per_item": round((used - before) / adding),
        **_claim_ack(q, url, args, tag),
        "claim_one_ms": claim_latency(q, args.samples, tag + "l"),
        "reads_ms": reads(q, api, min(args.samples, 50)),
    }


def run(args: Any) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ff-bench-million-") as tmp:
        server = EmbeddedServer(Path(tmp) / "redis", appendfsync="everysec").start()
        try:
            client: Redis = connect(server.url)  # type: ignore[assignment]
            q = Queue(client, _settings())
            version = client.info("server")
            allocator = server_allocator(server)
            with api_server(server.url, Path(tmp)) as api:
                small = stage(q, api, server.url, 1_000, "a", args)
                big = stage(q, api, server.url, args.items - 1_000, "b", args)
            retention = trim(q, server.url, args.items)
        finally:
            server.stop()
    return {
        "benchmark": "million",
        "server": f"valkey {version.get('valkey_version', version.get('redis_version'))} "
        f"(embedded, AOF everysec, {allocator})",
        "machine": machine(),
        "items": args.items,
        "work": args.work,
        "workers": args.workers,
        "stages": {"1000": small, str(args.items): big, "retention": retention},
        "flat": {
            "claim_ack_ratio": round(big["claim_ack_per_s"] / small["claim_ack_per_s"], 2),
            "claim_ack_ratio_side": round(
                big["claim_ack_per_s_side"] / small["claim_ack_per_s_side"], 2
            ),
            "claim_ack_ratio_synced": round(
                big["claim_ack_per_s_synced"] / small["claim_ack_per_s_synced"], 2
            ),
            "claim_one_p99_ratio": round(
                big["claim_one_ms"]["p99"] / small["claim_one_ms"]["p99"], 2
            ),
        },
        "met": {
            "memory": big["bytes_per_item"] * 1_000_000 <= MEMORY_TARGET,
            "stats": big["reads_ms"]["stats"]["p99"] < TARGETS_MS["stats"],
            "metrics": big["reads_ms"]["metrics"]["p99"] < TARGETS_MS["metrics"],
            "pages": max(big["reads_ms"][p]["p99"] for p in ("overview", "queued"))
            < TARGETS_MS["page"],
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/million.py", description=__doc__)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--work", type=int, default=40_000, help="items claimed and acked a stage")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--samples", type=int, default=500, help="single claims a stage")
    p.add_argument("--quick", action="store_true", help="100,000 items, less of the rest")
    p.add_argument("--out", help="also append the JSON line to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.items, args.work, args.samples = 100_000, 8_000, 100
    emit(run(args), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
