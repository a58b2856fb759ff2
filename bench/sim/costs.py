"""Measuring Redis: the server's counters at both ends of a window (`sample`), each call's
Redis CPU, client CPU and wall time alone, back to back on the quiet server (`calibrate`,
`call_costs`), and the sweep timed with some of the running workers' leases expired
(`sweep_costs`)."""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from redis import Redis

from bench.sim.rates import Plan
from bench.sim.workers import PIN, STAGES_S, WORK, decoder_name
from framefleet.queue import Queue, Supervision, connect


def sample(client: Redis) -> dict[str, Any]:
    """The server's counters now, and the machine's CPU time (/proc/stat, jiffies)."""
    info = client.info("all")
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    jiffies = [int(x) for x in fields]
    return {
        "t": time.monotonic(),
        "cpu": float(info["used_cpu_sys"]) + float(info["used_cpu_user"]),
        "commands": int(info["total_commands_processed"]),
        "cmdstats": {
            k.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"]))
            for k, v in info.items()
            if k.startswith("cmdstat_")
        },
        "used_memory": int(info["used_memory"]),
        "aof_size": int(info.get("aof_current_size", 0)),
        "aof_rewrites": int(info.get("aof_rewrites", 0)),
        "busy_jiffies": sum(jiffies) - jiffies[3] - jiffies[4],  # less idle and iowait
        "all_jiffies": sum(jiffies),
    }


def _redis_cpu(client: Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def wait_idle(client: Redis, limit_s: float = 30.0) -> None:
    """Until the server does nothing by itself (an AOF rewrite or the fsync of a big batch
    would be counted against the calls measured next): under 2% of a core for 0.3 s."""
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        busy = client.info("persistence").get("aof_rewrite_in_progress")
        cpu = _redis_cpu(client)
        time.sleep(0.3)
        if not busy and _redis_cpu(client) - cpu < 0.006:
            return


def _round(client: Redis, fn: Callable[[], object], n: int) -> tuple[float, float, float]:
    """Redis CPU, client CPU and wall seconds of `n` calls one after another."""
    cpu, mine, t = _redis_cpu(client), time.process_time(), time.perf_counter()
    for _ in range(n):
        fn()
    return _redis_cpu(client) - cpu, time.process_time() - mine, time.perf_counter() - t


def call_costs(
    client: Redis, calls: Mapping[str, tuple[Callable[[], object], int]]
) -> dict[str, dict[str, float]]:
    """Each call's Redis CPU, client CPU and wall time (µs): after a few unmeasured ones,
    3 rounds of each in turn (so that a machine whose speed drifts, a shared VM's, moves
    them all alike), the median round; and its cost in GETs (`leader`, a plain GET)."""
    for fn, n in calls.values():
        for _ in range(max(1, n // 20)):
            fn()
    rounds: dict[str, list[tuple[float, float, float]]] = {k: [] for k in calls}
    for _ in range(3):
        for k, (fn, n) in calls.items():
            rounds[k].append(_round(client, fn, n))
    costs = {}
    for k, (_, n) in calls.items():
        redis, mine, wall = (statistics.median(r[i] for r in rounds[k]) / n for i in range(3))
        costs[k] = {"redis_us": redis * 1e6, "client_us": mine * 1e6, "wall_us": wall * 1e6}
    if "leader" in costs:
        for c in costs.values():
            c["gets"] = c["redis_us"] / costs["leader"]["redis_us"]
    return costs


def calibrate(url: str, plan: Plan, generation: str, n: int) -> dict[str, dict[str, float]]:
    """Each call of a worker alone, back to back, on the quiet server: its Redis CPU, for the
    projection to the target rates, and its client CPU, for the generator's capacity."""
    s = plan.settings
    client = connect(url)
    assert isinstance(client, Redis)  # the embedded server's URL
    q, sup = Queue(client, s.queue), Supervision(Queue(client, s.queue))
    name, other = decoder_name(generation, 10_000_000), decoder_name(generation, 10_000_001)
    info: dict[str, str | int] = {"pid": 1, "host": "node-calibration", "node": "0" * 56}
    sup.beat(name, [], info=info)  # the first beat, with its info; the others without
    held = [q.claim(1, name)[0] for _ in range(plan.leases)]
    ids = [lease.id for lease in held]
    batches = math.ceil(1.1 * n * plan.save_every / plan.chunks) + 1
    worked = [q.claim(1, other)[0] for _ in range(batches)]
    chunks = iter(itertools.product(worked, range(plan.chunks)))
    grace = s.coordinator.stale_s

    def progress() -> object:  # one call: save_every chunks
        batch = [next(chunks) for _ in range(plan.save_every)]
        lease, first = batch[0]
        saved = [(c, WORK) for other, c in batch if other is lease]
        return q.checkpoint(lease, saved, None, plan.chunks if first == 0 else None, PIN)

    ended = [held[0]]

    def video_end() -> object:  # the ack, the inbox, the next claim
        q.ack(ended[-1], f"s3://results/out/{ended[-1].id}/manifest.json", STAGES_S)
        q.ingest_inbox()
        ended.append(q.claim(1, name)[0])
        return None

    each = max(1, n // 3)
    calls: dict[str, tuple[Callable[[], object], int]] = {
        "heartbeat": (lambda: sup.beat(name, ids, grace), each),  # the info sent once
        "leader": (sup.leader, each),
        "renew": (lambda: q.renew(held[-1]), each),
        "progress": (progress, each),
        "video_end": (video_end, max(1, each // 10)),
    }
    costs = call_costs(client, calls)
    for lease in [*held[1:], ended[-1], *worked]:
        q.release(lease, "calibration over")
    sup.leave(name)
    sup.leave(other)
    return costs


def sweep_costs(
    url: str, plan: Plan, generation: str, expired: list[int], repeats: int
) -> dict[str, dict[str, Any]]:
    """Supervision.sweep as the coordinator calls it, the workers still running, with `e`
    leases expired among theirs: each stuck alone on its worker (the blame its video's).
    They are claimed with a clock one lease time and a second in the past (Queue's public
    `clock`), just after a sweep, so that the timed one comes within gap_s of it."""
    s, c = plan.settings, plan.settings.coordinator
    q = Queue(connect(url), s.queue)
    numbers = itertools.count(20_000_000)
    found: dict[str, dict[str, Any]] = {}
    for e in expired:
        times: list[float] = []
        longest: list[float] = []
        reaped: list[int] = []
        for _ in range(repeats):
            past = q.now_ms() - int(s.queue.lease_s * 1000) - 1000
            q.sweep(stale_s=c.stale_s, gap_s=c.gap_s, judge=True)  # the last tick's
            old = Queue(q.client, s.queue, clock=functools.partial(int, past))
            for _ in range(e):
                old.claim(1, decoder_name(generation, next(numbers)))
            with _passes_logged(q) as passes:
                t = time.perf_counter()
                r = q.sweep(stale_s=c.stale_s, gap_s=c.gap_s, judge=True)
                times.append((time.perf_counter() - t) * 1000)
            longest.append(max(passes, default=math.nan))
            reaped.append(r.requeued + r.poisoned)
        found[str(e)] = {
            "ms_median": round(statistics.median(times), 3),
            "ms": [round(x, 3) for x in times],
            # the longest of its passes (each one Lua call, the server blocked meanwhile)
            "pass_ms_median": round(statistics.median(longest), 3),
            "reaped": reaped,
        }
    return found


@contextlib.contextmanager
def _passes_logged(q: Queue) -> Iterator[list[float]]:
    """The server's own time (ms) of each sweep call made meanwhile, from its slow log
    (every command logged for the while; the workers' calls left out by the script)."""
    sha = q._scripts.load("sweep")
    client = q.client
    before = str(client.config_get("slowlog-log-slower-than")["slowlog-log-slower-than"])
    kept = str(client.config_get("slowlog-max-len")["slowlog-max-len"])
    client.config_set("slowlog-max-len", 100_000)
    client.slowlog_reset()
    client.config_set("slowlog-log-slower-than", 0)
    passes: list[float] = []
    try:
        yield passes
    finally:
        client.config_set("slowlog-log-slower-than", before)
        for entry in client.slowlog_get(100_000):
            command = entry["command"]  # its arguments joined by spaces (redis-py)
            args = (command.decode() if isinstance(command, bytes) else str(command)).split()
            if args[:1] == ["EVALSHA"] and args[1:2] == [sha]:
                passes.append(entry["duration"] / 1000)
        client.config_set("slowlog-max-len", kept)
