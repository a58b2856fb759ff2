"""The coordinator as far as Redis sees it: every tick_s (2 s), the Redis calls of the
supervisor (the leader lease, the health report read, the sweep with stale_s and gap_s) and
of the driver and its pools (the leader read, in_grace, workers(), stats(), workers() again
and the health report written with every worker's age and pid), each timed: their sum is
the tick's Redis work."""

from __future__ import annotations

import dataclasses
import json
import os
import time
import traceback
from collections import Counter
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as EventType
from typing import Any

from bench.sim.rates import Plan
from bench.sim.workers import decoder_name
from framefleet.coordinator.pools import PIDS_REPORTED
from framefleet.queue import Queue, Supervision, connect

COORDINATOR = "sim-coordinator"


class Coordinator:
    """The leader coordinator and its driver, as far as Redis sees them."""

    def __init__(self, url: str, plan: Plan, generation: str) -> None:
        s = plan.settings
        self.settings, self.generation = s, generation
        self.queue = Queue(connect(url), s.queue)
        self.supervision = Supervision(self.queue)
        ttl = s.coordinator.leader_ttl_s  # the lease's own client, as the coordinator's
        self.leases = Supervision(Queue(connect(url, retry_s=0, timeout_s=ttl / 5), s.queue))
        # the driver's pools hold every actor: the report says each one's pid
        self.pids = {decoder_name(generation, n): 10_000 + n for n in range(plan.workers)}
        self.swept: Counter[str] = Counter()

    def tick(self, sweep: bool = True) -> dict[str, float]:
        """One tick's Redis calls, each timed (ms): supervisor._lead, driver._deposed,
        Pools._tick (in_grace, workers, stats) and driver._report (worker counts, the report)."""
        c = self.settings.coordinator
        laps: dict[str, float] = {}
        t = t0 = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal t
            now = time.perf_counter()
            laps[name], t = (now - t) * 1000, now

        self.leases.hold_leadership(COORDINATOR, c.leader_ttl_s)
        lap("leader_hold")
        self.supervision.health()  # supervisor._fleet_sound
        lap("health_read")
        if sweep:
            r = self.queue.sweep(stale_s=c.stale_s, gap_s=c.gap_s, judge=True)
            self.swept.update({k: v for k, v in dataclasses.asdict(r).items() if v})
            lap("sweep")
        self.leases.leader()  # driver._deposed
        lap("leader_read")
        self.supervision.in_grace()  # Pools._kill_silent
        lap("in_grace")
        self.supervision.workers()
        lap("workers")
        self.queue.stats()  # Pools._tick: the backlog
        lap("stats")
        report = self.report(self.supervision.worker_counts(c.stale_s))
        lap("worker_counts")
        self.supervision.write_health(report, ttl_s=max(3 * c.tick_s, 10.0))
        lap("write_health")
        laps["total"] = (t - t0) * 1000
        return laps

    def report(self, counts: dict[str, int]) -> dict[str, Any]:
        """What driver._report writes: the workers counted, every actor's pid."""
        n = len(self.pids)
        report = {
            "ok": True,
            "at": time.time(),
            "leader": COORDINATOR,
            "driver_pid": os.getpid(),
            "generation": self.generation,
            "redis": True,
            "workers": counts,
            "events": [],
            "nodes": max(1, n // 8),
            "gcs": True,
            "decoders": n,
            "inference": 4,
            "ready_inference": 4,
            "replaced": 0,
            "draining_nodes": 0,
            "decoders_wanted": n,
            "inference_wanted": 4,
            "inference_room": 4,
            "requested": {"CPU": float(n + 4), "GPU": 1.0},
            "pids": self.pids if len(self.pids) <= PIDS_REPORTED else {},
        }
        return report


def ticker(
    url: str,
    plan: Plan,
    generation: str,
    window: Any,
    rounds: Any,
    stop: EventType,
    conn: Connection,
) -> None:
    """Ticks from the moment every worker has beaten since `go` (before, a worker that beat
    at set-up only would look silent), each tick in the window timed."""
    try:
        coordinator = Coordinator(url, plan, generation)
        conn.send("ready")
        conn.recv()
        while rounds.value < plan.processes and not stop.wait(0.05):
            pass
        tick_s = plan.settings.coordinator.tick_s
        ticks: list[dict[str, float]] = []
        at, cpu = time.monotonic(), [0.0, 0.0]
        while not stop.wait(max(0.0, at - time.monotonic())):
            inside = window[0] <= at < window[1]
            if (inside and not cpu[0]) or (at >= window[1] and not cpu[1]):
                cpu[0 if inside else 1] = time.process_time()
            laps = coordinator.tick()
            if inside:
                ticks.append(laps)
            at += tick_s
        cpu[1] = cpu[1] or time.process_time()
        report = coordinator.report(
            coordinator.supervision.worker_counts(plan.settings.coordinator.stale_s)
        )
        conn.send(
            {
                "ticks": ticks,
                "swept": dict(coordinator.swept),
                "cpu_s": cpu[1] - cpu[0],
                "report_bytes": len(json.dumps(report, sort_keys=True)),
            }
        )
    except BaseException:
        conn.send({"error": traceback.format_exc()})
        raise
