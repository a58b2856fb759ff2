"""A worker's record of its queue calls (framefleet/chaos/recorder.py), on a real Valkey: each
call's outcome as the queue answered it, a stale lease's refusals included, and a dead item
named; then the checker reads the record back as a run's history."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from framefleet.chaos import checker
from framefleet.chaos.events import Ack, Checkpoint, Claim, Dead, Enqueue, Fail, FinalState, Release
from framefleet.chaos.history import read
from framefleet.chaos.recorder import RecordingQueue, writer
from framefleet.queue import EmbeddedServer, Queue, State, Verdict
from framefleet.queue.model import ChunkWork
from framefleet.settings import QueueSettings
from tests.conftest import ManualClock
from tests.support.deadline import wait_for
from tests.support.servers import Blackhole


def test_each_call_is_recorded_with_the_queues_answer(tmp_path: Path, valkey_client: Redis) -> None:
    clock = ManualClock()
    settings = QueueSettings(name="recorded", lease_s=10)
    plain = Queue(valkey_client, settings, clock=clock)
    history = writer(tmp_path / "history")
    assert history is not None and writer(None) is None
    queue = RecordingQueue.of(plain, history)
    ids = plain.enqueue(["s3://v/a.mp4", "s3://v/b.mp4", "s3://v/c.mp4"])
    for item_id in ids:
        history.write(Enqueue(id=item_id, ok=True))

    leases = {lease.id: lease for lease in queue.claim(3, "decoder-g-1")}
    a, b, c = (leases[i] for i in ids)
    work = ChunkWork(8, 0.1, 0.2, "cpu")
    assert queue.checkpoint(a, [(0, work), (1, work)], total=2)
    assert queue.ack(a, "manifest-a") is Verdict.OK
    assert queue.ack(a, "manifest-a") is Verdict.DUPLICATE  # a retried call
    assert queue.release(b, "shutdown")
    assert queue.fail(c, "not a video", retryable=False, cls="not_a_video")
    (b2,) = queue.claim(1, "decoder-g-2")  # b again: its first lease is stale now
    assert not queue.checkpoint(b, [(0, work)])
    assert queue.ack(b2, "manifest-b") is Verdict.OK
    history.close()

    events = read(tmp_path / "history").events
    claims = [e for e in events if isinstance(e, Claim)]
    assert [(e.id, e.worker) for e in claims] == [
        *((i, "decoder-g-1") for i in sorted(ids, key=[a.id, b.id, c.id].index)),
        (b.id, "decoder-g-2"),
    ]
    assert claims[-1].epoch > claims[1].epoch and claims[-1].token == b2.token
    saves = [(e.id, e.chunks, e.ok) for e in events if isinstance(e, Checkpoint)]
    assert saves == [(a.id, (0, 1), True), (b.id, (0,), False)]
    acks = [(e.id, e.verdict) for e in events if isinstance(e, Ack)]
    assert acks == [(a.id, Verdict.OK), (a.id, Verdict.DUPLICATE), (b.id, Verdict.OK)]
    assert [(e.id, e.verdict) for e in events if isinstance(e, Release)] == [(b.id, Verdict.OK)]
    (fail,) = (e for e in events if isinstance(e, Fail))
    assert (fail.id, fail.retryable, fail.verdict) == (c.id, False, Verdict.OK)
    (dead,) = (e for e in events if isinstance(e, Dead))
    assert (dead.id, dead.cls) == (c.id, "not_a_video")

    # as a run's history, with the final states the harness would observe: valid
    finals = [FinalState(id=i.id, state=State(i.state)) for i in plain.items(ids)]
    report = checker.check([*events, *finals])
    assert report.valid and (report.enqueued, report.finished, report.dead) == (3, 2, 1)
    # and a second ok ack of one id, as a zombie's would be, is caught
    twice = Ack(id=b.id, epoch=b.epoch, verdict=Verdict.OK)
    assert checker.check([*events, *finals, twice]).acked_twice == (b.id,)


def test_an_ack_cut_off_on_its_way_is_recorded_without_a_verdict(
    tmp_path: Path, valkey: EmbeddedServer
) -> None:
    """The soak's false 'lost': an ack sent while the network was cut raised in its worker
    (the socket timed out) and so had no recorded outcome, yet the cut held its bytes and
    passed them on when it healed: Redis applied it, and retention purged the done item.
    Such an ack is recorded with no verdict (it may have succeeded), as an enqueue's ok=None."""
    relay = Blackhole(valkey.port)
    try:
        client = Redis.from_url(relay.url(valkey.url), decode_responses=True, socket_timeout=0.5)
        settings = QueueSettings(name="cut-ack", lease_s=30)
        history = writer(tmp_path / "history")
        assert history is not None
        queue = RecordingQueue.of(Queue(client, settings), history)
        (item_id,) = queue.enqueue(["s3://v/cut.mp4"])
        (lease,) = queue.claim(1, "decoder-cut-1")
        relay.cut()
        with pytest.raises((RedisConnectionError, RedisTimeoutError)):
            queue.ack(lease, "manifest-cut")
        relay.heal()
        history.close()
        direct = Queue(Redis.from_url(valkey.url, decode_responses=True), settings)
        wait_for(lambda: direct.states([item_id]) == ["done"], 10, "the held ack applied")
    finally:
        relay.close()
    (ack,) = (e for e in read(tmp_path / "history").events if isinstance(e, Ack))
    assert (ack.id, ack.epoch, ack.verdict) == (item_id, lease.epoch, None)
