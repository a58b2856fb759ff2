"""Every queue transition, against each real server build (valkey 9.1 and redis 6.2)."""

from __future__ import annotations

import time

import pytest
from redis import Redis

from framefleet.queue import InvalidItem, NewItem, Queue, State, Verdict, default_id
from framefleet.settings import QueueSettings
from tests.conftest import ClaimerFactory, ManualClock, QueueFactory, monitored


def _ids(q: Queue, state: str) -> list[str]:
    return [i.id for i in q.items_in(state, limit=1000)]


# -- enqueue -------------------------------------------------------------------------------


def test_enqueue_returns_new_ids_and_is_idempotent(queue: Queue) -> None:
    new = queue.enqueue(["/v/a.mp4", "s3://bucket/b.mp4", NewItem("/v/c.mp4", id="c")])
    assert new == [default_id("/v/a.mp4", "1"), default_id("s3://bucket/b.mp4", "1"), "c"]
    assert queue.enqueue(["/v/a.mp4", NewItem("/v/other.mp4", id="c")]) == []
    assert queue.stats().counts["queued"] == 3
    assert queue.stats().counters["enqueued_total"] == 3


def test_default_id_follows_the_config_version(client: Redis, clock: ManualClock) -> None:
    v1 = Queue(client, QueueSettings(config_version="1"), clock=clock)
    v2 = Queue(client, QueueSettings(config_version="2"), clock=clock)
    [a] = v1.enqueue(["/v/a.mp4"])
    [b] = v2.enqueue(["/v/a.mp4"])
    assert a != b and a == default_id("/v/a.mp4", "1") and b == default_id("/v/a.mp4", "2")


def test_enqueue_in_many_batches_keeps_order_and_duplicates_once(make_queue: QueueFactory) -> None:
    q = make_queue(batch_size=3)
    uris = [f"/v/{i}.mp4" for i in range(20)]
    new = q.enqueue(uris + uris[:5])
    assert new == [default_id(u, "1") for u in uris]
    leases = q.claim(100, "w")
    assert [lease.uri for lease in leases] == uris


def test_enqueue_stores_metadata(queue: Queue) -> None:
    queue.enqueue(
        [
            NewItem(
                "s3://b/k.mp4",
                id="k",
                etag="abc",
                size=52_428_800,
                meta={"customer": "acme", "fps": 2.5},
                priority="high",
            )
        ]
    )
    item = queue.get("k")
    assert item is not None
    assert (item.etag, item.size, item.priority) == ("abc", 52_428_800, 9)
    assert dict(item.meta) == {"customer": "acme", "fps": 2.5}
    [lease] = queue.claim(1, "w")
    assert (lease.etag, lease.size, dict(lease.meta)) == (
        "abc",
        52_428_800,
        {"customer": "acme", "fps": 2.5},
    )


def test_a_bad_item_in_a_batch_writes_nothing(queue: Queue, client: Redis) -> None:
    before = client.dbsize()
    bad = ["/v/ok.mp4", "relative/path.mp4"]
    with pytest.raises(InvalidItem, match="invalid uri"):
        queue.enqueue(bad)
    with pytest.raises(InvalidItem, match="priority"):
        queue.enqueue(["/v/ok.mp4", NewItem("/v/x.mp4", priority=12)])
    assert client.dbsize() == before


def test_an_id_with_a_dot_segment_is_refused_before_anything_is_written(
    queue: Queue, client: Redis
) -> None:
    """Ids go into URL paths, where clients resolve `.` and `..`: the dead letter
    `x/../victim`'s Retry button would retry `victim`. Dots inside a segment are fine."""
    before = client.dbsize()
    for bad in ("x/../victim", "..", "./a", "a/.", "cam/./b", "a/.."):
        with pytest.raises(InvalidItem, match="segment"):
            queue.enqueue(["/v/ok.mp4", NewItem("/v/x.mp4", id=bad)])
        with pytest.raises(InvalidItem, match="segment"):
            queue.cancel(bad)
    assert client.dbsize() == before
    fine = ["a.b", "cam1/2026/clip.mp4", "...", ".hidden/x", "v1..2"]
    assert queue.enqueue([NewItem(f"/v/{i}.mp4", id=i) for i in fine]) == fine


def test_done_item_is_not_requeued_unless_forced(queue: Queue, clock: ManualClock) -> None:
    [item_id] = queue.enqueue(["/v/a.mp4"])
    [lease] = queue.claim(1, "w")
    queue.progress(lease, 0, total=2)
    assert queue.ack(lease, "file:///out/a") == Verdict.OK
    assert queue.enqueue(["/v/a.mp4"]) == []
    assert queue.get(item_id).state is State.DONE  # type: ignore[union-attr]
    assert queue.enqueue(["/v/a.mp4"], force=True) == [item_id]
    item = queue.get(item_id)
    assert item is not None and item.state is State.QUEUED
    assert (item.claims, item.result, item.chunks_done) == (0, None, 0)
    assert _ids(queue, "done") == []


def test_dead_item_is_not_requeued_unless_forced(queue: Queue) -> None:
    [item_id] = queue.enqueue(["/v/a.mp4"])
    [lease] = queue.claim(1, "w")
    queue.fail(lease, "not a video", retryable=False)
    assert queue.enqueue(["/v/a.mp4"]) == []
    assert queue.enqueue(["/v/a.mp4"], force=True) == [item_id]
    assert _ids(queue, "dead") == [] and _ids(queue, "queued") == [item_id]


def test_force_leaves_live_items_alone(queue: Queue) -> None:
    queue.enqueue(["/v/a.mp4"])
    [lease] = queue.claim(1, "w")
    assert queue.enqueue(["/v/a.mp4"], force=True) == []
    assert queue.ack(lease) == Verdict.OK


def test_a_lost_script_cache_is_reloaded(queue: Queue, client: Redis) -> None:
    """After a restart or failover the server may not know the scripts: SCRIPT FLUSH."""
    queue.enqueue(["/v/a.mp4"])
    client.script_flush()
    assert queue.enqueue(["/v/b.mp4", "/v/a.mp4"]) == [default_id("/v/b.mp4", "1")]
    client.script_flush()
    assert len(queue.claim(5, "w")) == 2


# -- claim ---------------------------------------------------------------------------------


def test_claim_highest_priority_first_then_fifo(queue: Queue) -> None:
    queue.enqueue(
        [
            NewItem("/v/l1.mp4", id="l1", priority="low"),
            NewItem("/v/n1.mp4", id="n1"),
            NewItem("/v/h1.mp4", id="h1", priority=9),
            NewItem("/v/n2.mp4", id="n2"),
            NewItem("/v/h2.mp4", id="h2", priority="high"),
            NewItem("/v/p7.mp4", id="p7", priority=7),
        ]
    )
    order = [lease.id for lease in queue.claim(2, "w")] + [
        lease.id for lease in queue.claim(10, "w")
    ]
    assert order == ["h1", "h2", "p7", "n1", "n2", "l1"]


def test_claim_gives_fresh_epochs_and_deadlines(queue: Queue, clock: ManualClock) -> None:
    queue.enqueue(["/v/a.mp4", "/v/b.mp4"])
    leases = queue.claim(5, "worker-1")
    assert len(leases) == 2 and len({lease.epoch for lease in leases}) == 2
    assert all(lease.deadline_ms == clock.now_ms + 30_000 for lease in leases)
    item = queue.get(leases[0].id)
    assert item is not None and (item.state, item.owner, item.epoch) == (
        State.LEASED,
        "worker-1",
        leases[0].epoch,
    )
    queue.release(leases[0])
    [again] = queue.claim(1, "worker-2")
    assert again.id == leases[0].id and again.epoch > max(lease.epoch for lease in leases)
    assert queue.claim(1, "w") == []


def test_nothing_is_handed_out_while_paused(queue: Queue) -> None:
    queue.enqueue(["/v/a.mp4"])
    queue.pause()
    assert queue.stats().paused
    assert queue.claim(1, "w") == []
    queue.resume()
    assert len(queue.claim(1, "w")) == 1


def test_blocked_claim_wakes_on_enqueue(client: Redis, claimers: ClaimerFactory) -> None:
    """A claimer already blocked (seen so on the server) is woken by the enqueue, not by its
    poll (60 s here; its BLPOP waits 30 s): without the wake-up it would still be waiting
    when result() gives up."""
    settings = QueueSettings(poll_s=60)
    claimer = claimers(settings, block=30)
    claimer.wait_blocked()
    t0 = time.monotonic()
    [item_id] = Queue(client, settings).enqueue(["/v/wake.mp4"])
    assert [lease.id for lease in claimer.result(20)] == [item_id]
    assert time.monotonic() - t0 < 20  # far below the 30 s BLPOP: a wake-up, not a poll


def test_blocked_claim_wakes_on_resume(client: Redis, claimers: ClaimerFactory) -> None:
    """A claimer blocked while the queue is paused (seen so on the server) is woken by the
    resume."""
    settings = QueueSettings(poll_s=60)
    q = Queue(client, settings)
    [item_id] = q.enqueue(["/v/a.mp4"])
    q.pause()
    claimer = claimers(settings, block=30)
    claimer.wait_blocked()
    assert claimer.leases == [] and claimer.thread.is_alive()
    q.resume()
    assert [lease.id for lease in claimer.result(20)] == [item_id]


def test_blocked_claim_returns_a_retry_when_it_falls_due(client: Redis) -> None:
    q = Queue(client, QueueSettings(poll_s=60, backoff_base_s=0.2, backoff_max_s=0.2))
    q.enqueue(["/v/a.mp4"])
    [lease] = q.claim(1, "w")
    q.fail(lease, "timeout talking to S3")
    assert q.get(lease.id).state is State.DELAYED  # type: ignore[union-attr]
    [again] = q.claim(1, "w", block=20)
    assert again.id == lease.id and again.attempts == 1


def test_claim_without_block_returns_at_once(queue: Queue) -> None:
    assert queue.claim(3, "w") == []


# -- renew, progress -----------------------------------------------------------------------


def test_renew_extends_the_lease(queue: Queue, clock: ManualClock) -> None:
    queue.enqueue(["/v/a.mp4"])
    [lease] = queue.claim(1, "w")
    clock.advance(20_000)
    assert queue.renew(lease) == Verdict.OK
    clock.advance(20_000)  # 40 s after the claim, 20 s after the renewal
    assert queue.reap().requeued == 0
    assert queue.get(lease.id).lease_until_ms == clock.now_ms + 10_000  # type: ignore[union-attr]


def test_renew_is_refused_once_the_lease_is_lost(queue: Queue, clock: ManualClock) -> None:
    queue.enqueue(["/v/a.mp4"])
    [lease] = queue.claim(1, "w1")
    clock.advance(31_000)
    assert queue.reap().requeued == 1
    assert queue.renew(lease) == Verdict.LOST
    [newer] = queue.claim(1, "w2")
    assert queue.renew(lease) == Verdict.STALE
    assert not queue.renew(lease)
    assert queue.renew(newer) == Verdict.OK
    assert queue.stats().counters["stale_renew_total"] == 3


def test_progress_checkpoints_chunks_and_survives_redelivery(queue: Queue) -> None:
    queue.enqueue(["/v/a.mp4"])
    [lease] = queue.claim(1, "w")
    assert queue.progress(lease, 0, total=5) == Verdict.OK
    assert queue.progress(lease, 3) == Verdict.OK
    assert queue.progress(lease, 3) == Verdict.OK  # idempotent
    item = queue.get(lease.id)
    assert item is not None and (item.chunks_done, item.chunks_total) == (2, 5)
    queue.release(lease, "preempted")
    [again] = queue.claim(1, "w2")
    assert again.chunks_done == frozenset({0, 3}) and again.chunks_total == 5
    assert queue.progress(lease, 4) == Verdict.STALE  # the old holder is fenced off
    assert queue.chunks(lease.id) == {0, 3}


# -- ack -----------------------------------------------------------------------------------


def test_ack_marks_done_with_its_result(queue: Queue) -> None:
    queue.enqueue(["/v/a.mp4"])
    [lease] = queue.claim(1, "w")
    queue.progress(lease, 0, total=1)
    assert queue.ack(lease, "s3://out/a/detections.parquet") == Verdict.OK
    item = queue.get(lease.id)
    assert item is not None and item.state is State.DONE
    assert item.result == "s3://out/a/detections.parquet" and item.owner == "w"
    assert item.lease_until_ms is None
    assert queue.chunks(lease.id) == set()
    assert _ids(queue, "leased") == [] and _ids(queue, "done") == [lease.id]


def test_a_repeated_ack_is_a_duplicate_not_an_error(queue: Queue) -> None:
    queue.enqueue(["/v/a.mp4"])
    [lease] = queue.claim(1, "w")
    assert queue.ack(lease) == Verdict.OK
    assert queue.ack(lease) == Verdict.DUPLICATE and queue.ack(lease)
    assert queue.stats().counters["acked_total"] == 1


def test_a_stale_ack_is_refused_and_counted(queue: Queue, clock: ManualClock) -> None:
    queue.enqueue(["/v/a.mp4"])
    [old] = queue.claim(1, "w1")
    clock.advance(31_000)
    queue.reap()
    assert queue.ack(old) == Verdict.LOST  # reaped, not yet handed out again
    [new] = queue.claim(1, "w2")
    assert queue.ack(old) == Verdict.STALE
    assert queue.ack(new) == Verdict.OK
    assert queue.ack(old) == Verdict.STALE  # still refused after the rightful ack
    counters = queue.stats().counters
    assert counters["stale_ack_total"] == 3 and counters["acked_total"] == 1


def test_ack_many_judges_each_lease(queue: Queue) -> None:
    queue.enqueue(["/v/a.mp4", "/v/b.mp4"])
    a, b = queue.claim(2, "w")
    queue.release(b)
    [b2] = queue.claim(1, "w")
    assert queue.ack_many([(a, "r1"), (b, "r2"), (b2, "r3"), (a, "r1")]) == [
        Verdict.OK,
        Verdict.STALE,
        Verdict.OK,
        Verdict.DUPLICATE,
    ]
    assert queue.get(b.id).result == "r3"  # type: ignore[union-attr]


def test_ack_of_a_purged_item_is_missing(queue: Queue) -> None:
    queue.enqueue(["/v/a.mp4"])
    [lease] = queue.claim(1, "w")
    queue.fail(lease, "corrupt", retryable=False)
    queue.purge_dead([lease.id])
    assert queue.ack(lease) == Verdict.MISSING


# -- fail ----------------------------------------------------------------------------------


def test_retryable_failure_backs_off_exponentially_then_goes_dead(
    queue: Queue, clock: ManualClock
) -> None:
    [item_id] = queue.enqueue(["/v/a.mp4"])
    delays = []
    for attempt in (1, 2):
        [lease] = queue.claim(1, "w")
        assert lease.attempts == attempt - 1
        assert queue.fail(lease, f"timeout {attempt}") == Verdict.OK
        item = queue.get(item_id)
        assert item is not None and item.state is State.DELAYED and item.attempts == attempt
        delay = item.ready_at_ms - clock.now_ms  # type: ignore[operator]
        full = 1000 * 2 ** (attempt - 1)
        assert full / 2 <= delay <= full  # equal jitter: between half and all of the step
        delays.append(delay)
        assert queue.claim(1, "w") == []  # not before its time
        clock.advance(delay)
    [lease] = queue.claim(1, "w")
    queue.fail(lease, "timeout 3")
    item = queue.get(item_id)
    assert item is not None and item.state is State.DEAD and item.attempts == 3
    assert item.dead_reason == "failed 3 times (max_attempts 3): timeout 3"
    assert item.last_error == "timeout 3"


def test_backoff_is_capped(make_queue: QueueFactory, clock: ManualClock) -> None:
    q = make_queue(max_attempts=20, backoff_base_s=1, backoff_max_s=4)
    [item_id] = q.enqueue(["/v/a.mp4"])
    for _ in range(6):
        [lease] = q.claim(1, "w")
        q.fail(lease, "5xx")
        delay = q.get(item_id).ready_at_ms - clock.now_ms  # type: ignore[union-attr, operator]
        assert delay <= 4000
        clock.advance(delay)
    assert delay >= 2000


def test_non_retryable_failure_is_dead_at_once_with_its_reason(queue: Queue) -> None:
    [item_id] = queue.enqueue(["/v/a.mp4"])
    [lease] = queue.claim(1, "w")
    assert queue.fail(lease, "not a video: no video stream", retryable=False) == Verdict.OK
    [dead] = queue.dead()
    assert (
        dead.id == item_id
        and dead.dead_reason == "failed (not retryable): not a video: no video stream"
    )
    assert queue.fail(lease, "again") == Verdict.LOST
    assert queue.stats().counters["stale_fail_total"] == 1


# -- release -------------------------------------------------------------------------------


def test_release_requeues_at_once_without_counting_an_attempt(queue: Queue) -> None:
    queue.enqueue(["/v/a.mp4", "/v/b.mp4", "/v/c.mp4"])
    [a] = queue.claim(1, "w")
    assert queue.release(a, "preempted") == Verdict.OK
    item = queue.get(a.id)
    assert item is not None and item.state is State.QUEUED
    assert (item.attempts, item.deliveries, item.release_reason) == (0, 0, "preempted")
    assert queue.claim(1, "w")[0].id == a.id  # back at its place: the front
    assert queue.release(a) == Verdict.STALE


# -- reap ----------------------------------------------------------------------------------


def test_reap_requeues_expired_leases_and_poisons_repeat_crashers(
    make_queue: QueueFactory, clock: ManualClock
) -> None:
    q = make_queue(lease_s=10, max_deliveries=2)
    [item_id] = q.enqueue(["/v/crasher.mp4"])
    q.enqueue(["/v/fine.mp4"])
    [crash1, fine] = q.claim(2, "w")
    assert crash1.id == item_id
    clock.advance(5_000)
    q.renew(fine)
    clock.advance(6_000)  # crash1 expired while its worker renewed fine: its own fault
    assert q.reap() == q.reap().__class__(requeued=1, poisoned=0, promoted=0)
    assert q.get(item_id).deliveries == 1  # type: ignore[union-attr]
    [crash2] = q.claim(1, "w2")
    assert crash2.deliveries == 1 and crash2.solo  # retried alone from now on
    clock.advance(11_000)
    r = q.reap()
    assert (r.poisoned, r.requeued) == (1, 1)  # crash2 poisoned; fine expired too (alone)
    item = q.get(item_id)
    assert item is not None and item.state is State.DEAD
    assert item.dead_reason == (
        "poison: its lease lapsed 2 times in a row without ack or fail, at 0 chunks done, the"
        " blame its own each time (its worker crashed or stalled holding nothing else, or"
        " renewed its other leases)"
    )
    assert q.stats().counters["poisoned_total"] == 1


def _lease_state(q: Queue, ids: list[str]) -> list[object]:
    """What reaping must leave alone of these leases: each item's hash (state, token, owner,
    lease_until, counts...), its score in `leased` (the deadline) and its place in its
    worker's index."""
    pipe = q.client.pipeline(transaction=False)
    for i in ids:
        pipe.hgetall(q.keys.item(i))
        pipe.zscore(q.keys.state("leased"), i)
        pipe.sismember(q.keys.held("w"), i)
        pipe.exists(q.keys.chunks(i))
    return list(pipe.execute())


def test_reap_touches_only_expired_leases(
    make_queue: QueueFactory, clock: ManualClock, client: Redis
) -> None:
    """Reaping costs O(expired): with 500 live leases and 3 expired, the script writes only
    the 3, reads only the 3 items' hashes, and looks at no more than one SSCAN page of the
    live ones (to see that their worker is alive); every live lease is as it was (MONITOR
    shows every command a Lua script runs)."""
    q = make_queue(lease_s=10)
    q.enqueue([f"/v/old-{i}.mp4" for i in range(3)])
    old = q.claim(3, "w")
    clock.advance(5_000)
    q.enqueue([f"/v/live-{i}.mp4" for i in range(500)])
    live = q.claim(500, "w")
    assert len(live) == 500
    live_ids = [x.id for x in live]
    before = _lease_state(q, live_ids)
    assert all(h["state"] == "leased" for h in before[::4])  # type: ignore[index]
    clock.advance(6_000)
    result, touched = monitored(client, q.reap)
    assert result.requeued == 3
    assert _lease_state(q, live_ids) == before
    assert all(x.state is State.LEASED for x in q.items(live_ids))
    assert all(q.get(x.id).state is State.QUEUED for x in old)  # type: ignore[union-attr]
    item_cmds = [c for c in touched if ":item:" in c]
    assert item_cmds and all(any(f":item:{x.id}" in c for x in old) for c in item_cmds)
    live_set = set(live_ids)
    about_live = [c for c in touched if live_set & set(c.replace('"', " ").split())]
    assert all(c.split()[0].strip('"').upper() == "ZSCORE" for c in about_live), about_live
    assert len(about_live) <= 16, about_live  # one SSCAN page (COUNT 16) at most


def test_reap_in_slices_takes_everything(make_queue: QueueFactory, clock: ManualClock) -> None:
    q = make_queue(lease_s=1)
    q.enqueue([f"/v/{i}.mp4" for i in range(25)])
    q.claim(25, "w")
    clock.advance(2_000)
    assert q.reap(limit=4).requeued == 25
    assert q.stats().counts["queued"] == 25


def test_reap_promotes_due_retries(queue: Queue, clock: ManualClock) -> None:
    queue.enqueue(["/v/a.mp4"])
    [lease] = queue.claim(1, "w")
    queue.fail(lease, "5xx")
    clock.advance(1_000)
    assert queue.reap().promoted == 1
    assert queue.stats().counts["queued"] == 1


# -- cancel, dead letters, stats -------------------------------------------------------------


def test_cancel_queued_and_delayed_items_only(queue: Queue) -> None:
    a, b, c = queue.enqueue(["/v/a.mp4", "/v/b.mp4", "/v/c.mp4"])
    assert queue.cancel(a, "customer deleted it")
    [lb, lc] = queue.claim(2, "w")
    queue.fail(lb, "5xx")
    assert queue.cancel(b)  # delayed
    assert not queue.cancel(c)  # leased
    assert not queue.cancel("no-such-id")
    reasons = {i.id: i.dead_reason for i in queue.dead()}
    assert reasons == {a: "cancelled: customer deleted it", b: "cancelled: by request"}
    assert queue.ack(lc) == Verdict.OK


def test_dead_letters_list_newest_first_retry_and_purge(queue: Queue, clock: ManualClock) -> None:
    ids = queue.enqueue([f"/v/{i}.mp4" for i in range(4)])
    for lease in queue.claim(4, "w"):
        queue.fail(lease, f"corrupt {lease.uri}", retryable=False)
        clock.advance(1)
    assert [i.id for i in queue.dead()] == ids[::-1]
    assert queue.retry_dead([ids[0]]) == [ids[0]]
    item = queue.get(ids[0])
    assert item is not None and item.state is State.QUEUED and item.attempts == 0
    assert item.last_error == "corrupt /v/0.mp4"  # kept as history
    assert sorted(queue.purge_dead(limit=2)) == sorted(ids[1:3])
    assert queue.get(ids[1]) is None
    assert queue.enqueue(["/v/1.mp4"]) == [ids[1]]  # a purged id is new again
    assert queue.retry_dead() == [ids[3]]
    assert queue.stats().counts["dead"] == 0


def test_stats_counts_and_oldest_age(queue: Queue, clock: ManualClock) -> None:
    assert queue.stats().oldest_queued_age_s is None
    queue.enqueue([NewItem("/v/old-low.mp4", priority=0)])
    clock.advance(5_000)
    queue.enqueue(["/v/a.mp4", NewItem("/v/h.mp4", priority=9)])
    clock.advance(2_000)
    stats = queue.stats()
    assert stats.counts["queued"] == 3 and stats.oldest_queued_age_s == 7.0
    [h] = queue.claim(1, "w")
    assert h.uri == "/v/h.mp4"
    assert queue.stats().counts == {
        "queued": 2,
        "delayed": 0,
        "leased": 1,
        "done": 0,
        "dead": 0,
        "inbox": 0,
        "rejected": 0,
    }


def test_every_key_shares_the_queue_hash_tag(
    queue: Queue, client: Redis, clock: ManualClock
) -> None:
    queue.enqueue(["/v/a.mp4", "/v/b.mp4", "/v/c.mp4"])
    a, b, c = queue.claim(3, "w")
    queue.progress(a, 0)
    queue.ack(b)
    queue.fail(c, "x", retryable=False)
    client.lpush(queue.keys.inbox, "garbage")
    queue.ingest_inbox()
    queue.pause()
    keys = list(client.scan_iter("*"))
    assert len(keys) > 8
    assert all(k.startswith("ff:{videos}:") for k in keys), keys


def test_two_queues_do_not_mix(client: Redis, clock: ManualClock) -> None:
    a = Queue(client, QueueSettings(name="a"), clock=clock)
    b = Queue(client, QueueSettings(name="b"), clock=clock)
    a.enqueue(["/v/x.mp4"])
    assert b.claim(1, "w") == [] and len(a.claim(1, "w")) == 1


def test_states_and_items_follow_many_ids_in_batches(make_queue: QueueFactory) -> None:
    q = make_queue(batch_size=2)
    ids = q.enqueue([f"s3://b/v{i}.mp4" for i in range(5)])
    lease = q.claim(1, "w1")[0]
    assert q.ack(lease, "file:///out").ok
    states = q.states([*ids, "no-such-id"])
    assert states.count("queued") == 4 and states.count("done") == 1
    assert states[ids.index(lease.id)] == "done" and states[-1] is None
    assert [item.id for item in q.items([*ids, "no-such-id"])] == ids


def test_a_release_for_the_videos_own_sake_is_counted_and_ends_dead(queue: Queue) -> None:
    """A release whose infrastructure failed because of the video itself (larger than the
    node's temporary space) would repeat on every node for ever: after max_attempts of them
    the item is dead with the class given; plain releases never count, nor does a retry."""
    [item_id] = queue.enqueue(["/v/huge.mp4"])
    bound = queue.settings.max_attempts
    for n in range(1, bound + 1):
        [lease] = queue.claim(1, "w")
        assert queue.release(lease, "preempted")  # uncounted
        [lease] = queue.claim(1, "w")
        verdict, dead = queue.release_for(lease, "bigger than the disk", "too_big")
        assert verdict == Verdict.OK and (dead is None) == (n < bound), (n, dead)
    item = queue.get(item_id)
    assert item is not None and item.state is State.DEAD and item.attempts == 0
    assert item.dead_class == "too_big" and f"released {bound} times" in (item.dead_reason or "")
    assert queue.retry_dead([item_id]) == [item_id]  # fresh counts again
    [lease] = queue.claim(1, "w")
    assert queue.release_for(lease, "bigger than the disk", "too_big")[1] is None
