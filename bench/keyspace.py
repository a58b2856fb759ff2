"""Valkey's own cost of a key access as its keyspace grows, on this machine: the control for
bench/million.py's claim+ack figures (issue 25).

    framefleet bench keyspace [--keys 1000000] [--working 40000] [--reads 200000]

One embedded Valkey at a time (AOF everysec, as bench/million.py), filled with small hashes
shaped like queue items; then HGET of one field on keys drawn at random from a working set
of --working keys (the newest), pipelined 1,000 deep. The server's own microseconds per call
(INFO commandstats) are compared between a server that holds only the working set and one
that holds --keys keys: the same commands on the same number of distinct keys, the only
difference being everything else in the server (its main hash table and memory: caches and
the TLB). Medians of --repeats measures each. Prints one JSON line (appended to --out).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path; drop it (see bench/queue.py).
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

import argparse
import random
import statistics
import tempfile
import time
from typing import Any, cast

from redis import Redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import emit
from bench.queue import machine
from framefleet.queue import EmbeddedServer, connect


def fill(client: Redis, n: int) -> None:
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        uri = f"s3://customer-videos/uploads/2026/12/07/{i:08d}.mp4"
        pipe.hset(f"ff:item:{i:08d}", mapping={"state": "queued", "uri": uri, "pri": "5"})
        if i % 10_000 == 9_999:
            pipe.execute()
    pipe.execute()


def measure(client: Redis, total: int, working: int, reads: int, seed: int) -> float:
    """Server µs per HGET over the newest `working` keys of `total`."""
    rng = random.Random(seed)
    client.config_resetstat()
    pipe = client.pipeline(transaction=False)
    for k in range(reads):
        pipe.hget(f"ff:item:{total - 1 - rng.randrange(working):08d}", "state")
        if k % 1000 == 999:
            pipe.execute()
    pipe.execute()
    return float(client.info("commandstats")["cmdstat_hget"]["usec_per_call"])


def one_server(total: int, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ff-keyspace-") as tmp:
        server = EmbeddedServer(Path(tmp) / "redis", appendfsync="everysec").start()
        try:
            client = cast(Redis, connect(server.url))
            started = time.perf_counter()
            fill(client, total)
            fill_s = time.perf_counter() - started
            us = [measure(client, total, args.working, args.reads, r) for r in range(args.repeats)]
            used = int(client.info("memory")["used_memory"])
        finally:
            server.stop()
    return {
        "keys": total,
        "fill_s": round(fill_s, 1),
        "used_memory_mb": round(used / 2**20),
        "hget_us": round(statistics.median(us), 3),
        "each": [round(u, 3) for u in us],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/keyspace.py", description=__doc__)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--working", type=int, default=40_000)
    parser.add_argument("--reads", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", help="also append the JSON line to this file")
    args = parser.parse_args(argv)
    small = one_server(args.working, args)
    big = one_server(args.keys, args)
    emit(
        {
            "benchmark": "keyspace",
            "machine": machine(),
            "working": args.working,
            "small": small,
            "big": big,
            "ratio": round(big["hget_us"] / small["hget_us"], 2),
        },
        args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
