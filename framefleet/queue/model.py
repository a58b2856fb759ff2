"""What goes in and comes out of the queue, and the rules for bad input.

Every check runs before anything is written: a batch with one bad item raises
`InvalidItem` and writes nothing. `parse_inbox_entry` applies the same rules as
lua/ingest.lua to a raw inbox entry (a test holds the two to the same verdicts).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from types import MappingProxyType
from typing import Any, NamedTuple

from redis.exceptions import OutOfMemoryError

MAX_URI_BYTES = 1024
MAX_ID_BYTES = 200
MAX_ETAG_BYTES = 256
MAX_META_BYTES = 512
MAX_ENTRY_BYTES = 4096
REJECTED_CAP = 1000  # rejected inbox entries kept (lua/ingest.lua), newest first
DEFAULT_PRIORITY = 5
PRIORITY_NAMES = {"low": 0, "normal": 5, "high": 9}
_INBOX_FIELDS = frozenset({"uri", "id", "priority", "etag", "size", "meta"})
_URI_RE = re.compile(r"\A(?:s3://[^/]+/.|https?://[^/]|file:///.|/.)", re.DOTALL)
_URI_HELP = "s3://bucket/key, http(s)://host/path, file:///path or an absolute path"
# The common case in one regex: a short ASCII uri with no control character and a known form.
_FAST_URI_RE = re.compile(
    r"\A(?=[^\x00-\x1f\x7f]*\Z)(?:s3://[^/]+/.|https?://[^/]|file:///.|/.)", re.DOTALL
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f]")


class QueueError(Exception):
    """Base class of the queue's errors."""


class InvalidItem(QueueError, ValueError):
    """An item was refused before anything was written."""


class QueueFull(QueueError, OutOfMemoryError):
    """The Redis server is over its maxmemory (noeviction) and refused a call that may grow
    memory (enqueue, ingest, claim): refused whole, nothing written. Back off: the sweep's
    retention frees memory at the limit, and then the same call goes through. A RedisError
    too, so that callers that wait out a Redis that does not answer wait this out as well."""


class WorkerRetired(QueueError):
    """A fleet-wide event ended this worker (its fleet's driver exited, its node was lost):
    its leases went back to the queue, and it gets no lease nor heartbeat again. It may still
    run (a raylet that has not given up on a dead head yet): it must stop."""


class State(StrEnum):
    QUEUED = "queued"
    DELAYED = "delayed"
    LEASED = "leased"
    DONE = "done"
    DEAD = "dead"


class Verdict(StrEnum):
    """The answer to a fenced operation (renew, progress, ack, fail, release)."""

    OK = "ok"
    DUPLICATE = "duplicate"  # the same lease already acked: a retried call, accepted
    STALE = "stale"  # a newer lease was handed out: refused
    LOST = "lost"  # the lease expired and was reaped, or already ended: refused
    MISSING = "missing"  # no such item (purged): refused

    @property
    def ok(self) -> bool:
        return self in (Verdict.OK, Verdict.DUPLICATE)

    def __bool__(self) -> bool:
        return self.ok


def default_id(uri: str, config_version: str) -> str:
    """The id an item gets when the caller gives none: the same uri under the same
    pipeline configuration is the same work."""
    return hashlib.sha1(f"{config_version}\n{uri}".encode()).hexdigest()[:24]


def _text(value: object, name: str, max_bytes: int, *, no_space: bool) -> str:
    if not isinstance(value, str):
        raise InvalidItem(f"{name} must be a string, not {type(value).__name__}")
    if not value:
        raise InvalidItem(f"{name} is empty")
    if len(value) * 4 > max_bytes or not value.isascii():  # cheap checks for the common case
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidItem(f"{name} is not valid UTF-8") from None
        if size > max_bytes:
            raise InvalidItem(f"{name} is longer than {max_bytes} bytes")
    if (_CONTROL_OR_SPACE if no_space else _CONTROL).search(value):
        what = "a control character or space" if no_space else "a control character"
        raise InvalidItem(f"{name} contains {what}: {value!r}")
    return value


def check_uri(uri: object) -> str:
    text = _text(uri, "uri", MAX_URI_BYTES, no_space=False)
    if not _URI_RE.match(text):
        raise InvalidItem(f"invalid uri {text!r}: expected {_URI_HELP}")
    return text


def check_id(item_id: object) -> str:
    """An id: 1..200 bytes of UTF-8, no space or control character, and no `.` or `..`
    segment between slashes. Ids go into URL paths (the API's, the dashboard's links and
    forms), where a client resolves dot segments: `x/../victim` would reach `victim`."""
    text = _text(item_id, "id", MAX_ID_BYTES, no_space=True)
    if "." in text and any(seg in (".", "..") for seg in text.split("/")):
        raise InvalidItem(f"id {text!r} has a '.' or '..' segment: URLs would resolve it")
    return text


def check_worker(worker: object) -> str:
    return _text(worker, "worker name", MAX_ID_BYTES, no_space=True)


def check_priority(priority: object) -> int:
    if isinstance(priority, str) and priority in PRIORITY_NAMES:
        return PRIORITY_NAMES[priority]
    ok_int = isinstance(priority, int) and not isinstance(priority, bool)
    ok_float = isinstance(priority, float) and math.isfinite(priority) and priority.is_integer()
    if (ok_int or ok_float) and 0 <= priority <= 9:  # type: ignore[operator]
        return int(priority)  # type: ignore[call-overload, no-any-return]
    raise InvalidItem(f"unknown priority {priority!r}: use an integer 0..9 or low|normal|high")


def _check_size(size: object) -> int:
    ok_int = isinstance(size, int) and not isinstance(size, bool)
    ok_float = isinstance(size, float) and math.isfinite(size) and size.is_integer()
    if (ok_int or ok_float) and 0 <= size < 2**53:  # type: ignore[operator]
        return int(size)  # type: ignore[call-overload, no-any-return]
    raise InvalidItem(f"size must be an integer >= 0, not {size!r}")


def _check_meta(meta: object) -> str:
    """Metadata as compact JSON ('' for none): a flat object of scalars."""
    if meta in ({}, []):  # JSON cannot tell an empty list from an empty object in Lua
        return ""
    if not isinstance(meta, Mapping):
        raise InvalidItem("meta must be a JSON object")
    for key, value in meta.items():
        if not isinstance(key, str):
            raise InvalidItem("meta keys must be strings")
        if not (value is None or isinstance(value, str | int | float | bool)):
            raise InvalidItem("meta values must be strings, numbers, booleans or null")
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidItem("meta numbers must be finite")
    try:
        encoded = json.dumps(meta, separators=(",", ":"), ensure_ascii=False)
        raw = encoded.encode("utf-8")
    except (UnicodeEncodeError, ValueError):
        raise InvalidItem("meta is not valid UTF-8 JSON") from None
    if len(raw) > MAX_META_BYTES:
        raise InvalidItem(f"meta is longer than {MAX_META_BYTES} bytes as JSON")
    return encoded


@dataclass(frozen=True, slots=True)
class NewItem:
    """One video to process, by reference. Validated on construction."""

    uri: str
    id: str | None = None
    priority: int | str = DEFAULT_PRIORITY
    etag: str | None = None
    size: int | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    # meta as JSON, encoded once as it is checked (script_args sends this very text)
    meta_json: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_uri(self.uri)
        if self.id is not None:
            check_id(self.id)
        object.__setattr__(self, "priority", check_priority(self.priority))
        if self.etag is not None:
            _text(self.etag, "etag", MAX_ETAG_BYTES, no_space=False)
        if self.size is not None:
            _check_size(self.size)
        if self.meta:
            object.__setattr__(self, "meta_json", _check_meta(self.meta))

    def resolved_id(self, config_version: str) -> str:
        return self.id if self.id is not None else default_id(self.uri, config_version)

    def script_args(self, config_version: str) -> list[str]:
        """The six enqueue.lua arguments of this item."""
        return [
            self.resolved_id(config_version),
            self.uri,
            str(self.priority),
            self.etag or "",
            "" if self.size is None else str(self.size),
            self.meta_json,
        ]


def uri_script_args(uri: str, config_version: str) -> list[str]:
    """enqueue.lua's arguments for a bare uri with every default: NewItem(uri), faster."""
    fast = isinstance(uri, str) and len(uri) <= 256 and uri.isascii() and _FAST_URI_RE.match(uri)
    if not fast:
        check_uri(uri)
    return [default_id(uri, config_version), uri, "5", "", "", ""]


def parse_inbox_entry(raw: bytes) -> NewItem:
    """An inbox entry as lua/ingest.lua reads it; raises InvalidItem with the reason."""
    if len(raw) > MAX_ENTRY_BYTES:
        raise InvalidItem(f"entry is longer than {MAX_ENTRY_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidItem("entry is not valid UTF-8") from None
    try:
        entry = json.loads(text)
    except ValueError:
        raise InvalidItem("entry is not valid JSON") from None
    if not isinstance(entry, dict):
        raise InvalidItem("entry must be a JSON object")
    unknown = sorted(set(entry) - _INBOX_FIELDS)
    if unknown:
        raise InvalidItem(f"unknown field {unknown[0]}")
    if entry.get("uri") is None:
        raise InvalidItem("uri is required")
    present = {k: v for k, v in entry.items() if v is not None}
    present.setdefault("priority", DEFAULT_PRIORITY)
    meta = present.pop("meta", {})
    return NewItem(meta=meta if isinstance(meta, Mapping) else _meta_refused(meta), **present)


def _meta_refused(meta: object) -> Mapping[str, Any]:
    if meta == []:
        return {}
    raise InvalidItem("meta must be a JSON object")


class Lease(NamedTuple):
    """A claimed item. `token` is the fencing token every later call is checked against,
    with `worker`: unique to this claim, even if the server lost writes since. `epoch` counts
    claims (for display; it can repeat after lost writes). (A NamedTuple: claim builds
    thousands a second.)"""

    id: str
    epoch: int
    token: str
    deadline_ms: int
    uri: str
    worker: str
    priority: int
    etag: str | None = None
    size: int | None = None
    meta: Mapping[str, Any] = MappingProxyType({})
    attempts: int = 0
    deliveries: int = 0
    chunks_total: int | None = None
    chunks_done: frozenset[int] = frozenset()
    # a suspect: it crashed a worker that held other items too. Start it only once the
    # worker holds nothing else (the queue gives this worker nothing more meanwhile), so that
    # if it crashes again the blame is exact.
    solo: bool = False
    rev: int = 0  # the item's revision: each enqueue with force makes a new one
    # what its first checkpoint was made from (the source's ETag, digest or file stat), when
    # one was written: a later attempt that fetches another object starts over
    pin: str | None = None


@dataclass(frozen=True, slots=True)
class Item:
    """A read-only view of an item as stored."""

    id: str
    uri: str
    state: State
    priority: int
    created_ms: int
    etag: str | None = None
    size: int | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    attempts: int = 0
    deliveries: int = 0  # charged lapses in a row at one place: the poison count
    interrupted: int = 0  # leases that ended without their holder's word, charged or not
    solo: bool = False  # a suspect: retried alone
    claims: int = 0
    rev: int = 0  # each enqueue with force makes a new revision (a new output version)
    epoch: int | None = None
    owner: str | None = None
    lease_until_ms: int | None = None
    claimed_ms: int | None = None  # when its present (or last) lease began
    ready_at_ms: int | None = None
    chunks_done: int = 0
    chunks_total: int | None = None
    chunks_expected: int | None = None  # the container's promise, until chunks_total is known
    bugs: int = 0  # errors nobody classified (internal_error after max_attempts)
    last_error: str | None = None
    dead_reason: str | None = None
    dead_class: str | None = None  # not_a_video, not_found, poison, ... (workers/errors.py)
    release_reason: str | None = None
    result: str | None = None
    done_ms: int | None = None
    dead_ms: int | None = None

    @classmethod
    def from_hash(cls, item_id: str, h: Mapping[str, str]) -> Item:
        def opt_int(name: str) -> int | None:
            v = h.get(name)
            return None if v is None or v == "" else int(v)

        return cls(
            id=item_id,
            uri=h["uri"],
            state=State(h["state"]),
            priority=int(h["pri"]),
            created_ms=int(h["created"]),
            etag=h.get("etag") or None,
            size=opt_int("size"),
            meta=json.loads(h["meta"]) if h.get("meta") else {},
            attempts=int(h.get("attempts", 0)),
            deliveries=int(h.get("deliveries", 0)),
            interrupted=int(h.get("interrupted", 0)),
            solo=h.get("solo") == "1",
            claims=int(h.get("claims", 0)),
            rev=int(h.get("rev", 0)),
            epoch=opt_int("epoch"),
            owner=h.get("owner"),
            lease_until_ms=opt_int("lease_until"),
            claimed_ms=opt_int("claimed_at"),
            ready_at_ms=opt_int("ready_at"),
            chunks_done=int(h.get("chunks_done", 0)),
            chunks_total=opt_int("chunks_total"),
            chunks_expected=opt_int("chunks_expected"),
            bugs=int(h.get("bugs", 0)),
            last_error=h.get("last_error"),
            dead_reason=h.get("dead_reason"),
            dead_class=h.get("dead_class"),
            release_reason=h.get("release_reason"),
            result=h.get("result") or None,
            done_ms=opt_int("done_at"),
            dead_ms=opt_int("dead_at"),
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    """An item's end, as the outcomes stream tells it: done (with its result) or dead (with
    its class and reason). `entry` is the stream entry's id, where a reader goes on from."""

    entry: str
    id: str
    state: State
    uri: str
    at_ms: int
    rev: int = 0
    attempts: int = 0
    meta: Mapping[str, Any] = field(default_factory=dict)
    result: str | None = None
    dead_class: str | None = None
    reason: str | None = None

    @classmethod
    def from_entry(cls, entry: str, f: Mapping[str, str]) -> Outcome:
        return cls(
            entry=entry,
            id=f["id"],
            state=State(f["state"]),
            uri=f.get("uri", ""),
            at_ms=int(f["at"]),
            rev=int(f.get("rev") or 0),
            attempts=int(f.get("attempts") or 0),
            meta=json.loads(f["meta"]) if f.get("meta") else {},
            result=f.get("result") or None,
            dead_class=f.get("class") or None,
            reason=f.get("reason") or None,
        )

    def to_json(self) -> dict[str, Any]:
        """As the CLI and the API print it."""
        return {
            "entry": self.entry,
            "id": self.id,
            "state": self.state.value,
            "uri": self.uri,
            "at_ms": self.at_ms,
            "rev": self.rev,
            "attempts": self.attempts,
            "meta": dict(self.meta),
            "result": self.result,
            "class": self.dead_class,
            "reason": self.reason,
        }


class Pending(NamedTuple):
    """An outcome read by a consumer of a group and not acknowledged yet."""

    entry: str
    consumer: str
    idle_ms: int  # since it was last given to a consumer
    deliveries: int  # how many times it was given


@dataclass(frozen=True, slots=True)
class Stats:
    """A consistent snapshot of one queue."""

    counts: Mapping[str, int]  # by state, plus inbox and rejected
    paused: bool
    oldest_queued_age_s: float | None
    counters: Mapping[str, int]  # monotonic *_total counters

    def as_dict(self) -> dict[str, Any]:
        return {
            "counts": dict(self.counts),
            "paused": self.paused,
            "oldest_queued_age_s": self.oldest_queued_age_s,
            "counters": dict(self.counters),
        }


@dataclass(frozen=True, slots=True)
class Histogram:
    """One histogram kept by the scripts (metrics.py): counts per bucket, not cumulative,
    one more than the bounds (the last is past them all)."""

    bounds: tuple[float, ...]  # seconds
    counts: tuple[int, ...]
    sum_s: float
    count: int


@dataclass(frozen=True, slots=True)
class Metrics:
    """What a metrics scrape reads: the stats and the counters kept beside them, each
    O(states + classes + buckets) to read."""

    stats: Stats
    failed: Mapping[str, int]  # failure class -> failures (retried or not)
    dead_by_class: Mapping[str, int]  # class -> dead letters now
    busy_s: Mapping[str, float]  # "decode", "inference:<device>" -> busy seconds
    histograms: Mapping[str, Histogram]  # queue_wait, processing, latency, stage:<stage>
    last_done_s: float | None  # unix time of the last ack


@dataclass(frozen=True, slots=True)
class ChunkWork:
    """What one chunk cost, sent with its checkpoint: counted once per chunk."""

    frames: int
    decode_s: float
    inference_s: float  # the model and the write of its output
    device: str


@dataclass(frozen=True, slots=True)
class ReapResult:
    requeued: int
    poisoned: int
    promoted: int


@dataclass(frozen=True, slots=True)
class SweepResult:
    """One sweep (Supervision.sweep): leases reaped, workers found dead, leases forgiven
    after a gap in the sweeps (an outage, a clock jump)."""

    requeued: int = 0
    poisoned: int = 0
    promoted: int = 0
    orphaned_workers: int = 0
    orphaned_leases: int = 0
    forgiven: int = 0

    def __add__(self, other: SweepResult) -> SweepResult:
        return SweepResult(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


@dataclass(frozen=True, slots=True)
class Memory:
    """The server's memory as it judges it against its limit: used_bytes is INFO's
    used_memory less what it does not count (replication and AOF buffers)."""

    used_bytes: int
    max_bytes: int  # maxmemory; 0: no limit

    @property
    def full(self) -> bool:
        """Over the limit: the server refuses what may grow memory (QueueFull)."""
        return 0 < self.max_bytes < self.used_bytes


@dataclass(frozen=True, slots=True)
class IngestResult:
    ingested: int
    rejected: int
    duplicates: int
    remaining: int
