"""A worker loop that keeps count, for the failover tests (tests/integration/test_sentinel.py,
test_redis_cluster.py): what each call was told, when each turn ended, and the checks every
run ends with (every item done, once in the surviving history; what the failover cost)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from framefleet.queue import Queue, State, Verdict
from framefleet.queue.durable import NotDurable

LEASE_S = 30.0


class Clock:
    """Milliseconds that move only when a test says so: leases run out on request."""

    def __init__(self) -> None:
        self.now_ms = 1_800_000_000_000

    def __call__(self) -> int:
        return self.now_ms

    def past_every_lease(self) -> None:
        self.now_ms += int(LEASE_S * 1000) + 1


@dataclass
class Tally:
    """What a worker loop was told: per item, the leases whose ack was answered ok (OK, or
    DUPLICATE: a retried ack that had gone through), and the fenced calls refused."""

    acks: Counter[str] = field(default_factory=Counter)
    refused: Counter[Verdict] = field(default_factory=Counter)
    answered: list[float] = field(default_factory=list)  # when each loop turn ended
    longest_s: float = 0.0
    not_durable: int = 0  # acks that raised NotDurable, and were made again
    halfway: threading.Event = field(default_factory=threading.Event)
    halfway_at: int = 0


def work(q: Queue, tally: Tally, worker: str = "w") -> None:
    """Claim one item, checkpoint its one chunk, ack it, until nothing is handed out; a
    refused checkpoint (the lease is gone) drops the item, as a worker does, and an ack not
    confirmed durable is made again until it is (as the workers' _persist does)."""
    while True:
        started = time.monotonic()
        leases = q.claim(1, worker)
        if not leases:
            return
        [lease] = leases
        verdict = q.progress(lease, 0, total=1)
        while verdict:
            try:
                verdict = q.ack(lease, f"s3://out/{lease.id}")
                break
            except NotDurable:
                tally.not_durable += 1
        if verdict:
            tally.acks[lease.id] += 1
        else:
            tally.refused[verdict] += 1
        now = time.monotonic()
        tally.answered.append(now)
        tally.longest_s = max(tally.longest_s, now - started)
        if tally.halfway_at and sum(tally.acks.values()) >= tally.halfway_at:
            tally.halfway.set()


def drain(q: Queue, clock: Clock, tally: Tally) -> None:
    """The leases left behind (acks the failover lost: their items are still leased on the
    new primary) run out, the sweep takes them back, and they are done again."""
    clock.past_every_lease()
    q.reap()
    work(q, tally)


def costs(q: Queue, ids: list[str], tally: Tally) -> tuple[int, int]:
    """Checks what the design guarantees after a failover and its drain; (acks lost, items
    done twice). Every item is done, and done once in the surviving history (acked_total:
    the acks the new primary holds, replicated or its own); every refused call was fenced
    (stale or lost), never a missing item; the client's extra acks are exactly the acks
    the failover lost, each costing one item done again."""
    stats = q.stats()
    assert stats.counts["done"] == len(ids) and stats.counts["leased"] == 0
    assert {x.state for x in q.items(ids)} == {State.DONE}
    assert stats.counters["acked_total"] == len(ids)
    assert set(tally.refused) <= {Verdict.STALE, Verdict.LOST}, tally.refused
    assert set(tally.acks) == set(ids)
    told = sum(tally.acks.values())
    twice = sum(1 for n in tally.acks.values() if n > 1)
    assert all(n <= 2 for n in tally.acks.values())
    return told - stats.counters["acked_total"], twice
