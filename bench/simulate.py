"""Simulated fleet: the queue's and the coordinator's own costs at 1,000 to 20,000 workers,
against one real Redis (the embedded Valkey, AOF everysec), without Ray.

Each simulated worker is a decode actor as workers/actors.py and workers/pipeline.py run it,
through the queue's public API only, at the code's own rates (the settings' defaults):
- a heartbeat every stale_s / 4 (2.5 s) with the ids it holds and what it says of itself
  (node, pid, host), then a read of the leader lease (actors.Heartbeat._beat);
- each lease renewed every lease_s / 3 (20 s) (pipeline.LeaseKeeper);
- a video every --video-s seconds in --chunks chunks: one checkpoint a chunk (its work and
  the source's pin; the first says the chunks expected), the last one again with the total,
  the ack with the stage timings, then the inbox ingested and the next claim (Queue.claim
  ingests first when poll_s has passed, which it has between two videos) (VideoJob).
The coordinator, every tick_s (2 s), makes the Redis calls of the supervisor (the leader
lease, the health report read, the sweep with stale_s and gap_s) and of the driver and its
pools (the leader read, in_grace, workers(), stats(), workers() again and the health report
written with every worker's age and pid), each timed: their sum is the tick's Redis work.

For each fleet size: the backlog is enqueued; the generator processes (--processes) start
their share of the workers (each beats once and claims its leases, at a random point of its
video); each call's Redis CPU is measured alone, back to back, on the quiet server (the
calibration); then the workers run. The coordinator starts ticking once every worker has
beaten; after --warmup a --duration-s window, with INFO sampled at both ends (Redis CPU as
a fraction of one core, commands/s by command, memory, AOF growth), and each process's own
CPU. Then, the workers still running, one sweep is timed with 0, 100 and 1,000 leases
expired among theirs (claimed through the public `clock` argument, a lease time in the
past), --repeats times each (medians).

Where the load generator could not make the real rates (on 2 cores it shares them with
Redis: a call costs it about as much CPU as it costs the server), every worker period runs
--slowdown times slower, the lease and stale times with them (chosen from the calibrated
client cost by default): the fleet, its leases and the ticks are real size, the workers'
calls fewer. The Redis CPU at the real rates is then the calibrated cost of each call (back
to back: a server kept busy, as the real rates would keep it) times its real rate, plus
the ticks'. Beside it: the measured figure scaled by calls wanted / calls made, and the load
factor (measured over what the calibration predicts for the calls made): above 1 where
spaced calls wake an idle server, which costs much on a VM. Should the generator fall short
even of the slowed plan, heartbeats and renewals go first (no worker must look dead to the
sweep) and the work falls short.

Prints a table, then one JSON line (also appended to --out). Run: `framefleet bench simulate`
or `python bench/simulate.py [--workers 1000,5000,20000] [--duration-s 30] [--quick]
[--out FILE]`.
"""

# The parts are in bench/sim/ (its __init__ lists them); every rate of a simulated worker is
# in bench/sim/rates.py.

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path; drop it (see bench/queue.py).
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    del sys.path[0]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench

import argparse
import tempfile
import time
from typing import Any

from redis import Redis

from bench import emit
from bench.queue import machine
from bench.sim.fleet import run_size
from bench.sim.rates import Plan
from bench.sim.report import TARGETS, table, verdicts
from framefleet.queue import EmbeddedServer, connect
from framefleet.settings import Settings


def _ints(text: str) -> list[int]:
    return [int(x.replace("_", "")) for x in text.split(",") if x.strip()]


def run(args: argparse.Namespace) -> dict[str, Any]:
    workers = _ints(args.workers or ("300" if args.quick else "1000,5000,20000"))
    expired = _ints(args.expired or ("0,10,100" if args.quick else "0,100,1000"))
    duration = args.duration_s or (5.0 if args.quick else 30.0)
    warmup = args.warmup_s or (2.5 if args.quick else 3.0)  # a tick at least
    calibration = 300 if args.quick else 2000
    repeats = args.repeats or (3 if args.quick else 5)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ff-simulate-") as tmp:
        data_dir = Path(args.data_dir) if args.data_dir else Path(tmp)
        server = EmbeddedServer(data_dir, appendfsync="everysec").start()
        try:
            client = connect(server.url)
            assert isinstance(client, Redis)  # the embedded server's URL
            version = client.info("server")
            name = version.get("valkey_version", version.get("redis_version"))
            result: dict[str, Any] = {
                "benchmark": "simulate",
                "server": f"valkey {name} (embedded, AOF everysec)",
                "machine": machine(),
                "plan": {
                    "video_s": args.video_s,
                    "chunks": args.chunks,
                    "checkpoint_s": args.checkpoint_s,
                    "leases_per_worker": args.leases_per_worker,
                    "processes": args.processes,
                    "duration_s": duration,
                    "warmup_s": warmup,
                    "expired": [str(e) for e in expired],
                    "repeats": repeats,
                },
                "sizes": [],
            }
            for n in workers:
                plan = Plan(
                    n,
                    args.leases_per_worker,
                    args.video_s,
                    args.chunks,
                    min(args.processes, n),
                    duration,
                    warmup,
                    checkpoint_s=args.checkpoint_s,
                )
                print(f"simulating {n:,} workers ...", file=sys.stderr, flush=True)
                size = run_size(
                    server.url, client, plan, expired, repeats, calibration, args.slowdown
                )
                result["sizes"].append(size)
            client.close()
        finally:
            server.stop()
    tick_s = Plan(1, 1, 1, 1, 1, 1, 1).settings.coordinator.tick_s
    result["targets"] = {
        "redis_cpu_core": f"< {TARGETS['redis_cpu_core']} at the largest fleet",
        "sweep_ms": f"< {TARGETS['sweep_ms']} with few expired leases, O(expired)",
        "tick_ms": f"< {tick_s * 1000:g} (tick_s)",
    }
    result["met"] = verdicts(result["sizes"], tick_s)
    result["run_s"] = round(time.monotonic() - started, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="bench/simulate.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--workers", help="fleet sizes, comma-separated (default 1000,5000,20000)")
    p.add_argument("--duration-s", type=float, help="the steady-state window (default 30)")
    p.add_argument("--warmup-s", type=float, help="from every worker's first beat (default 3)")
    p.add_argument("--video-s", type=float, default=90.0, help="seconds a worker takes a video")
    p.add_argument("--chunks", type=int, default=56, help="chunks a video (60 s at 30 fps)")
    p.add_argument("--leases-per-worker", type=int, default=1)
    p.add_argument(
        "--checkpoint-s",
        type=float,
        default=Settings().pipeline.checkpoint_s,
        help="FRAMEFLEET_CHECKPOINT_S: checkpoint a video's settled chunks together at most"
        " this often (default: the setting's, 0: a call a chunk)",
    )
    p.add_argument("--processes", type=int, default=4, help="load generator processes")
    p.add_argument(
        "--slowdown",
        type=float,
        help="run every worker period this many times slower (default: as much as the"
        " generator needs to keep up, from the calibration)",
    )
    p.add_argument("--expired", help="expired leases per timed sweep (default 0,100,1000)")
    p.add_argument("--repeats", type=int, help="timed sweeps per expired count (default 5)")
    p.add_argument("--data-dir", help="the server's data dir (default: a temporary one)")
    p.add_argument("--quick", action="store_true", help="300 workers, a 5 s window (smoke)")
    p.add_argument("--out", help="also append the JSON line to this file")
    args = p.parse_args(argv)
    result = run(args)
    print(table(result), flush=True)
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
