"""Regression tests of the hardening review (issue 12) at the queue's level, each named after
its finding, against real servers. Each failed on the code before its fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from redis import Redis

from framefleet.queue import (
    EmbeddedServer,
    InvalidItem,
    Queue,
    Verdict,
    connect,
    parse_inbox_entry,
)
from framefleet.settings import QueueSettings
from tests.conftest import SERVER_BUILDS


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
