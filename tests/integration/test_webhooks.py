"""Webhooks (framefleet/ops/webhooks.py) to a real HTTP receiver on loopback: signed,
at least once with one idempotency key, retried when the receiver fails and recovers,
given up after their attempts, never to a private address unless allowed, an item's own
URL before the queue's, and an outcome held by a consumer that died delivered by another."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from framefleet.ops.webhooks import GROUP, SIGNATURE, Notifier, verify
from framefleet.queue import NewItem, Queue
from framefleet.settings import WebhookSettings
from tests.support.deadline import left
from tests.support.webhooks import Receiver

KEY = b"k" * 32


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver().start()
    yield started
    started.stop()


def settings(url: str | None, **changes: Any) -> WebhookSettings:
    base: dict[str, Any] = {
        "url": url,
        "secret": KEY.decode(),
        "allow_private": "127.0.0.1/32",
        "retry_s": 0.05,
        "attempts": 4,
        "timeout_s": 5.0,
    }
    return WebhookSettings(**{**base, **changes})


def until(notifier: Notifier, done: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """Steps the notifier (each waiting up to 50 ms for an outcome) until done()."""
    end = time.monotonic() + left(timeout)
    while not done():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        notifier.step(block_s=0.05)


def finish(queue: Queue, *ids: str, dead: tuple[str, ...] = ()) -> None:
    """The items enqueued and ended: done, or dead for those in `dead`."""
    queue.enqueue([NewItem(uri=f"s3://b/{i}.mp4", id=i, meta={"n": n}) for n, i in enumerate(ids)])
    for lease in queue.claim(len(ids), "w"):
        if lease.id in dead:
            assert queue.fail(lease, "moov atom not found", retryable=False, cls="not_a_video")
        else:
            assert queue.ack(lease, f"s3://out/{lease.id}/").ok


def test_each_outcome_is_posted_once_signed_with_its_idempotency_key(
    queue: Queue, receiver: Receiver
) -> None:
    notifier = Notifier(queue, settings(receiver.url()), KEY, "c1")
    notifier.step(block_s=0.01)  # the group: it hears of the ends from now on
    finish(queue, "a", "b", dead=("b",))
    until(notifier, lambda: len(receiver.calls) >= 2, "two POSTs")
    notifier.step(block_s=0.01)
    assert len(receiver.calls) == 2  # once each
    bodies = {c.json()["id"]: c for c in receiver.calls}
    a, b = bodies["a"], bodies["b"]
    assert (a.json()["state"], a.json()["result"], a.json()["meta"]) == (
        "done",
        "s3://out/a/",
        {"n": 0},
    )
    assert (b.json()["state"], b.json()["class"]) == ("dead", "not_a_video")
    assert a.json()["queue"] == queue.settings.name and a.path == "/hook"
    for call in receiver.calls:
        assert verify(KEY, call.headers[SIGNATURE], call.body, time.time())
        assert not verify(b"x" * 32, call.headers[SIGNATURE], call.body, time.time())
        assert not verify(KEY, call.headers[SIGNATURE], call.body + b" ", time.time())
        assert not verify(KEY, call.headers[SIGNATURE], call.body, time.time() + 3600)  # old
        assert call.headers["Idempotency-Key"] == f"{queue.settings.name}:{call.json()['entry']}"
        assert call.headers["X-Framefleet-Attempt"] == "1"
    assert queue.stats().counters.get("webhooks_sent_total") == 2
    assert queue.pending_outcomes(GROUP) == []


def test_a_receiver_that_fails_then_recovers_gets_it_with_the_same_key(
    queue: Queue, receiver: Receiver
) -> None:
    receiver.answers = [503, 500]
    notifier = Notifier(queue, settings(receiver.url()), KEY, "c1")
    notifier.step(block_s=0.01)
    finish(queue, "a")
    until(notifier, lambda: len(receiver.calls) >= 3, "the third attempt")
    assert [c.headers["X-Framefleet-Attempt"] for c in receiver.calls] == ["1", "2", "3"]
    assert len({c.headers["Idempotency-Key"] for c in receiver.calls}) == 1
    assert len({c.body for c in receiver.calls}) == 1
    assert queue.pending_outcomes(GROUP) == []  # delivered: acknowledged
    failures = queue.webhook_failures()
    assert [(f["attempt"], f["gave_up"]) for f in failures] == [(2, False), (1, False)]
    assert "HTTP 500" in failures[0]["error"] and failures[0]["url"] == receiver.url()
    counters = queue.stats().counters
    assert (counters.get("webhooks_sent_total"), counters.get("webhook_failures_total")) == (1, 2)


def test_a_receiver_that_keeps_failing_is_given_up_after_its_attempts(
    queue: Queue, receiver: Receiver
) -> None:
    receiver.answers = [500] * 10
    notifier = Notifier(queue, settings(receiver.url(), attempts=3), KEY, "c1")
    notifier.step(block_s=0.01)
    finish(queue, "a")
    until(notifier, lambda: queue.stats().counters.get("webhooks_given_up_total") == 1, "given up")
    assert len(receiver.calls) == 3
    assert queue.webhook_failures()[0]["gave_up"] is True
    assert queue.pending_outcomes(GROUP) == []
    notifier.step(block_s=0.2)
    assert len(receiver.calls) == 3  # not tried again


def test_a_private_address_is_refused_unless_allowed(queue: Queue, receiver: Receiver) -> None:
    notifier = Notifier(queue, settings(receiver.url(), allow_private=""), KEY, "c1")
    notifier.step(block_s=0.01)
    finish(queue, "a")
    until(notifier, lambda: bool(queue.webhook_failures()), "the refusal")
    [failure] = queue.webhook_failures()
    assert failure["gave_up"] is True and "private, loopback" in failure["error"]
    assert receiver.calls == []


def test_an_items_own_url_comes_first_and_one_without_a_url_is_passed_over(
    queue: Queue, receiver: Receiver
) -> None:
    notifier = Notifier(queue, settings(None), KEY, "c1")
    notifier.step(block_s=0.01)
    queue.enqueue(
        [
            NewItem(uri="s3://b/own.mp4", id="own", meta={"webhook": receiver.url("/own")}),
            NewItem(uri="s3://b/none.mp4", id="none"),
        ]
    )
    for lease in queue.claim(2, "w"):
        assert queue.ack(lease, "r").ok
    until(notifier, lambda: queue.pending_outcomes(GROUP) == [] and bool(receiver.calls), "both")
    assert [(c.path, c.json()["id"]) for c in receiver.calls] == [("/own", "own")]


def test_an_outcome_held_by_a_consumer_that_died_is_delivered_by_another(
    queue: Queue, receiver: Receiver
) -> None:
    first = Notifier(queue, settings(receiver.url()), KEY, "c1")
    first.step(block_s=0.01)
    finish(queue, "a")
    [held] = queue.read_outcome_group(GROUP, "c1")  # c1 read it, then died before the POST
    assert [p.entry for p in queue.pending_outcomes(GROUP)] == [held.entry]
    second = Notifier(queue, settings(receiver.url()), KEY, "c2")
    until(second, lambda: bool(receiver.calls), "the POST by the other consumer")
    assert receiver.calls[0].json()["entry"] == held.entry
    assert receiver.calls[0].headers["X-Framefleet-Attempt"] == "2"
    assert queue.pending_outcomes(GROUP) == []
