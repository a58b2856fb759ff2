"""The reliable queue: every transition is one Lua script, called by SHA.

A `Queue` is a thin, typed handle over one Redis client and one `QueueSettings`; it keeps no
state of its own, so any number of processes can share a queue. Times come from the Redis
server's clock unless a `clock` (milliseconds) is given, which tests use to drive leases
and backoff deterministically.
"""

from __future__ import annotations

import json
import math
import random
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import chain
from typing import Any, cast

from redis import Redis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from framefleet.settings import QueueSettings

from .keys import STATES, Keys
from .metrics import HISTOGRAMS, STAGES
from .model import (
    ChunkWork,
    Histogram,
    IngestResult,
    InvalidItem,
    Item,
    Lease,
    Metrics,
    NewItem,
    ReapResult,
    Stats,
    SweepResult,
    Verdict,
    WorkerRetired,
    check_id,
    check_worker,
    uri_script_args,
)
from .scripts import Scripts

Clock = Callable[[], int]
_IN_FLIGHT = 8  # enqueue batches sent ahead of their replies
AUDIT_CAP = 10_000  # entries the audit log keeps


class Queue:
    def __init__(
        self,
        client: Redis,
        settings: QueueSettings | None = None,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.client = client
        self.settings = settings or QueueSettings()
        self.keys = Keys(self.settings.prefix, self.settings.name)
        self._scripts = Scripts(client)
        self._clock = clock
        self._rng = rng or random.Random()
        self._ingested_at = -math.inf  # monotonic: when claim last ingested the inbox

    # -- helpers ---------------------------------------------------------------------

    def _now(self) -> str:
        return "" if self._clock is None else str(self._clock())

    def _run(self, name: str, *args: Any) -> Any:
        return self._scripts.run(name, self.keys.base, [self._now(), *args])

    def _fenced(self, name: str, lease: Lease, *args: Any) -> tuple[Verdict, list[Any]]:
        reply = self._run(name, lease.id, lease.token, lease.worker, *args)
        return Verdict(reply[0]), reply[1:]

    # -- producers -------------------------------------------------------------------

    def enqueue(self, items: Iterable[NewItem | str], *, force: bool = False) -> list[str]:
        """Add items (a NewItem or a bare uri each), idempotent by id.

        Every item is validated before anything is written. An id already known is left as
        it is, unless it is done or dead and `force` is set: then it starts again from
        scratch. Returns the ids that were (re)queued by this call, in order.
        """
        version = self.settings.config_version
        batch_size = self.settings.batch_size
        args: list[list[str]] = []
        for entry in items:
            if isinstance(entry, str):
                args.append(uri_script_args(entry, version))
            elif isinstance(entry, NewItem):
                args.append(entry.script_args(version))
            else:
                raise InvalidItem(f"expected a NewItem or a uri string, got {type(entry).__name__}")
        flag = "1" if force else "0"
        batches = [args[i : i + batch_size] for i in range(0, len(args), batch_size)]
        replies = self._send_overlapped("enqueue", [[flag, *chain(*b)] for b in batches])
        return [
            b[p - 1][0] for b, positions in zip(batches, replies, strict=True) for p in positions
        ]

    def _send_overlapped(self, name: str, calls: list[list[str]]) -> list[Any]:
        """Run one script many times, sending call k+1 before reading the reply of call k, so
        that the client packs while the server runs. If the server has lost its script cache
        (NOSCRIPT after a restart or failover), the calls from the first refused one on are
        made again through the reloading path."""
        sha = self._scripts.load(name)
        conn = self.client.connection_pool.get_connection()
        replies: list[Any] = []
        try:
            for k, call in enumerate(calls):
                conn.send_command(  # type: ignore[no-untyped-call]
                    "EVALSHA", sha, 1, self.keys.base, self._now(), *call
                )
                if k >= _IN_FLIGHT:
                    replies.append(conn.read_response())
            while len(replies) < len(calls):
                replies.append(conn.read_response())
        except NoScriptError:
            conn.disconnect()  # type: ignore[no-untyped-call]
            self._scripts.forget(name)
            return replies + [self._run(name, *call) for call in calls[len(replies) :]]
        except BaseException:
            # replies may still be in flight: never reuse this connection
            conn.disconnect()  # type: ignore[no-untyped-call]
            raise
        finally:
            self.client.connection_pool.release(conn)
        return replies

    def ingest_inbox(self, limit: int = 1000) -> IngestResult:
        """Move entries pushed to the inbox by plain Redis clients into the queue."""
        ingested, rejected, dup, remaining = self._run(
            "ingest", limit, self.settings.config_version
        )
        return IngestResult(int(ingested), int(rejected), int(dup), int(remaining))

    def rejected(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest rejected inbox entries, each {reason, at, raw | raw_hex}."""
        return [json.loads(e) for e in self.client.lrange(self.keys.rejected, 0, limit - 1)]

    # -- workers ---------------------------------------------------------------------

    def claim(self, n: int, worker: str, *, block: float | None = None) -> list[Lease]:
        """Lease up to n items. With `block` (seconds), wait up to that long for one.
        WorkerRetired when a fleet-wide event ended this worker (Supervision.release_workers).

        Blocking waits on a wake-up list that every enqueue, release, retry and resume
        pushes to, so an idle claimer gets a new item within milliseconds; it also wakes
        when a delayed retry falls due. The inbox is ingested first every `poll_s`, whether
        or not the queue has items, so that an entry pushed by a plain client is in line
        (by its priority) at most poll_s later.
        """
        if n < 1:
            raise ValueError("n must be >= 1")
        check_worker(worker)
        lease_ms = int(self.settings.lease_s * 1000)
        deadline = None if block is None else time.monotonic() + block
        while True:
            if time.monotonic() - self._ingested_at >= self.settings.poll_s:
                self._ingested_at = time.monotonic()
                self.ingest_inbox()
            nonce = secrets.token_hex(8)
            try:
                now, paused, next_due, inbox, rows = self._run("claim", n, worker, lease_ms, nonce)
            except ResponseError as exc:
                if str(exc).startswith("RETIRED "):
                    raise WorkerRetired(str(exc)[len("RETIRED ") :]) from None
                raise
            if rows:
                return [_lease(rows[i : i + 15], worker) for i in range(0, len(rows), 15)]
            if int(inbox) > 0 and not int(paused) and self.ingest_inbox().ingested:
                continue
            if deadline is None:
                return []
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            wait = min(left, self.settings.poll_s)
            if int(next_due) >= 0:
                wait = min(wait, max(0.0, (int(next_due) - int(now)) / 1000))
            self.client.blpop([self.keys.signal], timeout=max(wait, 0.001))

    def renew(self, lease: Lease) -> Verdict:
        """Extend the lease by lease_s. Refused (falsy) when the lease was lost: stop."""
        verdict, _ = self._fenced("renew", lease, int(self.settings.lease_s * 1000))
        return verdict

    def progress(
        self,
        lease: Lease,
        chunk: int,
        total: int | None = None,
        work: ChunkWork | None = None,
        expected: int | None = None,
    ) -> Verdict:
        """Checkpoint one finished chunk (idempotent), fenced by the lease's token. `work`
        (frames, busy seconds) is counted the first time the chunk is checkpointed.
        `expected`: the chunks the container promises, for progress bars until `total` is
        known (chunks_expected)."""
        if chunk < 0 or (total is not None and total < 1):
            raise ValueError("chunk must be >= 0 and total >= 1")
        args: list[Any] = [chunk, "" if total is None else total, expected or ""]
        if work is not None:
            check_worker(work.device)  # a short name: it becomes a label
            args += [work.frames, _ms(work.decode_s), _ms(work.inference_s), work.device]
        verdict, _ = self._fenced("progress", lease, *args)
        return verdict

    def ack(
        self, lease: Lease, result: str = "", stages: Mapping[str, float] | None = None
    ) -> Verdict:
        """Done. A stale lease is refused and counted; a repeated ack is DUPLICATE (ok).
        `stages`: the video's seconds in fetch, decode, infer and write (metrics.STAGES),
        for the stage histograms."""
        return self.ack_many([(lease, result, stages)])[0]

    def ack_many(
        self, acks: Sequence[tuple[Lease, str] | tuple[Lease, str, Mapping[str, float] | None]]
    ) -> list[Verdict]:
        """Several acks in one script call, each fenced by its own lease."""
        if not acks:
            return []
        args: list[str] = []
        for lease, result, *rest in acks:
            stages = rest[0] if rest else None
            timed = "" if not stages else ",".join(str(_ms(stages.get(s, 0.0))) for s in STAGES)
            args += [lease.id, lease.token, lease.worker, result, timed]
        return [Verdict(v) for v in self._run("ack", *args)]

    def fail(
        self,
        lease: Lease,
        error: str,
        *,
        retryable: bool = True,
        cls: str = "failed",
        bug: bool = False,
    ) -> Verdict:
        """Retryable: retried after exponential backoff with jitter, dead after max_attempts.
        Not retryable: dead at once with `error` as its reason. `cls` is the dead letter's
        class. A bug (an error nobody classified) counts in `bugs`, not `attempts`, and
        dies as internal_error after max_attempts of them (see lua/fail.lua)."""
        s = self.settings
        mode = "bug" if bug else "retry" if retryable else "permanent"
        verdict, _ = self._fenced(
            "fail",
            lease,
            error,
            mode,
            s.max_attempts,
            int(s.backoff_base_s * 1000),
            int(s.backoff_max_s * 1000),
            repr(self._rng.random()),
            cls,
        )
        return verdict

    def release(self, lease: Lease, reason: str = "released", *, delay_s: float = 0) -> Verdict:
        """Back to queued, no attempt counted: at once (preemption, shutdown), or after
        delay_s (the infrastructure failed, not the item)."""
        verdict, _ = self._fenced("release", lease, reason, int(delay_s * 1000))
        return verdict

    # -- supervision -----------------------------------------------------------------

    def reap(self, limit: int = 1000) -> ReapResult:
        """Take back expired leases (poison after max_deliveries, see sweep.lua for the
        blame) and promote due retries. Loops until none is left; each call costs
        O(expired), not O(leased). The coordinator runs Supervision.sweep, which also finds
        dead workers and forgives the leases that ran out in a gap."""
        r = self.sweep(limit=limit)
        return ReapResult(r.requeued, r.poisoned, r.promoted)

    def sweep(
        self, *, stale_s: float | None = None, gap_s: float | None = None, limit: int = 1000
    ) -> SweepResult:
        """One upkeep pass (lua/sweep.lua), looping until no expired lease is left: with
        `stale_s`, the leases of workers silent that long expire now; with `gap_s`, a sweep
        that comes more than gap_s after the previous one forgives the leases that ran out
        in between (the server was down or its clock jumped: their workers could not renew).
        Each pass also deletes up to `limit` done and dead items past their retention.
        """
        s = self.settings
        stale = -1 if stale_s is None else int(stale_s * 1000)
        gap = -1 if gap_s is None else int(gap_s * 1000)
        ttls = (int(s.lease_s * 1000), int(s.done_ttl_s * 1000), int(s.dead_ttl_s * 1000))
        total = SweepResult()
        while True:
            *counts, more = self._run("sweep", limit, s.max_deliveries, stale, gap, *ttls)
            total += SweepResult(*(int(c) for c in counts))
            if not int(more):
                return total
            stale = gap = -1  # done in the first pass

    def pause(self) -> None:
        """Nothing is handed out until resume(); leases already out carry on."""
        self.client.hset(self.keys.meta, "paused", "1")

    def resume(self) -> None:
        self._run("resume")

    def cancel(self, item_id: str, why: str = "by request") -> bool:
        """Cancel a queued or delayed item (it becomes a dead letter). False otherwise."""
        return self._run("cancel", check_id(item_id), why) in ("queued", "delayed")

    # -- dead letters ------------------------------------------------------------------

    def dead(self, offset: int = 0, limit: int = 100) -> list[Item]:
        """Dead letters, newest first, with their reasons."""
        ids = self.client.zrevrange(self.keys.state("dead"), offset, offset + limit - 1)
        return self._items(cast(list[str], ids))

    def retry_dead(self, ids: Sequence[str] = (), *, limit: int = 1000) -> list[str]:
        """Back to queued with fresh counts: the given ids, or the oldest `limit`."""
        return list(self._run("retry_dead", limit, *[check_id(i) for i in ids]))

    def purge_dead(self, ids: Sequence[str] = (), *, limit: int = 1000) -> list[str]:
        """Delete dead letters for good: the given ids, or the oldest `limit`."""
        return list(self._run("purge_dead", limit, *[check_id(i) for i in ids]))

    def dead_ids(self, cls: str | None = None) -> list[str]:
        """The ids of the dead letters of one class (`dead_class`; "unknown" for one
        without), or of all with None; newest first (the scripts index them by class)."""
        if cls is None:
            return [str(i) for i in self.client.zrevrange(self.keys.state("dead"), 0, -1)]
        self.dead_classes()  # the index is whole (rebuilt if it was not)
        return [str(i) for i in self.client.zrevrange(self.keys.dead_class(cls), 0, -1)]

    def dead_classes(self) -> dict[str, int]:
        """How many dead letters there are of each class, most first: O(classes). An index
        that does not add up to the dead letters (some written before the scripts kept it)
        is rebuilt first, once."""
        for _ in range(2):
            classes = sorted(str(c) for c in self.client.smembers(self.keys.dead_classes))
            pipe = self.client.pipeline(transaction=True)  # one consistent reading
            pipe.zcard(self.keys.state("dead"))
            for cls in classes:
                pipe.zcard(self.keys.dead_class(cls))
            dead, *sizes = pipe.execute()
            counts = {c: int(n) for c, n in zip(classes, sizes, strict=True) if int(n)}
            if sum(counts.values()) == int(dead):
                break
            self._run("index_dead")
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def metrics(self) -> Metrics:
        """The stats and every figure a metrics scrape needs, in two round trips, each
        O(states + classes + buckets): never O(items)."""
        stats = self.stats()
        names = [n for n in HISTOGRAMS if n != "stage"] + [f"stage:{s}" for s in STAGES]
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self.keys.failed)
        pipe.hgetall(self.keys.busy)
        pipe.hget(self.keys.meta, "last_done_at")
        for name in names:
            pipe.hgetall(self.keys.histogram(name))
        failed, busy, last_done, *hists = pipe.execute()
        histograms = {}
        for name, fields in zip(names, hists, strict=True):
            bounds = HISTOGRAMS[name.split(":", 1)[0]]
            counts = [int(fields.get(str(i + 1), 0)) for i in range(len(bounds))]
            counts.append(int(fields.get("inf", 0)))
            histograms[name] = Histogram(
                bounds, tuple(counts), int(fields.get("sum", 0)) / 1000, int(fields.get("count", 0))
            )
        return Metrics(
            stats=stats,
            failed={str(k): int(v) for k, v in failed.items()},
            dead_by_class=self.dead_classes(),
            busy_s={str(k): int(v) / 1000 for k, v in busy.items()},
            histograms=histograms,
            last_done_s=None if last_done is None else int(last_done) / 1000,
        )

    # -- the operators' audit log --------------------------------------------------------

    def record(self, entry: Mapping[str, Any]) -> None:
        """Add an operator's action to the audit log (at its head; the oldest beyond
        AUDIT_CAP are dropped), stamped with the queue's time as `at` (seconds)."""
        line = json.dumps({**entry, "at": self.now_ms() / 1000}, sort_keys=True, default=str)
        pipe = self.client.pipeline(transaction=True)
        pipe.lpush(self.keys.audit, line)
        pipe.ltrim(self.keys.audit, 0, AUDIT_CAP - 1)
        pipe.execute()

    def audit(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest `limit` entries of the audit log, newest first."""
        return [json.loads(x) for x in self.client.lrange(self.keys.audit, 0, limit - 1)]

    # -- reading -----------------------------------------------------------------------

    def get(self, item_id: str) -> Item | None:
        found = self._items([item_id])
        return found[0] if found else None

    def items_in(self, state: str, offset: int = 0, limit: int = 100) -> list[Item]:
        """Items in one state, oldest first (queued: in claim order)."""
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}; one of {', '.join(STATES)}")
        ids = self.client.zrange(self.keys.state(state), offset, offset + limit - 1)
        return self._items(cast(list[str], ids))

    def find(self, prefix: str, limit: int = 100) -> list[Item]:
        """The newest `limit` items whose id starts with `prefix`, in any state, of the
        first FIND_CAP that match. A SCAN over the queue's item keys: an operator's search
        (O(keys)), not a hot path."""
        if limit < 1:
            raise ValueError("limit must be >= 1")
        glob = re.sub(r"([*?\[\]\\])", r"\\\1", prefix)
        pattern = self.keys.item(glob) + "*"
        start = len(self.keys.item(""))
        found: list[str] = []
        for key in self.client.scan_iter(match=pattern, count=1000):
            found.append(str(key)[start:])
            if len(found) >= FIND_CAP:
                break
        items = self._items(found)
        return sorted(items, key=lambda i: (-i.created_ms, i.id))[:limit]

    def page(
        self,
        state: str,
        limit: int = 100,
        cursor: str | None = None,
        dead_class: str | None = None,
    ) -> tuple[list[Item], str | None]:
        """Items in one state, newest first (by the zset's score: enqueue order, lease
        deadline, retry time, done or dead time), `limit` at a time, and the cursor of the
        next page (None: no more). The cursor is a place (score and id), not a count, so
        items added or removed meanwhile shift nothing. With `dead_class` (state dead):
        the dead letters of that class only (their index: O(page))."""
        key = self.keys.state(state)
        if dead_class is not None:
            if state != "dead":
                raise ValueError("dead_class goes with state dead")
            self.dead_classes()  # the index is whole (rebuilt if it was not)
            key = self.keys.dead_class(dead_class)
        top, after = "+inf", None
        if cursor is not None:
            score, sep, after = cursor.partition(":")
            if not sep or not score.isdigit():
                raise ValueError(f"not a cursor: {cursor!r}")
            top = score
        rows: list[tuple[str, int]] = []
        offset = 0
        while len(rows) <= limit:
            batch = cast(
                list[tuple[str, int]],
                self.client.zrevrangebyscore(
                    key,
                    top,
                    "-inf",
                    offset,
                    limit + 1,
                    withscores=True,
                    score_cast_func=lambda v: int(float(v)),
                ),
            )
            offset += len(batch)
            # at the cursor's own score, ids come in reverse order: go on below it
            rows += [(m, sc) for m, sc in batch if after is None or sc != int(top) or m < after]
            if len(batch) < limit + 1:
                break
        more, rows = len(rows) > limit, rows[:limit]
        items = self._items([m for m, _ in rows])
        return items, (f"{rows[-1][1]}:{rows[-1][0]}" if more else None)

    def finished_since(self, since_ms: int) -> tuple[int, int]:
        """(done, dead) items that ended at or after `since_ms` (queue time), from the
        done and dead zsets' scores: throughput without any state of its own."""
        return self.finished_since_each([since_ms])[0]

    def finished_since_each(self, since_ms: Sequence[int]) -> list[tuple[int, int]]:
        """finished_since for each of several times, in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for since in since_ms:
            pipe.zcount(self.keys.state("done"), since, "+inf")
            pipe.zcount(self.keys.state("dead"), since, "+inf")
        counts = [int(n) for n in pipe.execute()]
        return [(counts[2 * i], counts[2 * i + 1]) for i in range(len(since_ms))]

    def finished_per_minute(self, minutes: int = 60) -> list[tuple[int, int, int]]:
        """(minute start ms, done, dead) for each of the last `minutes` whole minutes and the
        current one, oldest first: 2 x (minutes + 1) ZCOUNTs in one round trip, O(log n)
        each, whatever the number of items."""
        if not 1 <= minutes <= 1440:
            raise ValueError("minutes must be within 1..1440")
        now = self.now_ms()
        first = (now // 60_000 - minutes) * 60_000
        starts = [first + i * 60_000 for i in range(minutes + 1)]
        pipe = self.client.pipeline(transaction=False)
        for start in starts:
            for state in ("done", "dead"):
                pipe.zcount(self.keys.state(state), start, f"({start + 60_000}")
        counts = [int(n) for n in pipe.execute()]
        return [(start, counts[2 * i], counts[2 * i + 1]) for i, start in enumerate(starts)]

    def server_info(self) -> dict[str, Any]:
        """What an operator wants of the Redis server: version, memory used and its limit,
        the eviction policy, persistence (AOF on, its fsync policy and its last write's
        status; the last RDB save's status) and uptime."""
        info = self.client.info("server") | self.client.info("memory")
        info |= self.client.info("persistence")
        keys = (
            "redis_version", "valkey_version", "uptime_in_seconds", "used_memory",
            "used_memory_human", "maxmemory", "maxmemory_policy", "aof_enabled",
            "aof_last_write_status", "aof_rewrite_in_progress", "rdb_last_bgsave_status",
            "rdb_changes_since_last_save", "loading",
        )  # fmt: skip
        found = {k: info[k] for k in keys if k in info}
        try:
            found["appendfsync"] = self.client.config_get("appendfsync").get("appendfsync")
        except RedisError:  # CONFIG may be off limits (a managed Redis, an ACL user)
            found["appendfsync"] = None
        return found

    def now_ms(self) -> int:
        """The queue's time: the server's clock, or the test clock it was given."""
        now = self._now()
        return int(now) if now else _server_ms(self.client.time())

    def chunks(self, item_id: str) -> set[int]:
        """Checkpointed chunk indices of an item that is not done yet."""
        return {int(c) for c in self.client.smembers(self.keys.chunks(item_id))}

    def items(self, ids: Sequence[str]) -> list[Item]:
        """The items among ids that exist, in batches of batch_size per round trip."""
        step = self.settings.batch_size
        return [item for i in range(0, len(ids), step) for item in self._items(ids[i : i + step])]

    def states(self, ids: Sequence[str]) -> list[str | None]:
        """Each item's state (None for an unknown id), batch_size per round trip: cheap
        enough to follow thousands of items every second."""
        found: list[str | None] = []
        for i in range(0, len(ids), self.settings.batch_size):
            pipe = self.client.pipeline(transaction=False)
            for item_id in ids[i : i + self.settings.batch_size]:
                pipe.hget(self.keys.item(check_id(item_id)), "state")
            found += [None if s is None else str(s) for s in pipe.execute()]
        return found

    def _items(self, ids: Sequence[str]) -> list[Item]:
        pipe = self.client.pipeline(transaction=False)
        for item_id in ids:
            pipe.hgetall(self.keys.item(item_id))
        return [Item.from_hash(i, h) for i, h in zip(ids, pipe.execute(), strict=True) if h]

    def stats(self) -> Stats:
        reply = self._run("stats")
        now, paused = int(reply[0]), reply[1] == "1"
        names = ("queued", "delayed", "leased", "done", "dead", "inbox", "rejected")
        counts = {name: int(v) for name, v in zip(names, reply[2:9], strict=True)}
        oldest = int(reply[9])
        flat = reply[10]
        counters = {flat[i]: int(flat[i + 1]) for i in range(0, len(flat), 2)}
        age = None if oldest < 0 else max(0.0, (now - oldest) / 1000)
        return Stats(counts=counts, paused=paused, oldest_queued_age_s=age, counters=counters)


_NO_CHUNKS: frozenset[int] = frozenset()
FIND_CAP = 10_000  # the matches Queue.find sorts at most


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


def _lease(row: list[Any], worker: str) -> Lease:
    (
        id_,
        epoch,
        token,
        deadline,
        uri,
        etag,
        size,
        meta,
        pri,
        attempts,
        deliveries,
        total,
        chunks,
        solo,
        rev,
    ) = row
    return Lease(
        id_,
        int(epoch),
        token,
        int(deadline),
        uri,
        worker,
        int(pri),
        etag or None,
        int(size) if size else None,
        json.loads(meta) if meta else {},
        int(attempts),
        int(deliveries),
        int(total) if total else None,
        frozenset(int(c) for c in chunks.split(",")) if chunks else _NO_CHUNKS,
        solo == "1",
        int(rev),
    )


def _server_ms(reply: tuple[int, int]) -> int:
    seconds, micros = reply
    return int(seconds) * 1000 + int(micros) // 1000
