"""The load generator: the simulated decode actors, a share of the fleet in each generator
process, calling the queue's public API only, each call at its due time (the periods are
`rates.Plan`'s)."""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import random
import time
import traceback
from collections import Counter
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as EventType
from typing import Any

from bench.sim.rates import Plan
from framefleet.queue import ChunkWork, Lease, Queue, Supervision, connect
from framefleet.queue.supervision import worker_name

BEAT, RENEW, CHUNK = 0, 1, 2  # the generator's events
_Event = tuple[float, int, int, int]  # due (monotonic), sequence, kind, worker or slot
PIN = '"9b2cf535f27731c974343645a3985328"'  # an S3 ETag: what the chunks are made from
STAGES_S = {"fetch": 2.1, "decode": 31.0, "infer": 52.0, "write": 1.4}
WORK = ChunkWork(frames=32, decode_s=0.45, inference_s=0.8, device="cuda")  # a chunk's


def uris(n: int, tag: str) -> list[str]:
    return [f"s3://customer-videos/uploads/2026/12/01/{tag}-{i:09d}-sim.mp4" for i in range(n)]


def decoder_name(generation: str, number: int) -> str:
    return worker_name("decoder", generation, number)


@dataclasses.dataclass
class _Slot:
    """One lease a worker holds at a time, and how far its video is."""

    worker: int
    lease: Lease | None = None
    chunk: int = 0
    first: bool = True  # the next checkpoint is its attempt's first (says the chunks expected)
    unsaved: list[tuple[int, ChunkWork | None]] = dataclasses.field(default_factory=list)


class Workers:
    """One generator process's share of the simulated decode actors."""

    def __init__(self, url: str, plan: Plan, generation: str, numbers: range) -> None:
        self.plan = plan
        self.queue = Queue(connect(url), plan.settings.queue)
        self.supervision = Supervision(self.queue)
        self.names = [decoder_name(generation, n) for n in numbers]
        self.info: list[dict[str, str | int]] = [
            {"pid": 10_000 + n, "host": f"node-{n // 8}", "node": f"{n // 8:056x}"} for n in numbers
        ]
        self.holding: list[list[str]] = [[] for _ in numbers]
        self.slots: list[_Slot] = []
        self.counts: Counter[str] = Counter()
        self.counting = False
        self.refused = self.starved = 0
        self.grace = plan.settings.coordinator.stale_s
        self.rng = random.Random(numbers.start)

    def _call(self, kind: str, fn: Callable[..., Any], *args: Any) -> Any:
        if self.counting:
            self.counts[kind] += 1
        return fn(*args)

    def start(self) -> None:
        """Each worker beats once (Heartbeat's constructor) and claims its leases, each at a
        random point of its video so that the acks are spread evenly."""
        for w, name in enumerate(self.names):
            self.supervision.heartbeat(name, [], grace_s=self.grace, info=self.info[w])
        for w in range(len(self.names)):
            for _ in range(self.plan.leases):
                slot = _Slot(w)
                self.slots.append(slot)
                self._claim(slot)
                slot.chunk = self.rng.randrange(self.plan.chunks)

    def _claim(self, slot: _Slot) -> None:
        held = self.holding[slot.worker]
        if slot.lease is not None:
            held.remove(slot.lease.id)
        self._call("ingest", self.queue.ingest_inbox)
        leases = self._call("claim", self.queue.claim, 1, self.names[slot.worker])
        slot.lease, slot.chunk, slot.first = (leases[0] if leases else None), 0, True
        if slot.lease is None:
            self.starved += 1
        else:
            held.append(slot.lease.id)

    def _beat(self, w: int) -> None:
        name, held = self.names[w], list(self.holding[w])
        self._call("heartbeat", self.supervision.beat, name, held, self.grace)  # info: at start

    def _renew(self, slot: _Slot) -> None:
        if slot.lease is not None and not self._call("renew", self.queue.renew, slot.lease).ok:
            self.refused += 1
            self._claim(slot)

    def _chunk(self, slot: _Slot) -> None:
        lease, total = slot.lease, self.plan.chunks
        if lease is None:
            self._claim(slot)
            return
        save = self.queue.checkpoint
        slot.unsaved.append((slot.chunk, WORK))
        ok = True
        if slot.chunk % self.plan.save_every == 0:  # settled chunks together (checkpoint_s)
            expected = total if slot.first else None
            ok = self._call("progress", save, lease, slot.unsaved, None, expected, PIN).ok
            slot.unsaved, slot.first = [], False
        slot.chunk += 1
        if ok and slot.chunk >= total:  # the last chunk: the total, the ack, the next video
            last = [*slot.unsaved, (total - 1, None)]
            ok = self._call("progress", save, lease, last, total, None, PIN).ok
            slot.unsaved = []
            result = f"s3://results/out/{lease.id}/manifest.json"
            ok = ok and self._call("ack", self.queue.ack, lease, result, STAGES_S).ok
            if ok:
                self._claim(slot)
        if not ok:
            self.refused += 1
            self._claim(slot)

    def _schedule(self, go: float) -> tuple[list[_Event], list[_Event]]:
        """The liveness events (heartbeats, renewals) and the work (chunks), each at a random
        point of its period."""
        p, rng, seq = self.plan, self.rng, itertools.count()
        per_chunk = p.chunk_s
        live = [(go + rng.uniform(0, p.beat_s), next(seq), BEAT, w) for w in range(len(self.names))]
        live += [
            (go + rng.uniform(0, p.renew_s), next(seq), RENEW, i) for i in range(len(self.slots))
        ]
        work = [
            (go + rng.uniform(0, per_chunk), next(seq), CHUNK, i) for i in range(len(self.slots))
        ]
        heapq.heapify(live)
        heapq.heapify(work)
        return live, work

    def run(self, go: float, window: Any, rounds: Any, stop: EventType) -> dict[str, Any]:
        """Every call at its due time, late ones at once (a generator behind catches up if it
        can). When it cannot keep up, a heartbeat or renewal late by more than a beat goes
        before the work, so that the workers stay alive in the sweep's eyes (a heartbeat
        within stale_s, a renewal within lease_s) and only the work falls short. `rounds` is
        counted up once every worker has beaten since `go`; `window` (start, end) is set
        after that: the calls are counted and this process's CPU measured in it."""
        p = self.plan
        periods = {BEAT: p.beat_s, RENEW: p.renew_s, CHUNK: p.chunk_s}
        actions: dict[int, Callable[[int], None]] = {
            BEAT: self._beat,
            RENEW: lambda i: self._renew(self.slots[i]),
            CHUNK: lambda i: self._chunk(self.slots[i]),
        }
        live, work = self._schedule(go)
        seq = itertools.count(len(live) + len(work))
        cpu = [0.0, 0.0]
        late = {BEAT: 0.0, RENEW: 0.0, CHUNK: 0.0}
        lag_end, beats = 0.0, 0
        while not stop.is_set():
            now = time.monotonic()
            if not self.counting and not cpu[0] and now >= window[0]:
                cpu[0], self.counting = time.process_time(), True
            elif self.counting and now >= window[1]:
                cpu[1], self.counting = time.process_time(), False
                lag_end = max(0.0, now - min(live[0][0], work[0][0]))
            urgent = now - live[0][0] > p.beat_s
            heap = live if urgent or live[0][0] <= work[0][0] else work
            due, _, kind, index = heap[0]
            if due > now:
                time.sleep(min(due - now, 0.02))
                continue
            if self.counting:
                late[kind] = max(late[kind], now - due)
            actions[kind](index)
            heapq.heapreplace(heap, (due + periods[kind], next(seq), kind, index))
            if kind == BEAT and beats <= len(self.names):
                beats += 1
                if beats == len(self.names):
                    with rounds.get_lock():
                        rounds.value += 1
        return {
            "counts": dict(self.counts),
            "cpu_s": cpu[1] - cpu[0],
            "late_max_s": {"heartbeat": late[BEAT], "renew": late[RENEW], "chunk": late[CHUNK]},
            "lag_at_end_s": lag_end,
            "refused": self.refused,
            "starved": self.starved,
        }


def generator(
    url: str,
    plan: Plan,
    generation: str,
    numbers: range,
    window: Any,
    rounds: Any,
    stop: EventType,
    conn: Connection,
) -> None:
    try:
        workers = Workers(url, plan, generation, numbers)
        workers.start()
        conn.send("ready")
        conn.send(workers.run(conn.recv(), window, rounds, stop))
    except BaseException:
        conn.send({"error": traceback.format_exc()})
        raise
