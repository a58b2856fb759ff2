"""Regression tests of the hardening review (issue 12) at the queue's level, each named after
its finding, against real servers. Each failed on the code before its fix."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from redis.exceptions import RedisError

from framefleet.queue import (
    EmbeddedServer,
    InvalidItem,
    Lease,
    Queue,
    QueueFull,
    ServerError,
    Supervision,
    SweepResult,
    Verdict,
    WorkerRetired,
    connect,
    parse_inbox_entry,
)
from framefleet.queue.model import REJECTED_CAP
from framefleet.settings import CoordinatorSettings, QueueSettings, Settings
from framefleet.workers.actors import Heartbeat
from tests.conftest import SERVER_BUILDS, ManualClock, QueueFactory, monitored
from tests.support.deadline import wait_for


@pytest.mark.parametrize("build", list(SERVER_BUILDS))
def test_f1_fencing_holds_after_the_server_loses_its_last_writes(
    tmp_path: Path, build: str
) -> None:
    """An RDB-only server: SAVE, claim as A (not saved), kill -9, restart from the RDB,
    claim as B. The server handed the same item out twice; every call of A is refused."""
    rdb_only = ("--appendonly", "no", "--save", "")
    server = EmbeddedServer(tmp_path, binary=SERVER_BUILDS[build](), extra_args=rdb_only).start()
    settings = QueueSettings(lease_s=60)
    a_client = connect(server.url)
    q = Queue(a_client, settings)
    [item_id] = q.enqueue(["/v/a.mp4"])
    a_client.save()
    [a] = q.claim(1, "worker-a")
    server.kill()
    again = EmbeddedServer(
        tmp_path, binary=SERVER_BUILDS[build](), port=server.port, extra_args=rdb_only
    ).start()
    try:
        qb = Queue(connect(again.url), settings)
        assert qb.get(item_id).state == "queued"  # type: ignore[union-attr]  # the claim was lost
        [b] = qb.claim(1, "worker-b")
        assert b.id == a.id
        qa = Queue(connect(again.url), settings)  # A reconnects to the restarted server
        assert not qa.renew(a)
        assert not qa.progress(a, 0, total=2)
        assert qa.ack(a, "file:///out/a") not in (Verdict.OK, Verdict.DUPLICATE)
        assert not qa.release(a)
        assert not qa.fail(a, "boom")
        assert qb.progress(b, 0, total=1) and qb.ack(b, "file:///out/b") == Verdict.OK
        assert qb.stats().counters.get("acked_total") == 1
    finally:
        again.stop()


def test_f2_non_finite_numbers_in_the_inbox_are_rejected_and_lose_nothing(
    queue: Queue, client: Redis
) -> None:
    """Python's json.dumps writes NaN and Infinity by default; Lua's cjson reads them but
    cannot write them back. Each such entry is rejected with its reason, the entries around
    it are ingested, the counters are written, and a claim that ingests never raises."""
    bad = [
        json.dumps({"uri": "/v/nan.mp4", "meta": {"fps": float("nan")}}),
        json.dumps({"uri": "/v/inf.mp4", "meta": {"fps": float("inf")}}),
        json.dumps({"uri": "/v/minf.mp4", "meta": {"x": -float("inf")}}),
        '{"uri": "/v/size.mp4", "size": Infinity}',
        '{"uri": "/v/pri.mp4", "priority": NaN}',
    ]
    good = [json.dumps({"uri": f"/v/good-{i}.mp4"}) for i in range(3)]
    entries = [good[0], *bad[:2], good[1], *bad[2:], good[2]]
    for entry in entries:  # oldest first
        client.lpush(queue.keys.inbox, entry)
    leases = queue.claim(10, "w")  # the queue is empty: the claim ingests the inbox
    assert sorted(lease.uri for lease in leases) == [f"/v/good-{i}.mp4" for i in range(3)]
    rejected = queue.rejected()
    assert len(rejected) == len(bad) and client.llen(queue.keys.inbox) == 0
    assert {r["raw"] for r in rejected} == set(bad)
    assert all(r["reason"] for r in rejected)
    counters = queue.stats().counters
    assert (counters["inbox_ingested_total"], counters["inbox_rejected_total"]) == (3, len(bad))
    for entry in bad:
        with pytest.raises(InvalidItem):
            parse_inbox_entry(entry.encode())


# -- finding 3: a delivery is charged only where the evidence points --------------------------


def _crash(sup: Supervision, clock: ManualClock, *workers: str, stale_s: float = 10) -> None:
    """The workers' processes die and Ray says so (the pools mark them gone); a sweep later
    their leases are back in the queue."""
    for worker in workers:
        sup.heartbeat(worker)
        sup.mark_gone(worker)
    clock.advance(1)
    sup.sweep(stale_s=stale_s)


def test_f3_a_crash_of_a_worker_holding_several_videos_charges_none_of_them(
    queue: Queue, clock: ManualClock
) -> None:
    sup = Supervision(queue)
    ids = queue.enqueue([f"/v/{i}.mp4" for i in range(3)])
    assert len(queue.claim(3, "decoder-a")) == 3
    _crash(sup, clock, "decoder-a")
    for item in queue.items(ids):
        assert (item.state, item.deliveries) == ("queued", 0)


def test_f3_a_video_that_crashed_its_worker_is_retried_alone(
    queue: Queue, clock: ManualClock
) -> None:
    """After the shared crash each suspect video is handed out as the only item of a claim,
    and its worker gets nothing more while it holds it. A worker busy with other videos
    passes over the suspects (an idle one takes them) for a lease time, then takes one too
    (and finishes its others before starting it: the lease says solo)."""
    sup = Supervision(queue)
    queue.enqueue(["/v/x.mp4"])
    [x] = queue.claim(1, "decoder-busy")
    suspects = queue.enqueue(["/v/s0.mp4", "/v/s1.mp4"])
    assert len(queue.claim(2, "decoder-a")) == 2
    _crash(sup, clock, "decoder-a")
    healthy = queue.enqueue(["/v/h0.mp4", "/v/h1.mp4"])
    got = queue.claim(2, "decoder-busy")
    assert [lease.id for lease in got] == healthy and not any(lease.solo for lease in got)
    [alone] = queue.claim(3, "decoder-idle")
    assert alone.id == suspects[0] and alone.solo
    assert queue.claim(3, "decoder-idle") == []  # holds a suspect: nothing else
    clock.advance(30_000)  # a lease time since they became suspects
    [late] = queue.claim(3, "decoder-busy")
    assert late.id == suspects[1] and late.solo
    assert queue.claim(1, "decoder-busy") == []
    assert x.id not in suspects


def test_f3_a_poison_video_is_dead_after_crashing_alone_and_its_neighbours_are_not_charged(
    queue: Queue, clock: ManualClock
) -> None:
    sup = Supervision(queue)
    poison, *neighbours = queue.enqueue([f"/v/{i}.mp4" for i in range(3)])
    queue.claim(3, "decoder-0")
    _crash(sup, clock, "decoder-0")  # shared: nobody charged, all three suspects
    for n in range(1, 4):
        [lease] = queue.claim(1, f"decoder-{n}")
        assert lease.id == poison and lease.solo
        _crash(sup, clock, f"decoder-{n}")  # alone: charged
    item = queue.get(poison)
    assert item is not None and item.state == "dead" and "poison" in (item.dead_reason or "")
    assert item.deliveries == 3
    for lease in queue.claim(5, "decoder-9") + queue.claim(5, "decoder-8"):
        assert lease.id in neighbours and lease.deliveries == 0


def test_f3_a_long_video_making_progress_between_crashes_is_never_poison(
    queue: Queue, clock: ManualClock
) -> None:
    """Ten crashes of its worker, each after another chunk: never at the same place."""
    sup = Supervision(queue)
    [item_id] = queue.enqueue(["/v/long.mp4"])
    for n in range(10):
        [lease] = queue.claim(1, f"decoder-{n}")
        assert queue.progress(lease, n, total=100)
        _crash(sup, clock, f"decoder-{n}")
    item = queue.get(item_id)
    assert item is not None and item.state == "queued" and item.deliveries == 1


def test_f3_a_lease_its_live_worker_stopped_renewing_is_charged_to_that_video(
    queue: Queue, clock: ManualClock
) -> None:
    """The worker renews its other leases but not this one: the evidence points at it."""
    stuck_id, fine_id = queue.enqueue(["/v/stuck.mp4", "/v/fine.mp4"])
    _, fine = queue.claim(2, "decoder-a")
    clock.advance(20_000)
    assert queue.renew(fine)
    clock.advance(11_000)  # stuck's lease (30 s) ran out
    assert queue.reap().requeued == 1
    assert queue.get(stuck_id).deliveries == 1  # type: ignore[union-attr]
    assert queue.get(fine_id).state == "leased"  # type: ignore[union-attr]


def test_f3_a_worker_merely_silent_charges_nothing_but_a_video_that_silences_each_is_poison(
    queue: Queue, clock: ManualClock
) -> None:
    """Its heartbeat stopped and nobody says why (its node lost without Ray noticing yet, a
    partition): the video it held alone comes back as a suspect, uncharged. But when the
    worker that took that suspect, alone, goes silent too, the evidence points at the video
    (it freezes its worker): charged each time, it ends as poison at max_deliveries instead
    of costing a worker for ever (it was a suspect again and again)."""
    sup = Supervision(queue)
    [item_id] = queue.enqueue(["/v/a.mp4"])
    max_deliveries = queue.settings.max_deliveries
    for n in range(max_deliveries + 1):
        [lease] = queue.claim(1, f"decoder-{n}")
        sup.heartbeat(f"decoder-{n}")
        clock.advance(10_001)
        result = sup.sweep(stale_s=10)
        assert result.orphaned_leases == 1
        item = queue.get(item_id)
        assert item is not None and item.deliveries == n, (n, item)
        if n == 0:
            assert (item.state, item.solo) == ("queued", True)  # a suspect, uncharged
    dead = queue.get(item_id)
    assert dead is not None and dead.state == "dead" and dead.dead_class == "poison", dead
    assert result.poisoned == 1 and dead.interrupted == max_deliveries + 1
    del lease


def test_f3_fleet_wide_events_release_leases_without_a_delivery(
    queue: Queue, clock: ManualClock
) -> None:
    """A driver gone (every worker of its generation) or a node lost (the workers on it):
    their leases come back at once, uncharged, whatever the workers held."""
    sup = Supervision(queue)
    ids = queue.enqueue([f"/v/{i}.mp4" for i in range(4)])
    queue.claim(1, "decoder-g0-1")  # not part of any event
    for r in range(1, 4):  # a new driver (generation g<r>) each time, and a node lost
        for worker in (f"decoder-g{r}-0", f"decoder-g{r}-1", f"decoder-g0-{r + 1}"):
            [lease] = queue.claim(1, worker)
            assert lease.deliveries == 0 and not lease.solo
        assert sup.release_workers(prefix=f"decoder-g{r}-", reason="the Ray driver exited") == 2
        assert sup.release_workers([f"decoder-g0-{r + 1}"], reason="its node was lost") == 1
        assert queue.stats().counts["queued"] == 3
    items = queue.items(ids)
    assert all(item.deliveries == 0 and not item.solo for item in items)
    assert sum(item.state == "leased" and item.owner == "decoder-g0-1" for item in items) == 1
    assert {i.release_reason for i in items if i.state == "queued"} == {
        "the Ray driver exited",
        "its node was lost",
    }


def test_a_worker_of_an_ended_fleet_that_still_runs_leases_nothing_more(
    queue: Queue, clock: ManualClock
) -> None:
    """After a lost head the driver gives up (gcs_grace_s) while the worker node's raylet may
    keep its actors running for up to gcs_rpc_server_reconnect_timeout_s (60 s by default).
    The fleet's end releases their leases; a decode actor of that fleet that claims again must
    get nothing: its lease would die with it unrenewed, and the reap would charge the video
    for the fleet's fault (seen in CI: a delivery after a head crash). The same for a worker
    of a lost node. A day later the names are forgotten."""
    sup = Supervision(queue)
    queue.enqueue([f"/v/{i}.mp4" for i in range(4)])
    for worker in ("decoder-g1-0", "decoder-g2-0", "w-node-lost"):
        queue.claim(1, worker)
        sup.heartbeat(worker)
    assert sup.end_fleet("g1", reason="its Ray driver exited (code 3)") == 1
    assert sup.release_workers(["w-node-lost"], reason="its node was lost") == 1
    before = queue.stats().counts
    for worker in ("decoder-g1-0", "decoder-g1-7", "w-node-lost"):  # named, or of the fleet
        with pytest.raises(WorkerRetired, match=worker):
            queue.claim(2, worker)
        with pytest.raises(WorkerRetired, match=worker):
            sup.heartbeat(worker, holding=[])
    assert queue.stats().counts == before  # nothing leased, nothing given back
    assert set(sup.workers()) == {"decoder-g2-0"}  # the refused beats wrote nothing
    assert len(queue.claim(2, "decoder-g3-0")) == 2  # a new fleet
    assert len(queue.claim(1, "decoder-g2-0")) == 1  # a worker of another fleet goes on
    clock.advance(86_400_001)
    sup.release_workers(["someone-else"], reason="x")  # drops the retirements over a day old
    sup.heartbeat("decoder-g1-0")
    assert "decoder-g1-0" in sup.workers()


def test_a_retired_decode_actor_heartbeat_stops_it(client: Redis) -> None:
    """The heartbeat thread of an actor whose fleet has ended tells it to stop."""
    settings = Settings(coordinator=CoordinatorSettings(stale_s=0.4, tick_s=0.1, leader_ttl_s=0.2))
    queue = Queue(client, settings.queue)
    stopped = threading.Event()
    beat = Heartbeat(queue, "decoder-g9-0", settings, holding=list, retired=stopped.set)
    try:
        assert not stopped.wait(0.3)
        Supervision(queue).end_fleet("g9", reason="its Ray driver exited")
        assert stopped.wait(5), "the heartbeat did not stop the retired actor"
        assert "decoder-g9-0" not in Supervision(queue).workers()
    finally:
        beat.closed.set()


def test_dead_letters_are_indexed_by_class_through_every_exit(queue: Queue) -> None:
    """Groups and bulk actions read the class index the scripts keep (O(that class)): it
    follows deaths, retries, purges and forced re-enqueues, and one missing (dead letters
    from before the index: an upgrade) is rebuilt when first read."""
    ids = queue.enqueue([f"/v/{i}.mp4" for i in range(5)])
    for lease, cls in zip(queue.claim(5, "w"), ["corrupt"] * 3 + ["not_found"] * 2, strict=True):
        assert queue.fail(lease, "x", retryable=False, cls=cls)
    assert queue.dead_classes() == {"corrupt": 3, "not_found": 2}
    corrupt = queue.dead_ids("corrupt")
    assert len(corrupt) == 3 and set(corrupt) <= set(ids)
    assert queue.retry_dead(corrupt[:1]) == corrupt[:1]
    assert queue.purge_dead(corrupt[1:2]) == corrupt[1:2]
    nf = queue.dead_ids("not_found")
    assert queue.enqueue([queue.get(nf[0]).uri], force=True) == [nf[0]]  # type: ignore[union-attr]
    assert queue.dead_classes() == {"corrupt": 1, "not_found": 1}
    assert queue.dead_ids("corrupt") == corrupt[2:] and queue.dead_ids("gone") == []
    keys = queue.keys
    queue.client.delete(keys.dead_classes, keys.dead_class("corrupt"), keys.dead_class("not_found"))
    assert queue.dead_classes() == {"corrupt": 1, "not_found": 1}  # rebuilt
    assert queue.dead_ids("not_found") == nf[1:]


def test_f11_an_inbox_entry_is_claimable_within_poll_s_under_a_backlog(client: Redis) -> None:
    """Claimers ingest the inbox every poll_s even while the queue has items, so an urgent
    entry pushed by a plain client overtakes the backlog at most poll_s later."""
    q = Queue(client, QueueSettings(poll_s=0.2))
    q.enqueue([f"/v/backlog-{i}.mp4" for i in range(50)])
    assert q.claim(1, "w")  # the claimer is busy with the backlog
    client.lpush(q.keys.inbox, json.dumps({"uri": "/v/urgent.mp4", "priority": "high"}))
    time.sleep(0.25)
    [lease] = q.claim(1, "w")
    assert lease.uri == "/v/urgent.mp4"


# -- finding 12: Redis does not grow without bound ---------------------------------------------


def test_f12_done_and_dead_items_are_trimmed_after_their_retention(
    make_queue: QueueFactory, clock: ManualClock
) -> None:
    """Done items are kept done_ttl_s, dead ones dead_ttl_s, then deleted, a bounded batch
    per sweep. A trimmed id is new again: enqueueing it queues it (the worker then finds the
    output manifest and acks it without work)."""
    q = make_queue(done_ttl_s=100, dead_ttl_s=200)
    done_ids = q.enqueue([f"/v/done-{i}.mp4" for i in range(5)])
    for lease in q.claim(5, "w"):
        assert q.progress(lease, 0, total=1) and q.ack(lease, "file:///out")
    [dead_id] = q.enqueue(["/v/dead.mp4"])
    [lease] = q.claim(1, "w")
    assert q.fail(lease, "not a video", retryable=False)
    clock.advance(100_001)
    assert q.sweep(limit=2) is not None  # loops over expired leases, not over the trim
    assert q.stats().counts["done"] == 3  # one batch of 2 this time
    q.sweep(limit=2)
    q.sweep(limit=2)
    counts = q.stats().counts
    assert (counts["done"], counts["dead"]) == (0, 1)
    assert not any(q.client.exists(q.keys.item(i), q.keys.chunks(i)) for i in done_ids)
    assert q.stats().counters["trimmed_total"] == 5
    clock.advance(100_000)
    q.sweep()
    assert q.get(dead_id) is None and q.stats().counts["dead"] == 0
    assert q.enqueue([f"/v/done-{i}.mp4" for i in range(5)]) == done_ids  # new again


def test_f12_rejected_inbox_entries_are_capped_in_number_and_size(
    queue: Queue, client: Redis
) -> None:
    for i in range(REJECTED_CAP + 50):
        client.lpush(queue.keys.inbox, f"not json {i}")
    client.lpush(queue.keys.inbox, "x" * 60_000)
    while queue.ingest_inbox().remaining:
        pass
    assert client.llen(queue.keys.rejected) == REJECTED_CAP
    newest = queue.rejected(1)[0]
    assert newest["raw_bytes"] == 60_000 and len(newest["raw_hex"]) == 2 * 1024
    assert queue.stats().counters["inbox_rejected_total"] == REJECTED_CAP + 51
    assert (client.memory_usage(queue.keys.rejected) or 0) < REJECTED_CAP * 5 * 1024


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-ttl", "allkeys-random"])
def test_f12_a_server_that_evicts_keys_is_refused(tmp_path: Path, policy: str) -> None:
    extra = ("--maxmemory", "1gb", "--maxmemory-policy", policy)
    with (
        EmbeddedServer(tmp_path, extra_args=extra) as server,
        pytest.raises(ServerError, match=f"maxmemory-policy is {policy}.*noeviction"),
    ):
        connect(server.url)


def test_f12_a_workers_leases_are_found_through_its_index(
    make_queue: QueueFactory, clock: ManualClock, client: Redis
) -> None:
    """A stale worker's leases expire in O(its leases): with 500 live leases of another
    worker, the sweep touches none of their items."""
    q = make_queue(lease_s=60)
    sup = Supervision(q)
    q.enqueue([f"/v/live-{i}.mp4" for i in range(500)])
    live = q.claim(500, "w-live")
    q.enqueue(["/v/gone.mp4"])
    [gone] = q.claim(1, "w-gone")
    sup.heartbeat("w-gone")
    clock.advance(11_000)
    sup.heartbeat("w-live")
    result, touched = monitored(client, lambda: sup.sweep(stale_s=10))
    assert (result.orphaned_leases, result.requeued) == (1, 1)
    live_ids = {lease.id for lease in live}
    assert not [c for c in touched if any(i in c for i in live_ids)]
    assert any(gone.id in c for c in touched)


# -- finding 14: a jump of the server's clock -------------------------------------------------


def test_f14_a_forward_jump_of_the_clock_expires_nothing_and_charges_nothing(
    queue: Queue, clock: ManualClock
) -> None:
    """The coordinator sweeps every tick. The server's clock jumps forward by more than a
    lease: every deadline has passed at once, but the sweep sees the gap since the last one
    and gives the leases a new lease time instead of reaping them; heartbeats are not held
    against their workers until they have had time to beat again."""
    sup = Supervision(queue)
    queue.enqueue([f"/v/{i}.mp4" for i in range(3)])
    leases = queue.claim(3, "decoder-a")
    sup.heartbeat("decoder-a")
    for _ in range(3):
        clock.advance(2_000)
        sup.heartbeat("decoder-a")
        assert sup.sweep(stale_s=10, gap_s=6) == SweepResult()
    clock.advance(31_000)  # the jump: past every lease deadline and the stale time
    result = sup.sweep(stale_s=10, gap_s=6)
    assert (result.forgiven, result.requeued, result.orphaned_leases) == (3, 0, 0)
    assert all(queue.renew(lease) for lease in leases)  # the worker carries on
    clock.advance(2_000)
    assert sup.sweep(stale_s=10, gap_s=6) == SweepResult()  # within the grace: no orphans
    items = queue.items([lease.id for lease in leases])
    assert all(i.state == "leased" and i.deliveries == 0 for i in items)
    orphaned = 0
    for _ in range(6):  # a worker that really died is still found, a stale time later
        clock.advance(2_000)
        orphaned += sup.sweep(stale_s=10, gap_s=6).orphaned_leases
    assert orphaned == 3


def test_f5_leases_a_worker_lost_track_of_come_back_through_its_heartbeat(
    queue: Queue, clock: ManualClock
) -> None:
    """A claim whose reply was lost, or an ack the server lost (kill -9 with everysec): the
    queue has the worker holding a lease it does not know of. Its heartbeat says what it
    holds; the others (claimed more than the grace ago) go back at once, uncharged."""
    sup = Supervision(queue)
    queue.enqueue([f"/v/{i}.mp4" for i in range(3)])
    known, lost = queue.claim(1, "decoder-a"), queue.claim(2, "decoder-a")
    assert sup.heartbeat("decoder-a", holding=[known[0].id], grace_s=10) == 0  # too recent
    clock.advance(11_000)
    assert sup.heartbeat("decoder-a", holding=[known[0].id], grace_s=10) == 2
    for lease in lost:
        item = queue.get(lease.id)
        assert item is not None and (item.state, item.deliveries) == ("queued", 0)
        assert not queue.renew(lease)
    assert queue.renew(known[0]) and sup.held("decoder-a") == {known[0].id}


def test_f5_a_claim_retried_after_a_lost_reply_gets_the_same_items(queue: Queue) -> None:
    """redis-py sends a command again when the connection broke before its reply: the claim
    script sees the same nonce from the same worker and answers what that call leased."""
    queue.enqueue([f"/v/{i}.mp4" for i in range(4)])
    first = queue._run("claim", 2, "decoder-a", 30_000, "cafe0123")
    again = queue._run("claim", 2, "decoder-a", 30_000, "cafe0123")

    def ids(reply: list[Any]) -> list[str]:
        return sorted(reply[4][i] for i in range(0, len(reply[4]), 16))

    def rows(reply: list[Any]) -> list[list[str]]:  # every value, the token included
        flat = [str(v) for v in reply[4]]
        return sorted(flat[i : i + 16] for i in range(0, len(flat), 16))

    assert ids(first) == ids(again) and len(ids(first)) == 2
    assert rows(first) == rows(again)  # the same leases, not only the same ids
    assert queue.stats().counts["leased"] == 2
    assert len(queue.claim(5, "decoder-a")) == 2  # a new call: the two others


# -- issue 21, finding 8: a full Redis recovers by itself -------------------------------------


def _fill_inbox(client: Redis, q: Queue, headroom: int) -> int:
    """Plain clients push to the inbox until LPUSH is refused, maxmemory set `headroom` bytes
    above what the server used; then the limit goes a little below what it uses, so that
    every call finds the server over it (at rest it sits just under: the refused command's
    own buffers are gone). Returns the entries pushed."""
    client.config_set("maxmemory", _used(client) + headroom)
    pushed = 0
    with pytest.raises(RedisError, match="maxmemory"):
        while True:
            batch = [json.dumps({"uri": f"/v/inbox-{pushed + i}.mp4"}) for i in range(100)]
            client.lpush(q.keys.inbox, *batch)
            pushed += 100
    client.config_set("maxmemory", _used(client) - 32 * 1024)
    return pushed


def _used(client: Redis) -> int:
    return int(client.info("memory")["used_memory"])


@pytest.mark.parametrize("build", list(SERVER_BUILDS))
def test_a_full_redis_refuses_new_work_finishes_what_is_out_and_recovers_by_itself(
    tmp_path: Path, build: str
) -> None:
    """Under noeviction a full server refuses what may grow memory. Scripts that would grow
    it (ingest, enqueue, claim) are refused whole with QueueFull: no inbox entry popped and
    lost, nothing half written. What is out carries on at the limit (heartbeats, renewals,
    the leader lease and its health report, acks), and what frees memory works there: the
    sweep with its retention, purges. Once retention has freed memory, everything proceeds,
    with nobody's help. On Redis 6.2 as on Valkey (no script flags: 6.2 has none)."""
    server = EmbeddedServer(tmp_path, binary=SERVER_BUILDS[build]()).start()
    try:
        clock = ManualClock()
        client = connect(server.url)
        assert isinstance(client, Redis)  # one server's URL
        q = Queue(client, QueueSettings(lease_s=60, done_ttl_s=3600), clock=clock)
        other = Queue(client, QueueSettings(name="other"), clock=clock)  # same server
        sup = Supervision(q)
        for b in range(10):
            q.enqueue([f"/v/done-{b}-{i}.mp4" for i in range(1000)])
            assert all(q.ack_many([(lease, "file:///o") for lease in q.claim(1000, "w")]))
        [dead_id] = q.enqueue(["/v/dead.mp4"])
        [lease] = q.claim(1, "decoder-a-0")
        q.fail(lease, "not a video", retryable=False)
        [held_id] = q.enqueue(["/v/in-flight.mp4"])
        [held] = q.claim(1, "decoder-a-0")
        other.enqueue(["/v/other.mp4"])
        assert sup.hold_leadership("coordinator-1", 30)
        sup.sweep(10, gap_s=5)
        pushed = _fill_inbox(client, q, headroom=128 * 1024)
        full = q.memory()
        assert full is not None and full.full and full.used_bytes > full.max_bytes

        # what grows memory is refused whole, with a type callers can back off on
        counts = q.stats().counts
        with pytest.raises(QueueFull):
            q.ingest_inbox()
        with pytest.raises(QueueFull):
            q.enqueue(["/v/new.mp4"])
        with pytest.raises(QueueFull):
            q.claim(1, "decoder-a-1")
        with pytest.raises(QueueFull):
            other.claim(1, "decoder-b-0")  # an empty inbox: claim.lua's own refusal
        assert q.stats().counts == counts and client.llen(q.keys.inbox) == pushed
        assert other.stats().counts["queued"] == 1 and q.get(held_id).state == "leased"  # type: ignore[union-attr]

        # what is out carries on at the limit, and what frees memory works there
        assert sup.heartbeat("decoder-a-0", holding=[held_id]) == 0
        assert q.renew(held)
        client.delete(q.keys.leader)  # the lease ran out: the coordinator takes it again
        assert sup.hold_leadership("coordinator-1", 30)
        sup.write_health({"ok": True, "at": time.time(), "leader": "coordinator-1"}, ttl_s=30)
        assert sup.sweep(10, gap_s=5) == SweepResult()  # nothing due yet, but it runs
        client.script_flush()  # a restarted server: the scripts load again at the limit
        assert q.ack(held, "file:///o/held") == Verdict.OK
        assert q.purge_dead([dead_id]) == [dead_id]

        # retention: the done items' time is up. The coordinator sweeps each tick (a batch
        # of retention each), the claimers ingest each poll: the inbox drains as memory is
        # freed, and the ticks go on until the server is back under its limit, by itself,
        # and not one entry is lost. (Ingesting grows memory too: the server can be full
        # again the tick the inbox empties, so the loop ends on both conditions, not the
        # first; the bound is far above the ticks that 10,000 done items take.)
        clock.advance(3_600_001)
        ingested = 0
        memory = q.memory()
        for _ in range(2_000):
            sup.sweep(10, gap_s=5)
            try:
                while (result := q.ingest_inbox()).remaining:
                    ingested += result.ingested
                ingested += result.ingested
            except QueueFull:  # full again: the next tick frees more
                continue
            memory = q.memory()
            if client.llen(q.keys.inbox) == 0 and memory is not None and not memory.full:
                break
        assert ingested == pushed and client.llen(q.keys.inbox) == 0
        assert q.stats().counters["trimmed_total"] >= 1000
        assert memory is not None and not memory.full
        # new work proceeds, once the next ticks have freed room for it (a retention batch
        # a sweep pass: the server may be just under its limit when the inbox empties)
        new: list[str] = []
        claimed: list[Lease] = []
        for _ in range(100):
            try:
                new = new or q.enqueue(["/v/new.mp4"])
                if claimed := q.claim(1, "decoder-a-1"):
                    break
            except QueueFull:
                sup.sweep(10, gap_s=5)
        assert len(new) == 1 and len(claimed) == 1
        assert len(other.claim(1, "decoder-b-0")) == 1
    finally:
        server.stop()


# -- issue 21, finding 15: a clock that ran ahead and was stepped back -------------------------


def test_a_clock_stepped_back_leaves_no_silent_worker_alive_for_the_time_it_ran_ahead(
    queue: Queue, clock: ManualClock
) -> None:
    """The server's clock runs an hour ahead for a while, then NTP steps it back. The
    heartbeats, renewals and the gap's grace written meanwhile lie an hour ahead; the sweep
    brings them back to the most they can be (heartbeats to now, lease deadlines to now +
    lease_s, the grace to now + stale_s), so a worker that went silent after the correction
    is found within the stale time, not an hour later, and a live one carries on."""
    sup = Supervision(queue)  # lease_s 30
    silent_id, live_id = queue.enqueue(["/v/silent.mp4", "/v/live.mp4"])
    sup.heartbeat("decoder-a-0")
    sup.heartbeat("decoder-b-0")
    [silent] = queue.claim(1, "decoder-a-0")
    [live] = queue.claim(1, "decoder-b-0")
    assert (silent.id, live.id) == (silent_id, live_id)
    sup.sweep(10, gap_s=5)
    clock.advance(3_600_000)  # the clock jumps an hour ahead: the gap forgives, as designed
    assert sup.sweep(10, gap_s=5).forgiven == 2
    for _ in range(5):  # both workers live on: they beat and renew
        clock.advance(2_000)
        for worker, lease in (("decoder-a-0", silent), ("decoder-b-0", live)):
            sup.heartbeat(worker, holding=[lease.id])
            assert queue.renew(lease)
        sup.sweep(10, gap_s=5)
    clock.advance(-3_600_000)  # NTP steps it back; decoder-a goes silent from now on
    waited = 0
    while queue.get(silent_id).state == "leased" and waited < 600_000:  # type: ignore[union-attr]
        clock.advance(2_000)
        waited += 2_000
        sup.heartbeat("decoder-b-0", holding=[live_id])
        assert queue.renew(live)
        sup.sweep(10, gap_s=5)
    assert waited <= 2 * 10_000 + 2_000  # the stale time (after the grace), not an hour
    item = queue.get(silent_id)
    assert item is not None and (item.state, item.deliveries) == ("queued", 0)  # uncharged
    assert silent_id not in sup.held("decoder-a-0") and queue.renew(live)
    kept = queue.get(live_id)
    assert kept is not None and kept.state == "leased"
    assert sup.workers()["decoder-b-0"] < 3 and queue.stats().counters["clock_clamped_total"] > 0


def test_a_heartbeat_sends_its_info_once_and_learns_the_leader_without_a_call(
    client: Redis,
) -> None:
    """At 20,000 workers the leader read after each heartbeat was a third of the calls
    (bench/simulate.py): the beat's reply carries it. The worker's info goes with the first
    beat only, and again only once the queue has lost it (forgotten, a restart)."""
    settings = Settings(coordinator=CoordinatorSettings(stale_s=0.4, tick_s=0.1, leader_ttl_s=5))
    queue = Queue(client, settings.queue)
    sup = Supervision(queue)
    first = sup.beat("w-1", info={"pid": 7})
    assert first.info_known and first.leader is None
    assert sup.worker_info()["w-1"]["pid"] == 7
    assert sup.hold_leadership("coordinator-a", 5)
    assert sup.beat("w-1") == type(first)(0, "coordinator-a", True)
    client.hdel(queue.keys.worker_info, "w-1")  # lost
    assert not sup.beat("w-1").info_known

    deposed: list[str] = []

    def run() -> None:
        beat = Heartbeat(
            queue, "decoder-g8-0", settings, leader="coordinator-b", deposed=deposed.append
        )
        try:
            wait_for(lambda: bool(deposed), 10, "the leader named", every=0.02)
            assert deposed == ["coordinator-a"]  # told by the beats' replies alone
            client.hdel(queue.keys.worker_info, "decoder-g8-0")
            wait_for(lambda: "decoder-g8-0" in sup.worker_info(), 10, "the info again", every=0.02)
            beats = [client.zscore(queue.keys.workers, "decoder-g8-0")]

            def two_more() -> bool:  # beats after it (each writes its time)
                now = client.zscore(queue.keys.workers, "decoder-g8-0")
                if now != beats[-1]:
                    beats.append(now)
                return len(beats) >= 3

            wait_for(two_more, 10, "two more beats", every=0.02)
        finally:
            beat.closed.set()

    _, commands = monitored(client, run)
    beats = [c for c in commands if c.upper().startswith("EVALSHA") and "decoder-g8-0" in c]
    assert len(beats) >= 4
    assert len([c for c in beats if "pid" in c]) == 2, beats  # the first, then after the loss
    reads = [c for c in commands if c.upper().startswith("GET") and c.endswith(":leader")]
    assert len(reads) == len(beats), commands  # each the heartbeat script's own, no call
