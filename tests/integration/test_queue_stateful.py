"""A hypothesis state machine over enqueue/claim/renew/progress/ack/fail/release/reap/cancel/
retry/release_workers, heartbeats (with and without the ids held), workers marked gone (Ray
said they died), sweeps (stale workers, gaps, unjudged sweeps of a fleet that lost its GCS)
and clock jumps, with a controllable clock and three workers, against each real server build
(valkey 9.1 and redis 6.2). The model predicts exactly which items each claim hands out
(priority, FIFO, suspects alone) and how each sweep and reap blames a lapse (see
lua/sweep.lua and the README's "The queue's contract"). After every step: every id is in
exactly one state (hash and zsets agree with the model), nothing is lost, each worker's lease
index is exact, each item's deliveries and suspect marks are the model's, the heartbeats and
the grace are the model's, and a fenced call (renew, progress, ack, fail, release) wins only
for the current lease. Each sweep also checks the README's "Fault tolerance" promises on the
blame directly, from the server's items before and after: no delivery charged in a sweep
that saw a gap (a clock jump, an outage: the leases that ran out in it are forgiven) but to
the video of a worker Ray reported dead, none in an unjudged sweep, and none to a silent
worker's videos unless it held only a suspect. A worker released by a fleet-wide event is
retired: it is refused claims and heartbeats from then on, and its slot goes on as a new
incarnation."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import cast

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)
from redis import Redis

from framefleet.queue import NewItem, Queue, Supervision, SweepResult, Verdict, WorkerRetired
from framefleet.queue.keys import STATES
from framefleet.queue.model import Lease
from framefleet.settings import QueueSettings
from tests.conftest import ManualClock

IDS = [f"v{i}" for i in range(6)]
WORKERS = ["w0", "w1", "w2"]
PRIORITY = {i: (9 if i in ("v0", "v1") else 5) for i in IDS}
LEASE_MS, MAX_ATTEMPTS, MAX_DELIVERIES, BASE_MS, CAP_MS = 1000, 3, 3, 200, 800
# a worker silent STALE_MS is gone; a sweep GAP_MS after the last one saw a gap; a lease a
# heartbeat does not name is given back when claimed more than HOLD_GRACE_MS ago
# (about the production ratios: stale 10 s, the gap half of it and a heartbeat's grace of 10
# s, against a 60 s lease)
STALE_MS, GAP_MS, HOLD_GRACE_MS = 400, 200, 150
# how a sweep is run: (stale workers judged, gaps looked for, lapses judged), as the
# coordinator (and the decode actors) run it, as the pools run it after an actor's death,
# as a coordinator whose fleet lost the Ray GCS runs it, and as Queue.reap runs it
SWEEPS = {
    "coordinator": (True, True, True),
    "orphan": (True, False, True),
    "gcs_lost": (False, True, False),
    "reap": (False, False, True),
}


@dataclass
class Model:
    seq: int
    state: str = "queued"
    token: str = ""
    owner: str = ""
    attempts: int = 0
    deliveries: int = 0
    deadline: int = 0
    claimed_at: int = 0
    ready_at: int = 0
    chunks: set[int] = field(default_factory=set)
    solo: bool = False  # a suspect: handed out alone
    solo_since: int = 0
    crash_mark: int | None = None


@dataclass
class Tally:
    """What one sweep did, as the model sees it."""

    requeued: int = 0
    poisoned: int = 0
    orphan_workers: int = 0
    orphaned: int = 0
    forgiven: int = 0
    charged: set[str] = field(default_factory=set)


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
        self.beats: dict[str, int] = {}  # worker -> its last heartbeat (0: marked gone)
        self.swept_at: int | None = None  # the last sweep that looked for a gap
        self.grace_until: int | None = None

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
            m.claimed_at = self.clock.now_ms
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
        self.beats.pop(worker, None)
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

    @initialize(ids=st.lists(st.sampled_from(IDS), max_size=len(IDS)))
    def the_coordinator_sweeps_as_it_starts(self, ids: list[str]) -> None:
        """Videos enqueued before, then the first sweep."""
        self.enqueue(ids, force=False)
        self._sweep("coordinator")

    @rule(ms=st.integers(0, GAP_MS), how=st.sampled_from(["coordinator", "gcs_lost"]))
    def tick(self, ms: int, how: str) -> None:
        """The leader's tick: time passes within the sweeps' cadence, then it sweeps (not
        judging while its fleet has lost the Ray GCS)."""
        self.clock.advance(ms)
        self._sweep(how)

    @rule(
        ms=st.integers(GAP_MS + 1, 3 * LEASE_MS), how=st.sampled_from(["coordinator", "gcs_lost"])
    )
    def clock_jumps_forward(self, ms: int, how: str) -> None:
        """A forward jump past the gap (NTP stepping a clock, a VM resumed, the server down
        that long), then the leader's sweep: it forgives the leases that ran out in the
        gap and charges nothing, but to a video whose worker Ray reported dead."""
        self.clock.advance(ms)
        self._sweep(how)

    def _beat(self, worker: str, holding: list[str] | None = None) -> None:
        """The worker beats; naming the ids it holds (`holding`), the leases the queue has
        it holding besides those, claimed over HOLD_GRACE_MS ago, come back uncharged."""
        now = self.clock.now_ms
        back = []
        if holding is not None:
            back = [
                i
                for i in sorted(self.held[worker])
                if i not in holding and self.model[i].claimed_at < now - HOLD_GRACE_MS
            ]
        got = Supervision(self.q).heartbeat(worker, holding, grace_s=HOLD_GRACE_MS / 1000)
        self.beats[worker] = now
        assert got == len(back)
        for i in back:
            self._end_lease(i)
            self.model[i].state = "queued"  # amnesty: no delivery, no suspect mark

    @rule(slot=st.sampled_from(WORKERS), sync=st.booleans())
    def heartbeat(self, slot: str, sync: bool) -> None:
        """The worker beats, naming the ids it holds (sync) or not."""
        worker = self.name(slot)
        self._beat(worker, sorted(self.held[worker]) if sync else None)

    @rule(lease=leases, late=st.booleans())
    def a_heartbeat_without_a_lease_its_worker_lost_track_of(
        self, lease: Lease, late: bool
    ) -> None:
        """The lease's worker beats naming the ids it holds, but not this one (the reply
        of its claim was lost, the server lost the write of its ack): claimed over
        HOLD_GRACE_MS ago (late: time passes until then), it comes back, uncharged; sooner,
        it stays (the claim's reply may be on its way)."""
        if not self.current(lease):
            return
        m = self.model[lease.id]
        if late:
            self.clock.advance(max(0, m.claimed_at + HOLD_GRACE_MS + 1 - self.clock.now_ms))
        self._beat(m.owner, sorted(self.held[m.owner] - {lease.id}))

    @rule()
    def the_fleet_loses_the_ray_gcs_for_a_lease_time(self) -> None:
        """The leader's fleet cannot see its cluster for longer than a lease: it ticks,
        sweeping unjudged, and the leases that run out meanwhile (nobody renews) come back
        as suspects, none charged."""
        for _ in range(LEASE_MS // GAP_MS + 1):
            self.clock.advance(GAP_MS)
            self._sweep("gcs_lost")

    @rule(target=leases, slot=st.sampled_from(WORKERS), n=st.integers(0, 3))
    def a_worker_falls_silent(self, slot: str, n: int) -> object:
        """The worker claims (up to n), beats a last time and falls silent (its node lost
        without Ray saying so, a partition) while the others beat and the leader ticks:
        after the stale time its leases come back as suspects, uncharged, unless it held
        only a suspect."""
        got = self.claim(n, slot) if n else multiple()
        self._beat(self.name(slot))
        others = [other for other in WORKERS if other != slot]
        for _ in range(STALE_MS // GAP_MS + 1):
            for other in others:
                self._beat(self.name(other))
            self.clock.advance(GAP_MS)
            self._sweep("coordinator")
        return got

    @rule(slot=st.sampled_from(WORKERS))
    def mark_gone(self, slot: str) -> None:
        """Ray reported the worker's process dead."""
        worker = self.name(slot)
        Supervision(self.q).mark_gone(worker)
        self.beats[worker] = 0

    def _snapshot(self) -> dict[str, tuple[int, str]]:
        """Each item's deliveries and state, as the server has them."""
        pipe = self.client.pipeline(transaction=False)
        for i in IDS:
            pipe.hmget(self.q.keys.item(i), "deliveries", "state")
        return {
            i: (int(d or 0), str(state))
            for i, (d, state) in zip(IDS, pipe.execute(), strict=True)
            if state is not None
        }

    def _in_grace(self) -> bool:
        return self.grace_until is not None and self.clock.now_ms < self.grace_until

    def _lapse_leased(self, i: str, charge: bool, tally: Tally) -> None:
        self._end_lease(i)
        if charge:
            tally.charged.add(i)
        if self._lapse(self.model[i], charge=charge):
            tally.poisoned += 1
        else:
            tally.requeued += 1

    def _model_gap(self, stale: bool, tally: Tally) -> bool:
        """sweep.lua's step 1: after a gap, the leases that ran out since the last sweep that
        looked get a new lease time, and heartbeats are not held against their workers for
        the stale time. Whether the sweep is in a grace."""
        now, last = self.clock.now_ms, self.swept_at
        self.swept_at = now
        if last is None or now - last <= GAP_MS:
            return self._in_grace()
        for m in self.model.values():
            if m.state == "leased" and last < m.deadline <= now:
                m.deadline = now + LEASE_MS
                tally.forgiven += 1
        self.grace_until = now + (STALE_MS if stale else 0)
        return True

    def _model_orphans(self, grace: bool, tally: Tally) -> None:
        """Step 2: the leases of a worker marked gone expire now (the reap judges them);
        those of a worker silent STALE_MS (not in a grace) come back as suspects, charged
        only when it held nothing but a suspect. Silent 3 x STALE_MS (in a grace: marked
        gone), it is forgotten."""
        now = self.clock.now_ms
        gone = [w for w, t in self.beats.items() if t == 0 or (not grace and t <= now - STALE_MS)]
        for w in gone:
            live = sorted(self.held[w])
            alone = len(live) == 1 and self.model[live[0]].solo
            for i in live:
                if self.beats[w] == 0:
                    self.model[i].deadline = now
                else:
                    self._lapse_leased(i, alone, tally)
                tally.orphaned += 1
            tally.orphan_workers += bool(live)
        forget = gone if grace else [w for w, t in self.beats.items() if t <= now - 3 * STALE_MS]
        for w in forget:
            del self.beats[w]

    def _model_reap(self, judge: bool, grace: bool, stale: bool, tally: Tally) -> None:
        """Step 3: a worker whose several leases all ran out failed whole (a suspect each);
        otherwise the lapse is the video's (charged), but in a grace, of a worker silent
        STALE_MS (or forgotten), a suspect's. Unjudged: suspects all."""
        now = self.clock.now_ms
        for w, held in list(self.held.items()):
            expired = sorted(i for i in held if self.model[i].deadline <= now)
            shared = len(held) > 1 and len(expired) == len(held)
            beat = self.beats.get(w)
            silent = grace and stale and (beat is None or 0 < beat <= now - STALE_MS)
            for i in expired:
                self._lapse_leased(i, judge and not shared and not silent, tally)

    def _model_sweep(self, stale: bool, gap: bool, judge: bool) -> tuple[SweepResult, set[str]]:
        """sweep.lua's effect on the model (step 0, times ahead, never applies: this clock
        only goes forward): the result it must answer, and the ids it charged."""
        tally = Tally()
        grace = self._model_gap(stale, tally) if gap else self._in_grace()
        if stale:
            self._model_orphans(grace, tally)
        self._model_reap(judge, grace, stale, tally)
        now = self.clock.now_ms
        promoted = sum(m.state == "delayed" and m.ready_at <= now for m in self.model.values())
        self._promote()
        result = SweepResult(
            tally.requeued,
            tally.poisoned,
            promoted,
            tally.orphan_workers,
            tally.orphaned,
            tally.forgiven,
        )
        return result, tally.charged

    @rule(how=st.sampled_from(sorted(SWEEPS)))
    def sweep(self, how: str) -> None:
        self._sweep(how)

    def _sweep(self, how: str) -> None:
        stale, gap, judge = SWEEPS[how]
        now = self.clock.now_ms
        before = self._snapshot()
        gap_seen = gap and self.swept_at is not None and now - self.swept_at > GAP_MS
        reported_dead = {i for w, t in self.beats.items() if t == 0 for i in self.held[w]}
        judges_silence = stale and not (gap_seen or self._in_grace())  # step 2 skips a grace
        silent = [
            set(self.held[w])
            for w, t in self.beats.items()
            if judges_silence and 0 < t <= now - STALE_MS
        ]
        lone_suspects = {
            i for held in silent for i in held if len(held) == 1 and self.model[i].solo
        }
        silent_in_grace = [  # not judged in a grace: their silence may be the gap's
            set(held)
            for w, held in self.held.items()
            if stale
            and not judges_silence
            and (w not in self.beats or 0 < self.beats[w] <= now - STALE_MS)
        ]
        expected, charged = self._model_sweep(stale, gap, judge)
        if how == "reap":
            r = self.q.reap()
            got = SweepResult(r.requeued, r.poisoned, r.promoted)
            expected = SweepResult(expected.requeued, expected.poisoned, expected.promoted)
        else:
            got = self.q.sweep(
                stale_s=STALE_MS / 1000 if stale else None,
                gap_s=GAP_MS / 1000 if gap else None,
                judge=judge,
            )
        assert got == expected, (how, got, expected)
        # The blame, from the server's items alone (README, "Fault tolerance"). A delivery
        # counted shows as a changed count or a poison death (a count that starts again at
        # 1 from 1 does not show here: the model's invariant holds that one).
        counted = {
            i
            for i, (deliveries, state) in self._snapshot().items()
            if before.get(i, (0, ""))[1] == "leased"
            and (deliveries != before[i][0] or state == "dead")
        }
        assert counted <= charged, (counted, charged)
        if not judge:  # a fleet that cannot see its cluster: nobody's fault
            assert not counted, counted
        if gap_seen:  # a clock jump, an outage: forgiven; only what Ray reported dead
            assert counted <= reported_dead, (counted, reported_dead)
        for held in silent:  # silent, nobody says why: only a video it held alone, a suspect
            assert not (counted & held) - lone_suspects, (counted, held, lone_suspects)
        for held in silent_in_grace:  # nor in a grace, when step 2 does not judge it
            assert not counted & held, (counted, held)

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
        pipe = self.client.pipeline(transaction=False)  # Supervision.held's read, at once
        for worker in self.held:
            pipe.smembers(self.q.keys.held(worker))
        for (worker, held), got in zip(self.held.items(), pipe.execute(), strict=True):
            assert {str(i) for i in got} == held, worker

    @invariant()
    def deliveries_and_suspect_marks_are_the_models(self) -> None:
        """Each lapse's blame as the model judged it: the poison count, the suspect mark and
        the place of the last lapse."""
        pipe = self.client.pipeline(transaction=False)
        for i in self.model:
            pipe.hmget(self.q.keys.item(i), "deliveries", "solo", "crash_mark")
        for (i, m), (d, solo, mark) in zip(self.model.items(), pipe.execute(), strict=True):
            got = (int(d or 0), solo == "1", None if mark is None else int(mark))
            assert got == (m.deliveries, m.solo, m.crash_mark), (i, got, m)

    @invariant()
    def heartbeats_and_the_grace_are_the_models(self) -> None:
        rows = cast(
            list[tuple[str, float]],
            self.client.zrange(self.q.keys.workers, 0, -1, withscores=True),
        )
        assert {str(w): int(t) for w, t in rows} == self.beats
        assert Supervision(self.q).in_grace() == self._in_grace()

    @invariant()
    def nothing_is_lost(self) -> None:
        counts = self.q.stats().counts
        assert sum(counts[s] for s in STATES) == len(self.model)


# A failure is shrunk for up to 300 s (Hypothesis's own cap, MAX_SHRINKING_SECONDS), then
# reported with its steps: past the default 300 s per test, so that it is not cut off first.
@pytest.mark.timeout(420)
def test_queue_state_machine(client: Redis) -> None:
    """On each server build (the contract suite's `client`): 200 runs of up to 50 steps
    each, 15-30 s a build here (with the heartbeat, silence, gap and GCS rules, 130 runs
    missed a broken path now and then: the judge flag ignored, a heartbeat's give-back
    charged)."""
    machine = type("BoundQueueMachine", (QueueMachine,), {"client": client})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=200,
            stateful_step_count=50,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture],
        ),
    )
