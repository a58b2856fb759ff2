"""Worker heartbeats, orphaned leases, the leader lease and the health report, against each
real server build."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest
from redis import Redis

from framefleet.queue import (
    EmbeddedServer,
    Queue,
    Supervision,
    SweepResult,
    Verdict,
    WorkerRetired,
)
from framefleet.queue.supervision import new_generation, worker_name
from tests.conftest import ManualClock


def test_a_silent_workers_leases_expire_at_once_and_live_ones_are_kept(
    queue: Queue, clock: ManualClock
) -> None:
    sup = Supervision(queue)
    queue.enqueue(["/v/a.mp4", "/v/b.mp4", "/v/c.mp4"])
    [a] = queue.claim(1, "w-dead")
    [b] = queue.claim(1, "w-live")
    [c] = queue.claim(1, "w-silent-forever")  # never sent a heartbeat: left to lease expiry
    sup.heartbeat("w-dead")
    sup.heartbeat("w-live")
    clock.advance(5_000)
    sup.heartbeat("w-live")
    clock.advance(6_000)  # w-dead silent for 11 s, w-live for 6 s
    assert sup.workers() == {"w-dead": 11.0, "w-live": 6.0}
    result = sup.sweep(stale_s=10)
    assert (result.orphaned_workers, result.orphaned_leases, result.requeued) == (1, 1, 1)
    assert set(sup.workers()) == {"w-dead", "w-live"}  # forgotten after 3 x stale_s
    assert [x.id for x in queue.items_in("queued")] == [a.id]
    silent = queue.get(a.id)  # silent, nobody said why: a suspect, not charged
    assert silent is not None and (silent.deliveries, silent.solo) == (0, True)
    assert queue.ack(a, "late") == Verdict.LOST  # the old owner is fenced off
    assert sup.held("w-dead") == set() and sup.held("w-live") == {b.id}
    assert queue.renew(b) and queue.renew(c)
    assert queue.stats().counters["orphaned_total"] == 1
    assert sup.sweep(stale_s=10) == SweepResult()
    clock.advance(20_000)
    sup.heartbeat("w-live")
    sup.sweep(stale_s=10)
    assert set(sup.workers()) == {"w-live"}


def test_a_worker_that_leaves_is_forgotten(queue: Queue) -> None:
    sup = Supervision(queue)
    sup.heartbeat("w1")
    sup.leave("w1")
    assert sup.workers() == {}


def _until(done: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    """Polls until done(); fails saying `what` did not happen within timeout_s (well inside
    the per-test timeout, so that a slow run fails with this message)."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout_s} s")
        time.sleep(0.01)


def test_one_leader_at_a_time_and_a_standby_takes_over_when_the_lease_runs_out(
    client: Redis,
) -> None:
    """The leader lease is a key with a TTL on the server's own clock (SET PX, PEXPIRE), which
    no test clock drives: it is held for a minute while exclusion is checked (no margin a
    loaded machine can eat), and made to run out by a last renewal of 50 ms, waited for."""
    sup = Supervision(Queue(client))
    key = sup.keys.leader
    assert sup.hold_leadership("c1", ttl_s=60)
    assert not sup.hold_leadership("c2", ttl_s=60)
    assert sup.leader() == "c1"
    assert sup.hold_leadership("c1", ttl_s=120)  # a renewal extends the lease
    assert client.pttl(key) > 60_000
    assert not sup.release_leadership("c2")  # only the holder releases
    assert sup.leader() == "c1"
    assert sup.queue.stats().counters["leader_changes_total"] == 1  # renewed, not retaken
    assert sup.hold_leadership("c1", ttl_s=0.05)  # its last renewal; then c1 dies
    _until(lambda: sup.leader() is None, "the leader lease running out")
    assert sup.hold_leadership("c2", ttl_s=60)
    assert not sup.hold_leadership("c1", ttl_s=60)  # c1 came back: it is the standby now
    assert sup.leader() == "c2"
    assert sup.release_leadership("c2") and sup.leader() is None
    assert sup.queue.stats().counters["leader_changes_total"] == 2


def test_the_health_report_round_trips_and_expires(client: Redis) -> None:
    """The report's TTL is the server's (SET PX): read back under a TTL of a minute, then a
    newer report with a TTL of 50 ms replaces it and runs out, waited for."""
    sup = Supervision(Queue(client))
    key = sup.keys.health
    assert sup.health() is None
    sup.write_health({"ok": True, "nodes": 2}, ttl_s=60)
    report = sup.health()
    assert report is not None and report.pop("written_ms") > 0  # the server's time
    assert report == {"ok": True, "nodes": 2}
    age = sup.health_age_s({"written_ms": sup.queue.now_ms() - 2500})
    assert age is not None and 2.4 < age < 30  # by the queue's clock
    assert sup.health_age_s({"at": 1.0}) is None  # an older coordinator's, unstamped
    assert 30_000 < client.pttl(key) <= 60_000
    sup.write_health({"ok": False}, ttl_s=0.05)
    ttl = client.pttl(key)
    assert ttl == -2 or 0 <= ttl <= 50  # gone already, or about to go
    _until(lambda: sup.health() is None, "the health report running out")


def test_a_new_fleet_never_draws_the_generation_of_a_retired_one(
    queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ended fleet's generation is retired for a day. A new fleet whose random draw starts
    with the same 24 bits (a collision a 6-hex generation made likely over months of fleets)
    must not be born retired: every decoder refused at its first heartbeat, replaced every
    tick, nothing processed."""
    from framefleet.settings import Settings
    from framefleet.workers.actors import Fleet

    sup = Supervision(queue)
    sup.add_fleet("a1b2c3", "coordinator-a")
    sup.end_fleet("a1b2c3", "its coordinator lost the lead")
    with pytest.raises(WorkerRetired):
        sup.heartbeat(worker_name("decoder", "a1b2c3", 0))
    unlucky = uuid.UUID("a1b2c3" + "5e" * 13)  # the same first 24 bits, then others
    monkeypatch.setattr(uuid, "uuid4", lambda: unlucky)
    for generation in (new_generation(), Fleet(Settings(), "redis://unused").generation):
        sup.add_fleet(generation, "coordinator-b")
        sup.heartbeat(worker_name("decoder", generation, 0))  # alive, not retired
        assert generation in sup.fleets()


def test_a_new_leader_that_could_not_read_the_old_fleets_ends_them_at_its_next_tick(
    valkey: EmbeddedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A coordinator that takes the lead ends the fleets of the coordinator before it. When
    Redis refused that one read, the old fleet's leases stayed out until their heartbeats went
    stale: the read is tried again at every tick until it succeeds."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from framefleet.coordinator.supervisor import Coordinator
    from framefleet.queue import connect
    from framefleet.settings import QueueSettings, Settings

    settings = Settings(queue=QueueSettings(name="takeover-retry"))
    old = Supervision(Queue(connect(valkey.url), settings.queue))
    old.add_fleet("f0ld", "coordinator-old")
    old.queue.enqueue(["/v/held.mp4"])
    [lease] = old.queue.claim(1, worker_name("decoder", "f0ld", 0))
    new = Coordinator(settings, valkey.url, name="coordinator-new")
    real, calls = new.supervision.fleets, []

    def flaky() -> dict[str, str]:
        calls.append(1)
        if len(calls) == 1:
            raise RedisConnectionError("Redis did not answer")
        return real()

    monkeypatch.setattr(new.supervision, "fleets", flaky)
    assert new._hold()  # the lead taken, the old fleets not read
    assert old.queue.get(lease.id).state == "leased"  # type: ignore[union-attr]
    assert new._hold()  # the next tick's lease renewal reads them
    new._end_fleets()
    assert old.queue.get(lease.id).state == "queued"  # type: ignore[union-attr]
    assert "f0ld" not in old.fleets() and len(calls) == 2
    new.supervision.release_leadership(new.name)
    new.queue.client.close()
    old.queue.client.close()


def test_a_sweep_that_cannot_judge_charges_no_lapse(queue: Queue, clock: ManualClock) -> None:
    """While its fleet has lost the Ray GCS, the coordinator cannot tell a dead worker from
    a live one. A worker that died holding two videos renewed them at different times: their
    leases run out apart and land in different sweeps, where each, alone, looked like the
    video's fault (a delivery charged: three such outages made a good video poison)."""
    queue.enqueue(["/v/a.mp4", "/v/b.mp4"])
    [a] = queue.claim(1, "w-dead")
    clock.advance(20_000)
    [b] = queue.claim(1, "w-dead")  # b's lease runs out 20 s after a's
    lease_ms = int(queue.settings.lease_s * 1000)
    clock.advance(lease_ms - 20_000 + 1)  # a's has run out, b's has not
    assert queue.sweep(judge=False).requeued == 1
    clock.advance(20_000)
    assert queue.sweep(judge=False).requeued == 1
    for item_id in (a.id, b.id):
        item = queue.get(item_id)
        assert item is not None and item.deliveries == 0 and item.solo, item
    # the control: judged, the first lapse alone is charged to its video
    queue.enqueue(["/v/c.mp4", "/v/d.mp4"])
    [c] = queue.claim(1, "w-dead-2")
    clock.advance(20_000)
    queue.claim(1, "w-dead-2")
    clock.advance(lease_ms - 20_000 + 1)
    assert queue.sweep().requeued == 1
    charged = queue.get(c.id)
    assert charged is not None and charged.deliveries == 1


def test_many_silent_workers_are_swept_in_passes_of_bounded_length(
    make_queue: Callable[..., Queue], clock: ManualClock
) -> None:
    """A node of many actors lost at once: one sweep pass handles `limit` leases at most
    (whole workers), so that no Lua call blocks the server for all of them (bench/simulate.py
    measured 75-97 ms for 1,000); the passes that follow handle the rest, each a suspect's
    (uncharged), and no worker is forgotten before its leases are handled."""
    queue = make_queue(lease_s=120, max_deliveries=3)  # no lease runs out meanwhile
    sup = Supervision(queue)
    queue.enqueue([f"/v/{i}.mp4" for i in range(30)])
    workers = [f"w-{i}" for i in range(10)]
    for w in workers:
        assert len(queue.claim(3, w)) == 3
        sup.heartbeat(w)
    clock.advance(31_000)  # silent for more than 3 x stale_s: also due to be forgotten
    for w in workers[:1]:
        sup.heartbeat(w)  # one still alive
    lease_ms = int(queue.settings.lease_s * 1000)
    ttls = (lease_ms, 10**9, 10**9)
    # one pass, by hand: at most the limit (4) plus a whole worker's other leases (2)
    *counts, more = queue._run("sweep", 4, 3, 10_000, -1, *ttls, "1")
    first = SweepResult(*(int(c) for c in counts))
    assert 0 < first.orphaned_leases <= 6 and int(more) == 1
    assert len(sup.workers()) == 10  # none forgotten while some hold leases still
    rest = queue.sweep(stale_s=10, limit=4)
    assert first.orphaned_leases + rest.orphaned_leases == 27
    assert first.orphaned_workers + rest.orphaned_workers == 9
    assert queue.stats().counts["queued"] == 27
    assert all(x.deliveries == 0 and x.solo for x in queue.items_in("queued"))
    assert set(sup.workers()) == {"w-0"}  # the silent ones forgotten once handled
    assert len(sup.held("w-0")) == 3


def test_workers_are_counted_live_and_stale_without_reading_them_all(
    queue: Queue, clock: ManualClock
) -> None:
    """The health report counts the workers (every worker's age made it 2.2 MB at 20,000)."""
    sup = Supervision(queue)
    for w in ("w-1", "w-2", "w-3"):
        sup.heartbeat(w)
    clock.advance(11_000)
    sup.heartbeat("w-3")
    assert sup.worker_counts(stale_s=10) == {"live": 1, "stale": 2}
    assert sup.worker_counts(stale_s=20) == {"live": 3, "stale": 0}
