"""What the coordinator and the workers keep in Redis besides the items: worker heartbeats,
the leader lease and the health report (keys `workers`, `leader`, `health`; see keys.py).

- Workers send a heartbeat every few seconds. When a worker's heartbeat is older than the
  stale time, `sweep` makes the leases it still holds expire now and reaps them, so that its
  videos are handed out again at once instead of after the lease time (see lua/sweep.lua
  for how much of it is charged to each video). A fleet-wide event (a Ray driver gone, a
  node lost) releases its workers' leases without any charge and retires the workers
  (`release_workers`).
- Coordinators compete for one leader lease (a key with a TTL holding the leader's id);
  the holder renews it, the others stand by and take it when it runs out.
- The leader writes a health report (JSON, with a TTL) for the dashboard and the CLI.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from .model import SweepResult, WorkerRetired, check_worker
from .queue import Queue


def worker_name(kind: str, generation: str, number: int) -> str:
    """The name of a fleet's actor: `<kind>-<generation>-<n>`, unique per incarnation."""
    return f"{kind}-{generation}-{number}"


def new_generation() -> str:
    """A fleet's generation: a whole random UUID (128 bits). An ended fleet's generation is
    retired for a day (release_workers); with 24 bits a new fleet now and then drew one and
    was born retired, every decoder refused at its first heartbeat."""
    return uuid.uuid4().hex


def fleet_prefix(generation: str) -> str:
    """What the names of a fleet's decode actors (the lease holders) start with."""
    return worker_name("decoder", check_worker(generation), 0)[:-1]


@dataclass(frozen=True, slots=True)
class Beat:
    """A heartbeat's answer: the leases given back, the coordinator holding the leader
    lease (None: none), whether the queue knows the worker's info."""

    back: int
    leader: str | None
    info_known: bool


class Supervision:
    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self.client, self.keys = queue.client, queue.keys

    # -- workers -----------------------------------------------------------------------

    def heartbeat(
        self,
        worker: str,
        holding: Collection[str] | None = None,
        grace_s: float = 10.0,
        info: Mapping[str, str | int] | None = None,
    ) -> int:
        """The worker is alive. With `holding` (the ids it knows it leases), the leases the
        queue has it holding besides those, claimed more than grace_s ago, go back to the
        queue, uncharged (a lost reply, a lost write, a thread that gave up): how many.
        `info`: what it says of itself (node, pid, host), kept while it is known.
        WorkerRetired when a fleet-wide event ended the worker (release_workers)."""
        return self.beat(worker, holding, grace_s, info).back

    def beat(
        self,
        worker: str,
        holding: Collection[str] | None = None,
        grace_s: float = 10.0,
        info: Mapping[str, str | int] | None = None,
    ) -> Beat:
        """heartbeat(), and what the queue answers besides: the leader, and whether it
        knows the worker's info (send it only then: once, and again should it be lost)."""
        check_worker(worker)
        said = "" if not info else json.dumps(dict(info), sort_keys=True)
        if holding is None:
            reply = self.queue._run("heartbeat", worker, "beat", 0, said)
        else:
            grace = int(grace_s * 1000)
            reply = self.queue._run("heartbeat", worker, "sync", grace, said, *holding)
        written, back, leader, known = reply
        if int(written) < 0:
            raise WorkerRetired(f"{worker}: its fleet ended or its node was lost")
        return Beat(int(back), str(leader) or None, bool(int(known)))

    def leave(self, worker: str) -> None:
        """The worker stopped cleanly: forget it (its leases were released or settled)."""
        self.queue._run("heartbeat", check_worker(worker), "leave", 0, "")

    def worker_info(self) -> dict[str, dict[str, Any]]:
        """What each known worker said of itself in its heartbeats (node, pid, host)."""
        found: dict[str, dict[str, Any]] = {}
        for name, said in self.client.hgetall(self.keys.worker_info).items():
            with contextlib.suppress(ValueError):
                found[str(name)] = dict(json.loads(said))
        return found

    def workers(self) -> dict[str, float]:
        """Each worker's seconds since its last heartbeat."""
        now_ms = self.queue.now_ms()
        rows = cast(
            list[tuple[str, float]], self.client.zrange(self.keys.workers, 0, -1, withscores=True)
        )
        return {str(name): max(0.0, (now_ms - score) / 1000) for name, score in rows}

    def worker_counts(self, stale_s: float) -> dict[str, int]:
        """How many workers beat within stale_s (live) and how many have not (stale, and
        not forgotten yet): O(log n), for reports at any fleet size."""
        edge = self.queue.now_ms() - int(stale_s * 1000)
        pipe = self.client.pipeline(transaction=False)
        pipe.zcount(self.keys.workers, f"({edge}", "+inf")
        pipe.zcount(self.keys.workers, "-inf", edge)
        live, stale = pipe.execute()
        return {"live": int(live), "stale": int(stale)}

    def mark_gone(self, worker: str) -> None:
        """The worker is known dead (Ray said so): the next sweep treats it as silent for
        ever, whatever its last heartbeat (or if it never sent one), and forgets it."""
        self.client.zadd(self.keys.workers, {check_worker(worker): 0})

    def sweep(self, stale_s: float, gap_s: float | None = None) -> SweepResult:
        """Queue.sweep with the dead workers: those silent for stale_s (or marked gone) have
        their leases expire now, and they are reaped at once."""
        return self.queue.sweep(stale_s=stale_s, gap_s=gap_s)

    def release_workers(
        self, names: Sequence[str] = (), *, prefix: str | None = None, reason: str
    ) -> int:
        """A fleet-wide event ended these workers (the named ones, or every one whose name
        starts with `prefix`): their leases go back to the queue now, no delivery counted.
        They are retired, the names or the prefix: should one still run (its raylet has not
        given up on a dead head yet, its node is cut off), it leases nothing more and its
        heartbeats are refused (WorkerRetired), for a day. Returns how many."""
        if prefix is not None:
            return int(self.queue._run("release_workers", reason, "prefix", prefix))
        if not names:
            return 0
        checked = [check_worker(n) for n in names]
        return int(self.queue._run("release_workers", reason, "names", *checked))

    def in_grace(self) -> bool:
        """Whether a sweep lately saw a gap (Redis was away, its clock jumped): heartbeats
        are not held against workers until they have had time to beat again."""
        until = self.client.hget(self.keys.meta, "grace_until")
        if until is None:
            return False
        return self.queue.now_ms() < int(until)

    def held(self, worker: str) -> set[str]:
        """The ids the worker leases now, as the queue sees it."""
        return {str(i) for i in self.client.smembers(self.keys.held(check_worker(worker)))}

    # -- fleets (one per Ray driver: its workers are named <kind>-<generation>-<n>) ----------

    def add_fleet(self, generation: str, leader: str) -> None:
        self.client.hset(self.keys.fleets, check_worker(generation), check_worker(leader))

    def fleets(self) -> dict[str, str]:
        """generation -> the coordinator that started it, for every fleet not ended yet."""
        return {str(k): str(v) for k, v in self.client.hgetall(self.keys.fleets).items()}

    def end_fleet(self, generation: str, reason: str) -> int:
        """The fleet's driver is gone, and with it its actors: their leases come back now,
        no delivery counted (release_workers). Returns how many."""
        released = self.release_workers(prefix=fleet_prefix(generation), reason=reason)
        self.client.hdel(self.keys.fleets, generation)
        return released

    # -- the leader lease --------------------------------------------------------------

    def hold_leadership(self, candidate: str, ttl_s: float) -> bool:
        """Take the leader lease or extend it; True while `candidate` is the leader."""
        return bool(self.queue._run("leader_hold", candidate, int(ttl_s * 1000)))

    def release_leadership(self, candidate: str) -> bool:
        return bool(self.queue._run("leader_release", candidate))

    def leader(self) -> str | None:
        value = self.client.get(self.keys.leader)
        return None if value is None else str(value)

    # -- health ------------------------------------------------------------------------

    def write_health(self, report: dict[str, Any], ttl_s: float) -> None:
        """The leader's report, stamped with the queue's time (`written_ms`: the server's
        clock) besides the writer's own `at`, so that its age is told by one clock. Written
        at the server's maxmemory too (lua/health.lua)."""
        stamped = {**report, "written_ms": self.queue.now_ms()}
        self.queue._run("health", json.dumps(stamped, sort_keys=True), int(ttl_s * 1000))

    def health(self) -> dict[str, Any] | None:
        raw = self.client.get(self.keys.health)
        return None if raw is None else dict(json.loads(raw))

    def health_age_s(self, report: Mapping[str, Any]) -> float | None:
        """How old a report is by the queue's clock (None for a report without its stamp):
        a leader whose host's clock is off does not make it look stale, or fresh."""
        written = report.get("written_ms")
        if not isinstance(written, int | float):
            return None
        return max(0.0, (self.queue.now_ms() - written) / 1000)
