"""The queue through Redis Sentinel (README, "Redis beyond one server"): a primary, a replica
and three sentinels on loopback (tests/support/sentinel.py), the client given the sentinel
URL only. A failover is followed by the client itself (its retry reconnects to the primary
the sentinels name); what asynchronous replication can still lose is measured, and the
fencing tokens keep it harmless: a lost claim's lease is refused, a lost ack's item is done
once more, never an item lost or acked by a lease that is not the current one. Optional
durability (WAIT / WAITAOF after enqueue and ack) is checked against a replica that stops."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from framefleet.queue import Queue, ServerError, Verdict, connect, open_queue
from framefleet.queue.connect import RETRY_S
from framefleet.queue.durable import Durability, NotDurable
from framefleet.settings import QueueSettings, RedisSettings, Settings
from tests.support.failover import LEASE_S, Clock, Tally, costs, drain, work
from tests.support.sentinel import (
    SERVICE,
    DataNode,
    SentinelSet,
    cut_off,
    pause,
    resume,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)

SETTINGS = QueueSettings(lease_s=LEASE_S, max_deliveries=5, poll_s=0.05)


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelSet]:
    with SentinelSet(tmp_path) as s:
        yield s


def _replicated(s: SentinelSet, primary: DataNode) -> None:
    wait_until("the replicas up to date", lambda: s.offsets_equal(primary))


def test_the_queue_works_through_a_sentinel_url(sentinels: SentinelSet) -> None:
    """open_queue with the sentinel URL alone: enqueue, claim, checkpoint, ack, on the
    primary the sentinels name (the checks run there too), replicated to the replica."""
    primary, replica = sentinels.nodes
    with open_queue(Settings(redis=RedisSettings(url=sentinels.url()))) as q:
        [a] = q.enqueue(["s3://bucket/a.mp4"])
        [lease] = q.claim(1, "w")
        assert lease.id == a and q.progress(lease, 0, total=1) and q.ack(lease, "s3://out/a")
        assert q.client.info("server")["tcp_port"] == primary.port
        _replicated(sentinels, primary)
    with replica.admin() as r:
        assert r.hget(q.keys.item(a), "state") == "done"


def test_wrong_service_sentinel_password_or_a_replica_are_said_clearly(
    sentinels: SentinelSet,
) -> None:
    replica = sentinels.nodes[1]
    with pytest.raises(RedisConnectionError, match="No master found for 'nope'"):
        connect(sentinels.url().replace(f"/{SERVICE}/", "/nope/"))
    wrong = sentinels.url().replace(sentinels.sentinel_password, "wrong")
    with pytest.raises(RedisConnectionError, match="No master found"):
        connect(wrong)
    with pytest.raises(ServerError, match="is a replica, which refuses writes"):
        connect(replica.url)


def test_a_lost_claim_is_refused_and_a_lost_ack_costs_one_item_done_again(
    sentinels: SentinelSet,
) -> None:
    """Deterministically: the replica cut off (stopped, its link closed), an ack and a claim
    made on the primary only, the primary killed -9, the replica promoted without them. The
    client follows by itself; the lost claim's lease is refused (STALE) and its item handed
    out again with a new token; the lost ack's item is still leased on the new primary,
    comes back when that lease runs out, and is done a second time."""
    clock = Clock()
    primary, replica = sentinels.nodes
    q = Queue(connect(sentinels.url()), SETTINGS, clock=clock)
    try:
        a, b = q.enqueue(["/v/a.mp4", "/v/b.mp4"])
        [la] = q.claim(1, "w")
        assert la.id == a and q.progress(la, 0, total=1)
        _replicated(sentinels, primary)
        cut_off(primary, replica)
        try:
            assert q.ack(la, "s3://out/a") is Verdict.OK  # told done; never replicated
            [lb] = q.claim(1, "w")  # never replicated either
            primary.kill()
        finally:
            resume(replica)
        assert sentinels.wait_failover(primary.port) is replica
        assert q.progress(lb, 0, total=1) is Verdict.STALE  # the lost claim: refused
        assert q.ack(lb, "s3://out/b") is Verdict.STALE
        assert q.states([a]) == ["leased"]  # the lost ack
        [lb2] = q.claim(1, "w")
        assert lb2.id == b and lb2.token != lb.token and q.ack(lb2, "s3://out/b")
        assert q.claim(1, "w") == []
        clock.past_every_lease()
        assert q.reap().requeued == 1
        [la2] = q.claim(1, "w")
        assert la2.id == a and la2.token != la.token
        assert q.ack(la2, "s3://out/a") is Verdict.OK  # a, done a second time
        stats = q.stats()
        assert stats.counts["done"] == 2 and stats.counters["acked_total"] == 2
        assert stats.counters["stale_ack_total"] == 1
    finally:
        q.client.close()


N = 400


def test_a_kill_9_of_the_primary_mid_run_costs_at_most_the_acks_not_yet_replicated(
    sentinels: SentinelSet,
) -> None:
    """A worker loop (claim, checkpoint, ack) over N items through the sentinel URL; the
    primary killed -9 from another thread a quarter of the way, at whatever point its
    commands are. The client follows the failover by itself within its retry window; the
    run ends with every item done, once in the surviving history. What it cost (acks lost,
    items done twice, claims lost and refused, the time to follow) is printed."""
    clock = Clock()
    primary = sentinels.nodes[0]
    q = Queue(connect(sentinels.url()), SETTINGS, clock=clock)
    try:
        ids = q.enqueue([f"/v/{i}.mp4" for i in range(N)])
        _replicated(sentinels, primary)  # nothing enqueued may be lost
        tally = Tally(halfway_at=N // 4)
        killed: list[float] = []

        def kill() -> None:
            if tally.halfway.wait(60):
                primary.kill()
                killed.append(time.monotonic())

        killer = threading.Thread(target=kill, daemon=True)
        killer.start()
        work(q, tally)
        killer.join(10)
        assert killed, "the run ended before the kill"
        sentinels.wait_failover(primary.port)
        drain(q, clock, tally)
        lost, twice = costs(q, ids, tally)
        follow_s = min(t for t in tally.answered if t > killed[0]) - killed[0]
        assert follow_s < RETRY_S
        print(
            f"\nkill -9: {lost} acks lost, {twice} items"
            f" done twice, {tally.refused[Verdict.STALE]} lost claims refused, followed in"
            f" {follow_s:.2f} s (longest turn {tally.longest_s:.2f} s)"
        )
        assert lost == twice
    finally:
        q.client.close()


@pytest.mark.parametrize("mode", ["coordinated", "plain", "plain, min replicas 1"])
def test_a_planned_failover_is_followed(sentinels: SentinelSet, mode: str) -> None:
    """SENTINEL FAILOVER mymaster mid-run. COORDINATED (Valkey: the primary pauses writes
    until the replica has them all, then the two swap roles) loses nothing: every item is
    done exactly once, and the client follows at its next write (READONLY). Plain: the
    replica is promoted while the old primary, alive, stays a primary until the sentinels
    see it and make it a replica, seconds later; a client connected to it goes on writing
    there meanwhile, and all of that is lost when it resyncs: measured as above. With
    min_replicas 1, each ack there says NotDurable (that primary has no replica left), is
    made again until the client has followed, and none is lost."""
    clock = Clock()
    primary = sentinels.nodes[0]
    durable = Durability(replicas=1, timeout_s=0.5) if "min replicas" in mode else None
    client = connect(sentinels.url(), durability=durable)
    q = Queue(client, SETTINGS, clock=clock, durability=durable)
    try:
        ids = q.enqueue([f"/v/{i}.mp4" for i in range(N)])
        _replicated(sentinels, primary)
        tally = Tally(halfway_at=N // 4)
        asked: list[float] = []

        def fail_over() -> None:
            if tally.halfway.wait(60):
                with sentinels.sentinels[0].client() as s:
                    extra = ["COORDINATED"] if mode == "coordinated" else []
                    s.execute_command("SENTINEL", "FAILOVER", SERVICE, *extra)
                asked.append(time.monotonic())

        thread = threading.Thread(target=fail_over, daemon=True)
        thread.start()
        work(q, tally)
        thread.join(10)
        assert asked, "the run ended before the failover"
        new = sentinels.wait_failover(primary.port)
        wait_until("the old primary made a replica", lambda: primary.role() == "slave", 40)
        split_s = time.monotonic() - asked[0]
        drain(q, clock, tally)
        lost, twice = costs(q, ids, tally)
        # reads may have gone on on the old primary (now a replica of the new one); the
        # first write there (an enqueue: on one connection, not retried by redis-py) follows
        assert len(q.enqueue(["/v/after.mp4"])) == 1
        assert q.client.info("server")["tcp_port"] == new.port
        print(
            f"\nSENTINEL FAILOVER ({mode}): {lost} acks lost, {twice} items done twice,"
            f" {tally.refused[Verdict.STALE]} lost claims refused, {tally.not_durable} acks"
            f" not durable (made again), longest turn {tally.longest_s:.2f} s; the old"
            f" primary a replica {split_s:.1f} s after the request"
        )
        assert lost == twice
        if mode != "plain":
            assert (lost, twice) == (0, 0)
        if mode == "coordinated":
            assert not tally.refused and not tally.not_durable
    finally:
        q.client.close()


# -- durability: WAIT / WAITAOF ---------------------------------------------------------------


@pytest.mark.parametrize("aof", [False, True], ids=["wait", "waitaof"])
def test_enqueue_and_ack_wait_for_the_replica_and_say_when_it_does_not_confirm(
    tmp_path: Path, aof: bool
) -> None:
    """min_replicas 1 (and WAITAOF): with the replica up, enqueue and ack return once it has
    their writes; with it stopped, they raise NotDurable after the timeout, the write made
    on the primary (the error carries the ids, the verdicts); once it is back, the same ack
    again (DUPLICATE) returns: the replica has it."""
    timeout_s = 0.5
    durable = Durability(replicas=1, aof=aof, timeout_s=timeout_s)
    with SentinelSet(tmp_path, sentinels=0) as nodes:
        primary, replica = nodes.nodes
        q = Queue(connect(primary.url, durability=durable), SETTINGS, durability=durable)
        try:
            [a] = q.enqueue(["/v/a.mp4"])
            [la] = q.claim(1, "w")
            assert q.ack(la, "s3://out/a") is Verdict.OK
            with replica.admin() as r:  # no wait: a confirmed write is on the replica
                assert r.hget(q.keys.item(a), "state") == "done"
            pause(replica)
            try:
                started = time.monotonic()
                with pytest.raises(NotDurable, match="0 of the 1 replicas") as enq:
                    q.enqueue(["/v/b.mp4"])
                assert timeout_s <= time.monotonic() - started < timeout_s + 2
                [b] = enq.value.result
                assert q.states([b]) == ["queued"]  # written on the primary
                [lb] = q.claim(1, "w")
                with pytest.raises(NotDurable, match="ack was written on the primary") as ack:
                    q.ack(lb, "s3://out/b")
                assert ack.value.result == [Verdict.OK] and q.states([b]) == ["done"]
                assert isinstance(ack.value, RedisConnectionError)  # waited out like one
            finally:
                resume(replica)
            assert q.ack(lb, "s3://out/b") is Verdict.DUPLICATE  # confirmed this time
            with replica.admin() as r:
                assert r.hget(q.keys.item(b), "state") == "done"
        finally:
            q.client.close()
