"""Every public operation of Queue and Supervision, run down the paths that make each script
touch keys: the check that a kind of server or client (an ACL user limited to ff:*,
WAITAOF, a Redis Cluster) can run the whole queue. Used by tests/integration/
test_redis_urls.py and test_redis_cluster.py."""

from __future__ import annotations

from typing import Any

from framefleet.queue import ChunkWork, Client, NewItem, State, SweepResult, Verdict
from framefleet.queue.supervision import worker_name
from framefleet.settings import QueueSettings
from tests.conftest import ManualClock


class Noted:
    """Passes every attribute through to `obj`, noting each public method used."""

    def __init__(self, obj: object, used: set[str]) -> None:
        self._obj, self._used = obj, used

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._obj, name)
        if callable(value) and not name.startswith("_"):
            self._used.add(f"{type(self._obj).__name__}.{name}")
        return value


def public_methods(*classes: type) -> set[str]:
    """Each class's public methods, its own and those it inherits (Queue's reads are
    QueueReader's), named by the class."""
    return {
        f"{cls.__name__}.{name}"
        for cls in classes
        for base in cls.__mro__[:-1]  # not object's
        for name, value in vars(base).items()
        if callable(value) and not name.startswith("_")
    }


def every_operation(q: Any, sup: Any, plain: Client, clock: ManualClock) -> None:
    """Every public operation of Queue and Supervision (q, sup: Noted), each down the paths
    that make its script touch keys (a sweep that really orphans, forgives, reaps, poisons,
    promotes and trims), on the manual clock; the results are checked loosely, enough to
    know each path ran (the contract suite checks them exactly)."""
    a, b, c = q.enqueue(
        ["/v/a.mp4", NewItem("/v/b.mp4", id="b", etag="e", meta={"k": 1}), "/v/c.mp4"]
    )
    more = q.enqueue([f"/v/more-{i}.mp4" for i in range(8)])  # batch_size 2: overlapped calls
    plain.lpush(q.keys.inbox, '{"uri": "/v/i.mp4", "id": "i", "meta": {"p": "/x"}}', "junk")
    assert q.ingest_inbox().ingested == 1 and len(q.rejected()) == 1
    # claim, renew, progress, ack
    [la] = q.claim(1, "w1")
    [lb, lc] = q.claim(2, "w1", block=0.5)
    assert q.renew(la) and q.progress(la, 0, total=2) and q.chunks(la.id) == {0}
    assert q.checkpoint(la, [(1, ChunkWork(8, 0.1, 0.2, "cpu"))]) and q.chunks(la.id) == {0, 1}
    assert q.ack(la, "s3://out/a") and q.ack_many([(lb, "r"), (la, "s3://out/a")])
    # fail: retryable (delayed), a bug, permanent (dead); release at once and delayed
    assert q.fail(lc, "5xx") and q.get(lc.id).state is State.DELAYED
    [l1, l2, l3] = q.claim(3, "w1")
    assert q.fail(l1, "boom", bug=True) and q.fail(l2, "corrupt", retryable=False, cls="x")
    assert q.release(l3, "preempted")
    [l4] = q.claim(1, "w1")
    assert q.release_for(l4, "bigger than the disk", "too_big", delay_s=1) == (Verdict.OK, None)
    # a blocking claim that waits (paused), resume, cancel
    q.pause()
    assert q.claim(1, "w1", block=0.2) == []
    q.resume()
    assert q.cancel(l1.id) and q.cancel(l4.id)  # delayed ones
    # reap: a lapse charged, then poison (max_deliveries 2); a worker failed whole (suspects)
    q.retry_dead()
    clock.advance(5_000)
    assert q.reap().promoted >= 1
    for _ in range(2):
        [lone] = q.claim(1, "w2")
        clock.advance(11_000)
        q.reap()
    assert q.get(lone.id).state is State.DEAD  # poison
    assert len(q.claim(2, "w3")) == 2
    clock.advance(11_000)
    assert q.reap().requeued == 2  # suspects
    assert q.sweep(limit=1) == SweepResult()  # nothing left to do
    # heartbeats: a silent worker, one marked gone, a sync that gives back, a gap, forgetting
    sup.heartbeat("w4")
    sup.heartbeat("w5")
    assert len(q.claim(1, "w4")) == 1 and len(q.claim(1, "w5")) == 1
    sup.mark_gone("w5")
    clock.advance(6_000)
    swept = sup.sweep(stale_s=5)
    assert (swept.orphaned_workers, swept.orphaned_leases) == (2, 2)
    [held] = q.claim(1, "w6")
    assert sup.held("w6") == {held.id}
    clock.advance(11_000)
    assert sup.heartbeat("w6", holding=[], grace_s=10) == 1  # given back, uncharged
    assert sup.heartbeat("w6", info={"pid": 7}) == 0 and sup.worker_info()["w6"] == {"pid": 7}
    assert sup.workers() and sup.leave("w6") is None and "w6" not in sup.worker_info()
    assert sum(sup.worker_counts(stale_s=5).values()) == len(sup.workers())  # the report's
    [gap] = q.claim(1, "w7")
    sup.sweep(stale_s=5, gap_s=1)
    clock.advance(20_000)
    assert sup.sweep(stale_s=5, gap_s=1).forgiven == 1 and sup.in_grace()
    assert q.renew(gap) and q.ack(gap)
    clock.advance(60_000)
    sup.sweep(stale_s=5)  # the silent ones forgotten (3 x stale_s)
    assert "w4" not in sup.workers()
    # fleets
    gen = "g1"
    sup.add_fleet(gen, "coordinator-1")
    assert sup.fleets() == {gen: "coordinator-1"}
    [lf] = q.claim(1, worker_name("decoder", gen, 0))
    [lg] = q.claim(1, "w8")
    assert sup.release_workers(["w8"], reason="node lost") == 1
    assert sup.release_workers(prefix="nobody-", reason="x") == 0
    assert sup.end_fleet(gen, reason="driver gone") == 1 and sup.fleets() == {}
    # force, retention, dead letters
    assert q.enqueue(["/v/a.mp4"], force=True) == [a]  # done: a new revision
    [lh] = q.claim(1, "w9")
    q.ack(lh)
    clock.advance(120_000)  # past done_ttl_s
    q.reap()
    assert q.get(lh.id) is None  # trimmed
    q.enqueue([NewItem(f"/v/{i}.mp4", id=i, priority=9) for i in ("d1", "d2", "d3")])
    for lease in q.claim(3, "w10"):
        assert q.fail(lease, "corrupt", retryable=False)
    assert {"d1", "d2", "d3"} <= {x.id for x in q.dead()}
    assert {"d1", "d2", "d3"} <= set(q.dead_ids()) and q.dead_classes()
    assert set(q.dead_ids("unknown")) <= set(q.dead_ids())
    q.record({"who": "test", "action": "retry"})
    assert q.audit(1)[0]["action"] == "retry"
    assert q.retry_dead(["d1"]) == ["d1"] and q.purge_dead(["d2"]) == ["d2"]
    assert q.purge_dead() == ["d3"]
    # reading
    assert q.get("d1").state is State.QUEUED and "d1" in {x.id for x in q.items_in("queued")}
    assert "d1" in {x.id for x in q.items(["d1", "nope", b, c, *more])}
    assert q.states(["d1", "nope"]) == ["queued", None]
    page, _ = q.page("queued", limit=1000)
    assert "d1" in {x.id for x in page}
    assert q.now_ms() > 0 and min(q.finished_since(0)) >= 0  # runs as the ACL user
    assert q.metrics().stats.counts["queued"] >= 1
    assert [x.id for x in q.find("d1")] == ["d1"]
    assert q.finished_since_each([0, 0]) == [q.finished_since(0)] * 2
    assert len(q.finished_per_minute(2)) == 3 and "used_memory" in q.server_info()
    memory = q.memory()
    assert memory is not None and memory.used_bytes > 0 and not memory.full
    assert q.stats().counts["queued"] >= 1 and lf.id != lg.id
    # an item's history, the outcomes stream, a consumer group and the webhooks' record
    assert [e["what"] for e in q.events("d1")][-1] == "retried"
    told = q.outcomes(count=1000)
    assert told and q.last_outcome() == told[-1].entry
    q.outcome_group("hooks")
    [lx] = q.claim(1, "w11")
    assert q.ack(lx, "r")
    [heard] = q.read_outcome_group("hooks", "c1", block_s=0.1)
    [pending] = q.pending_outcomes("hooks")
    assert pending.entry == heard.entry
    found, gone = q.claim_outcomes("hooks", "c2", [heard.entry])
    assert [o.entry for o in found] == [heard.entry] and gone == []
    q.webhook_result("hooks", heard.entry, "gave_up", {"id": heard.id, "error": "HTTP 500"})
    assert q.webhook_failures(1)[0]["id"] == heard.id and q.pending_outcomes("hooks") == []
    assert q.ack_outcomes("hooks", [heard.entry]) == 0  # acknowledged already
    # the leader lease and the health report
    assert sup.hold_leadership("c1", ttl_s=60) and sup.hold_leadership("c1", ttl_s=60)
    assert sup.beat("w12", info={"pid": 8}).leader == "c1"  # a heartbeat names the leader
    assert sup.leader() == "c1" and sup.release_leadership("c1")
    sup.write_health({"ok": True}, ttl_s=60)
    report = sup.health()
    assert report is not None and report["ok"] is True
    assert sup.health_age_s(report) is not None


EVERY_OPERATION_SETTINGS = QueueSettings(
    lease_s=10,
    max_attempts=2,
    max_deliveries=2,
    backoff_base_s=1,
    backoff_max_s=2,
    poll_s=0.05,
    batch_size=2,
    done_ttl_s=60,
    dead_ttl_s=60,
)
