"""A hypothesis state machine over enqueue/claim/renew/progress/ack/fail/release/reap/cancel/
retry/release_workers with a controllable clock and three workers, against each real server
build (valkey 9.1 and redis 6.2). The model predicts exactly which items each claim hands out
(priority, FIFO, suspects alone) and how each reap blames a lapse (see lua/sweep.lua). After
every step: every id is in exactly one state (hash and zsets agree with the model), nothing is
lost, each worker's lease index is exact, and a fenced call (renew, progress, ack, fail,
release) wins only for the current lease. A worker released by a fleet-wide event is retired:
it is refused claims and heartbeats from then on, and its slot goes on as a new incarnation."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)
from redis import Redis

from framefleet.queue import NewItem, Queue, Supervision, Verdict, WorkerRetired
from framefleet.queue.keys import STATES
from framefleet.queue.model import Lease
from framefleet.settings import QueueSettings
from tests.conftest import ManualClock

IDS = [f"v{i}" for i in range(6)]
WORKERS = ["w0", "w1", "w2"]
PRIORITY = {i: (9 if i in ("v0", "v1") else 5) for i in IDS}
LEASE_MS, MAX_ATTEMPTS, MAX_DELIVERIES, BASE_MS, CAP_MS = 1000, 3, 3, 200, 800


@dataclass
class Model:
    seq: int
    state: str = "queued"
    token: str = ""
    owner: str = ""
    attempts: int = 0
    deliveries: int = 0
    deadline: int = 0
    ready_at: int = 0
    chunks: set[int] = field(default_factory=set)
    solo: bool = False  # a suspect: handed out alone
    solo_since: int = 0
    crash_mark: int | None = None


class QueueMachine(RuleBasedStateMachine):
    client: Redis

    leases = Bundle("leases")

    def __init__(self) -> None:
        super().__init__()
        self.client.flushall()
        self.clock = ManualClock()
        self.q = Queue(
            self.client,
            QueueSettings(
                lease_s=LEASE_MS / 1000,
                max_attempts=MAX_ATTEMPTS,
                max_deliveries=MAX_DELIVERIES,
                backoff_base_s=BASE_MS / 1000,
                backoff_max_s=CAP_MS / 1000,
            ),
            clock=self.clock,
            rng=random.Random(0),
        )
        self.model: dict[str, Model] = {}
        self.seq = 0
        self.max_epoch = 0
        self.held: defaultdict[str, set[str]] = defaultdict(set)  # worker name -> its leases
        self.solo_of: dict[str, str] = {}  # worker -> the suspect it holds
        self.incarnation = dict.fromkeys(WORKERS, 0)  # a new one after each release

    def name(self, slot: str) -> str:
        return f"{slot}.{self.incarnation[slot]}"

    def current(self, lease: Lease) -> bool:
        m = self.model.get(lease.id)
        return m is not None and m.state == "leased" and m.token == lease.token

    def expect_fenced(self, verdict: Verdict, lease: Lease) -> bool:
        """Checks the verdict of a fenced call; True when the call should have won."""
        won = self.current(lease)
        assert verdict.ok == won, (verdict, lease, self.model.get(lease.id))
        return won

    def _end_lease(self, item_id: str) -> None:
        m = self.model[item_id]
        self.held[m.owner].discard(item_id)
        if self.solo_of.get(m.owner) == item_id:
            del self.solo_of[m.owner]

    # -- rules -------------------------------------------------------------------------------

    @rule(ids=st.lists(st.sampled_from(IDS), max_size=4), force=st.booleans())
    def enqueue(self, ids: list[str], force: bool) -> None:
        expected: list[str] = []
        for i in ids:
            m = self.model.get(i)
            if i not in expected and (m is None or (force and m.state in ("done", "dead"))):
                expected.append(i)
        got = self.q.enqueue(
            [NewItem(f"/v/{i}.mp4", id=i, priority=PRIORITY[i]) for i in ids], force=force
        )
        assert got == expected
        first = self.seq + 1
        self.seq += len(ids)  # a batch reserves a FIFO number per entry, duplicates included
        for i in got:
            self.model[i] = Model(seq=first + ids.index(i))

    def _promote(self) -> None:
        for m in self.model.values():
            if m.state == "delayed" and m.ready_at <= self.clock.now_ms:
                m.state = "queued"

    def _expected_claim(self, n: int, worker: str) -> list[str]:
        """claim.lua's choice: queued items by priority, then FIFO; a suspect only as the
        first and only item, to a worker holding nothing (or, lease_ms after it became a
        suspect, to any); nothing for a worker holding a suspect."""
        if worker in self.solo_of:
            return []
        busy = bool(self.held[worker])
        order = sorted(
            (i for i, m in self.model.items() if m.state == "queued"),
            key=lambda i: (9 - PRIORITY[i], self.model[i].seq),
        )
        take: list[str] = []
        for i in order:
            if len(take) == n:
                break
            m = self.model[i]
            if not m.solo:
                take.append(i)
            elif not take and (not busy or self.clock.now_ms - m.solo_since >= LEASE_MS):
                return [i]
        return take

    @rule(target=leases, n=st.integers(1, 3), slot=st.sampled_from(WORKERS))
    def claim(self, n: int, slot: str) -> object:
        worker = self.name(slot)
        self._promote()
        expected = self._expected_claim(n, worker)
        got = self.q.claim(n, worker)
        assert [lease.id for lease in got] == expected
        for lease in got:
            m = self.model[lease.id]
            assert lease.epoch > self.max_epoch
            self.max_epoch = lease.epoch
            assert (lease.attempts, lease.deliveries, set(lease.chunks_done), lease.solo) == (
                m.attempts,
                m.deliveries,
                m.chunks,
                m.solo,
            )
            m.state, m.token, m.owner = "leased", lease.token, worker
            m.deadline = self.clock.now_ms + LEASE_MS
            self.held[worker].add(lease.id)
            if m.solo:
                self.solo_of[worker] = lease.id
        return multiple(*got)

    @rule(lease=leases)
    def renew(self, lease: Lease) -> None:
        if self.expect_fenced(self.q.renew(lease), lease):
            self.model[lease.id].deadline = self.clock.now_ms + LEASE_MS

    @rule(lease=leases, chunk=st.integers(0, 3))
    def progress(self, lease: Lease, chunk: int) -> None:
        if self.expect_fenced(self.q.progress(lease, chunk, total=4), lease):
            self.model[lease.id].chunks.add(chunk)

    @rule(lease=leases)
    def ack(self, lease: Lease) -> None:
        m = self.model.get(lease.id)
        verdict = self.q.ack(lease, "out")
        if m is not None and m.state == "done" and m.token == lease.token:
            assert verdict == Verdict.DUPLICATE
            return
        if self.expect_fenced(verdict, lease):
            self._end_lease(lease.id)
            self.model[lease.id].state = "done"
            self.model[lease.id].chunks = set()

    @rule(lease=leases, retryable=st.booleans())
    def fail(self, lease: Lease, retryable: bool) -> None:
        if not self.expect_fenced(self.q.fail(lease, "boom", retryable=retryable), lease):
            return
        self._end_lease(lease.id)
        m = self.model[lease.id]
        m.attempts += 1
        if not retryable or m.attempts >= MAX_ATTEMPTS:
            m.state = "dead"
            return
        item = self.q.get(lease.id)
        assert item is not None and item.ready_at_ms is not None
        step = min(CAP_MS, BASE_MS * 2 ** (m.attempts - 1))
        assert step // 2 <= item.ready_at_ms - self.clock.now_ms <= step
        m.state, m.ready_at = "delayed", item.ready_at_ms

    @rule(lease=leases)
    def release(self, lease: Lease) -> None:
        if self.expect_fenced(self.q.release(lease, "preempted"), lease):
            self._end_lease(lease.id)
            self.model[lease.id].state = "queued"

    @rule(slot=st.sampled_from(WORKERS))
    def release_worker(self, slot: str) -> None:
        """A fleet-wide event: the worker's leases come back, nothing charged, and it is
        retired: no claim, no heartbeat again (what the claim would have leased stays)."""
        worker = self.name(slot)
        sup = Supervision(self.q)
        mine = [i for i in self.held[worker] if self.model[i].state == "leased"]
        got = sup.release_workers([worker], reason="node lost")
        assert got == len(mine)
        for i in mine:
            self._end_lease(i)
            self.model[i].state = "queued"
        with pytest.raises(WorkerRetired):
            self.q.claim(3, worker)
        with pytest.raises(WorkerRetired):
            sup.heartbeat(worker)
        assert worker not in sup.workers()
        self.incarnation[slot] += 1

    @rule(ms=st.integers(0, 2500))
    def advance(self, ms: int) -> None:
        self.clock.advance(ms)

    def _lapse(self, m: Model, charge: bool) -> bool:
        """The model of lapse() in _common.lua; True when the item is dead."""
        done = len(m.chunks)
        if charge:
            restart = m.crash_mark is not None and done > m.crash_mark
            m.deliveries = 1 if restart else m.deliveries + 1
        m.crash_mark = done
        if not m.solo:
            m.solo, m.solo_since = True, self.clock.now_ms
        m.state = "dead" if charge and m.deliveries >= MAX_DELIVERIES else "queued"
        return m.state == "dead"

    @rule()
    def reap(self) -> None:
        now = self.clock.now_ms
        requeued = poisoned = 0
        for held in self.held.values():
            expired = [i for i in held if self.model[i].deadline <= now]
            if not expired:
                continue
            shared = len(held) > 1 and len(expired) == len(held)  # the worker failed whole
            for i in expired:
                self._end_lease(i)
                if self._lapse(self.model[i], charge=not shared):
                    poisoned += 1
                else:
                    requeued += 1
        promoted = sum(
            m.state == "delayed" and m.ready_at <= self.clock.now_ms for m in self.model.values()
        )
        self._promote()
        r = self.q.reap()
        assert (r.requeued, r.poisoned, r.promoted) == (requeued, poisoned, promoted)

    @rule(item_id=st.sampled_from(IDS))
    def cancel(self, item_id: str) -> None:
        m = self.model.get(item_id)
        expected = m is not None and m.state in ("queued", "delayed")
        assert self.q.cancel(item_id) == expected
        if expected:
            self.model[item_id].state = "dead"

    @rule()
    def retry_dead(self) -> None:
        dead = sorted(i for i, m in self.model.items() if m.state == "dead")
        assert sorted(self.q.retry_dead()) == dead
        for i in dead:
            m = self.model[i]
            m.state, m.attempts, m.deliveries = "queued", 0, 0
            m.solo, m.crash_mark = False, None

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def every_id_is_in_exactly_one_state(self) -> None:
        pipe = self.client.pipeline(transaction=False)
        for i in IDS:
            pipe.hget(self.q.keys.item(i), "state")
            for s in STATES:
                pipe.zscore(self.q.keys.state(s), i)
        replies = pipe.execute()
        width = 1 + len(STATES)
        for n, i in enumerate(IDS):
            state, *scores = replies[n * width : (n + 1) * width]
            in_sets = [s for s, score in zip(STATES, scores, strict=True) if score is not None]
            m = self.model.get(i)
            if m is None:
                assert state is None and in_sets == []
            else:
                assert state == m.state and in_sets == [m.state], (i, state, in_sets, m)

    @invariant()
    def the_worker_index_is_exact(self) -> None:
        sup = Supervision(self.q)
        for worker, held in self.held.items():
            assert sup.held(worker) == held, worker

    @invariant()
    def nothing_is_lost(self) -> None:
        counts = self.q.stats().counts
        assert sum(counts[s] for s in STATES) == len(self.model)


# A failure is shrunk for up to 300 s (Hypothesis's own cap, MAX_SHRINKING_SECONDS), then
# reported with its steps: past the default 300 s per test, so that it is not cut off first.
@pytest.mark.timeout(420)
def test_queue_state_machine(client: Redis) -> None:
    """On each server build (the contract suite's `client`): 130 runs of up to 50 steps
    each, about 13 s a build here (200 on one build were 19-26 s)."""
    machine = type("BoundQueueMachine", (QueueMachine,), {"client": client})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=130,
            stateful_step_count=50,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture],
        ),
    )
