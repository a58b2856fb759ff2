"""An item's history (Queue.events): each claim, release, failure, lost lease with its blame,
give-back, retry and end, told in the script that did it, oldest first and capped; none for
an item done at its first claim; gone with the item. On both server builds."""

from __future__ import annotations

from framefleet.queue import NewItem, Queue, Supervision
from tests.conftest import ManualClock, QueueFactory


def _told(queue: Queue, item_id: str) -> list[tuple[str, str]]:
    return [(e["what"], e.get("detail", "")) for e in queue.events(item_id)]


def test_each_thing_that_happens_to_an_item_is_told_with_why(
    make_queue: QueueFactory, clock: ManualClock
) -> None:
    queue = make_queue(lease_s=10, max_attempts=3, max_deliveries=3, backoff_base_s=1)
    queue.enqueue([NewItem(uri="s3://b/v.mp4", id="v")])
    [lease] = queue.claim(1, "w1")
    assert queue.fail(lease, "read timed out", retryable=True, cls="fetch_failed").ok
    clock.advance(5_000)
    queue.reap()  # due: queued again
    [lease] = queue.claim(1, "w2")
    assert queue.release(lease, "worker stopping (shutdown or preemption)").ok
    [lease] = queue.claim(1, "w3")
    clock.advance(11_000)
    queue.reap()  # its lease ran out, w3 held nothing else: charged
    [lease] = queue.claim(1, "w4")
    clock.advance(1_000)
    Supervision(queue).heartbeat("w4", holding=[], grace_s=0.5)  # it holds nothing: given back
    [lease] = queue.claim(1, "w5")
    assert queue.fail(lease, "moov atom not found", retryable=False, cls="not_a_video").ok
    assert queue.retry_dead(["v"]) == ["v"]
    [lease] = queue.claim(1, "w6")
    assert queue.ack(lease, "s3://out/v/").ok
    told = _told(queue, "v")
    assert [what for what, _ in told] == [
        "claimed", "failed",
        "claimed", "released",
        "claimed", "lease lost",
        "claimed", "given back",
        "claimed", "dead",
        "retried",
        "claimed", "done",
    ]  # fmt: skip
    details = dict(told[i] for i in (1, 3, 5, 7, 9, 12))
    assert details["failed"].startswith("fetch_failed: read timed out (attempts 1 of 3")
    assert details["released"] == "worker stopping (shutdown or preemption) (not charged)"
    assert "its lease ran out, the blame its own (delivery 1 of 3" in details["lease lost"]
    assert "no longer held it (not charged)" in details["given back"]
    assert details["dead"] == "not_a_video: failed (not retryable): moov atom not found"
    assert details["done"] == "by w6"
    assert told[0][1] == "by w1 (claim 1)" and told[11][1] == "by w6 (claim 6)"
    at = [e["at"] for e in queue.events("v")]
    assert at == sorted(at) and at[0] >= clock.now_ms - 30_000
    queue.enqueue([NewItem(uri="s3://b/v.mp4", id="v")], force=True)
    assert _told(queue, "v")[-1] == ("enqueued again", "revision 1 (forced)")


def test_a_silent_workers_lease_is_told_as_a_suspects(
    make_queue: QueueFactory, clock: ManualClock
) -> None:
    queue = make_queue(lease_s=60)
    queue.enqueue([NewItem(uri="s3://b/s.mp4", id="s")])
    supervision = Supervision(queue)
    supervision.heartbeat("w1")
    queue.claim(1, "w1")
    clock.advance(11_000)
    supervision.sweep(stale_s=10)  # w1 silent for the stale time: nobody says why
    what, detail = _told(queue, "s")[-1]
    assert what == "lease lost" and "a suspect, retried alone, not charged" in detail


def test_an_item_done_at_its_first_claim_keeps_no_history_and_the_cap_holds(
    queue: Queue,
) -> None:
    queue.enqueue(
        [NewItem(uri="s3://b/clean.mp4", id="clean"), NewItem(uri="s3://b/n.mp4", id="n")]
    )
    leases = {lease.id: lease for lease in queue.claim(2, "w")}
    assert queue.ack(leases["clean"], "r").ok
    assert queue.events("clean") == []  # nothing to tell: its hash says who and when
    assert queue.client.exists(queue.keys.events("clean")) == 0
    lease = leases["n"]
    for _ in range(15):  # 30 events: the newest 20 kept
        assert queue.release(lease, "again").ok
        [lease] = queue.claim(1, "w")
    told = queue.events("n")
    assert len(told) == 20 and told[-1]["what"] == "claimed"
    assert told[-1]["detail"] == "by w (claim 16)"


def test_the_history_goes_with_the_item(queue: Queue, clock: ManualClock) -> None:
    queue.enqueue([NewItem(uri="s3://b/d.mp4", id="d"), NewItem(uri="s3://b/p.mp4", id="p")])
    for lease in queue.claim(2, "w"):
        assert queue.fail(lease, "no video stream", retryable=False, cls="not_a_video").ok
    assert queue.events("p") and queue.events("d")
    assert queue.purge_dead(["p"]) == ["p"]
    assert queue.client.exists(queue.keys.events("p")) == 0
    clock.advance(int(queue.settings.dead_ttl_s * 1000) + 1)
    queue.reap()  # retention deletes the old dead letter, and its history
    assert queue.get("d") is None and queue.client.exists(queue.keys.events("d")) == 0
