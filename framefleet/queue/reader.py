"""Reading a queue: every query that changes nothing (items, pages, counts, dead letters by
class, throughput, metrics, the audit log, the server). `Queue` (queue.py) adds the
transitions on top; both are thin handles that keep no state of their own.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Callable, Sequence
from typing import Any, cast

from redis import Redis
from redis.exceptions import OutOfMemoryError, RedisError, ResponseError

from framefleet.settings import QueueSettings

from .cluster import Client, on_node
from .keys import STATES, Keys
from .metrics import HISTOGRAMS, STAGES
from .model import (
    Histogram,
    Item,
    Memory,
    Metrics,
    Outcome,
    Pending,
    QueueFull,
    Stats,
    check_id,
)
from .scripts import Scripts

Clock = Callable[[], int]
FIND_CAP = 10_000  # the matches QueueReader.find sorts at most


class QueueReader:
    """One Redis client and one `QueueSettings`: the queue's reads, and the script runner
    the transitions share."""

    def __init__(
        self,
        client: Client,
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

    def _now(self) -> str:
        return "" if self._clock is None else str(self._clock())

    def _run(self, name: str, *args: Any) -> Any:
        try:
            return self._scripts.run(name, self.keys.base, [self._now(), *args])
        except ResponseError as exc:
            if over_limit(exc):
                raise full(name) from exc
            raise

    def now_ms(self) -> int:
        """The queue's time: the server's clock, or the test clock it was given."""
        now = self._now()
        return int(now) if now else _server_ms(self.client.time())

    # -- items ---------------------------------------------------------------------------------

    def get(self, item_id: str) -> Item | None:
        found = self._items([item_id])
        return found[0] if found else None

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

    def events(self, item_id: str) -> list[dict[str, Any]]:
        """An item's history, oldest first (the newest 20 kept): {at (ms), what, detail} for
        each claim, release, failure, lost lease (and its blame), retry and end. An item done
        at its first claim keeps none: nothing happened to tell."""
        return [json.loads(x) for x in self.client.lrange(self.keys.events(item_id), 0, -1)]

    def chunks(self, item_id: str) -> set[int]:
        """Checkpointed chunk indices of an item that is not done yet."""
        return {int(c) for c in self.client.smembers(self.keys.chunks(item_id))}

    def _items(self, ids: Sequence[str]) -> list[Item]:
        pipe = self.client.pipeline(transaction=False)
        for item_id in ids:
            pipe.hgetall(self.keys.item(item_id))
        return [Item.from_hash(i, h) for i, h in zip(ids, pipe.execute(), strict=True) if h]

    # -- counts --------------------------------------------------------------------------------

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

    def server_info(self) -> dict[str, Any]:
        """What an operator wants of the Redis server (on a cluster: the primary holding the
        queue): version, memory used and its limit, the eviction policy, persistence (AOF on,
        its fsync policy and its last write's status; the last RDB save's status) and
        uptime."""
        return on_node(self.client, self.keys.base, _server_info)

    def memory(self) -> Memory | None:
        """The server's memory (on a cluster: the queue's primary's) against its maxmemory
        (`full`: new work is refused, see QueueFull); None when the server refuses INFO (an
        ACL without it)."""
        try:
            info = on_node(self.client, self.keys.base, lambda server: server.info("memory"))
        except ResponseError:
            return None
        used = int(info.get("used_memory", 0)) - int(info.get("mem_not_counted_for_evict", 0))
        return Memory(used_bytes=used, max_bytes=int(info.get("maxmemory", 0)))

    # -- dead letters --------------------------------------------------------------------------

    def dead(self, offset: int = 0, limit: int = 100) -> list[Item]:
        """Dead letters, newest first, with their reasons."""
        ids = self.client.zrevrange(self.keys.state("dead"), offset, offset + limit - 1)
        return self._items(cast(list[str], ids))

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

    # -- the outcomes stream -------------------------------------------------------------------

    def outcomes(
        self, after: str = "0", count: int = 100, block_s: float | None = None
    ) -> list[Outcome]:
        """Up to `count` outcomes after stream entry `after`, oldest first: "0" from the oldest
        kept, "$" only those to come. With block_s, waits up to that long while there are
        none (XREAD BLOCK). Give the last one's `entry` as `after` to read on."""
        block = None if block_s is None else max(1, int(block_s * 1000))
        reply: Any = self.client.xread({self.keys.outcomes: after}, count=count, block=block)
        if not reply:
            return []
        [(_, entries)] = reply
        return [Outcome.from_entry(entry, fields) for entry, fields in entries]

    def last_outcome(self) -> str:
        """The newest outcome's entry id ("0-0" when there is none yet): where to follow from."""
        newest: Any = self.client.xrevrange(self.keys.outcomes, count=1)
        return str(newest[0][0]) if newest else "0-0"

    # Consumer groups on the outcomes stream: each end to one consumer of a group, at least
    # once (an entry read and not acknowledged stays pending, to be claimed again).

    def outcome_group(self, group: str) -> None:
        """Make consumer group `group` if there is none; it hears of the ends to come."""
        try:
            self.client.xgroup_create(self.keys.outcomes, group, id="$", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read_outcome_group(
        self, group: str, consumer: str, count: int = 100, block_s: float | None = None
    ) -> list[Outcome]:
        """Ends no consumer of `group` has been given yet, now pending with `consumer`."""
        block = None if block_s is None else max(1, int(block_s * 1000))
        reply: Any = self.client.xreadgroup(
            group, consumer, {self.keys.outcomes: ">"}, count=count, block=block
        )
        if not reply:
            return []
        [(_, entries)] = reply
        return [Outcome.from_entry(entry, fields) for entry, fields in entries if fields]

    def ack_outcomes(self, group: str, entries: Sequence[str]) -> int:
        """Entries `group` is done with: no longer pending."""
        return int(self.client.xack(self.keys.outcomes, group, *entries)) if entries else 0

    def pending_outcomes(self, group: str, count: int = 100) -> list[Pending]:
        """The oldest `count` entries of `group` read but not acknowledged."""
        reply: Any = self.client.xpending_range(
            self.keys.outcomes, group, min="-", max="+", count=count
        )
        return [
            Pending(
                str(p["message_id"]),
                str(p["consumer"]),
                int(p["time_since_delivered"]),
                int(p["times_delivered"]),
            )
            for p in reply
        ]

    def claim_outcomes(
        self, group: str, consumer: str, entries: Sequence[str], min_idle_s: float = 0.0
    ) -> tuple[list[Outcome], list[str]]:
        """Pending entries of `group`, idle at least min_idle_s, now `consumer`'s (their
        delivery count goes up): their outcomes, and the entries the stream no longer holds
        (trimmed: nothing to deliver)."""
        if not entries:
            return [], []
        reply: Any = self.client.xclaim(
            self.keys.outcomes, group, consumer, int(min_idle_s * 1000), list(entries)
        )
        found = [Outcome.from_entry(entry, fields) for entry, fields in reply if fields]
        held = {o.entry for o in found}
        gone = [e for e, fields in reply if not fields and e not in held]
        return found, gone

    def webhook_failures(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest failed webhook attempts, newest first ({id, url, error, attempt,
        gave_up, at})."""
        lines = self.client.lrange(self.keys.webhook_failures, 0, limit - 1)
        return [json.loads(x) for x in lines]

    # -- the operators' audit log --------------------------------------------------------------

    def audit(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest `limit` entries of the audit log, newest first."""
        return [json.loads(x) for x in self.client.lrange(self.keys.audit, 0, limit - 1)]


def _server_info(client: Redis) -> dict[str, Any]:
    info = client.info("server") | client.info("memory")
    info |= client.info("persistence")
    keys = (
        "redis_version", "valkey_version", "uptime_in_seconds", "used_memory",
        "used_memory_human", "maxmemory", "maxmemory_policy", "aof_enabled",
        "aof_last_write_status", "aof_rewrite_in_progress", "rdb_last_bgsave_status",
        "rdb_changes_since_last_save", "loading",
    )  # fmt: skip
    found = {k: info[k] for k in keys if k in info}
    try:
        found["appendfsync"] = client.config_get("appendfsync").get("appendfsync")
    except RedisError:  # CONFIG may be off limits (a managed Redis, an ACL user)
        found["appendfsync"] = None
    return found


def over_limit(exc: ResponseError) -> bool:
    """The server refused a write for its maxmemory: OOM (Valkey, Redis 7+), or the same
    error inside a script's on Redis 6.2 ("Error running script ... -OOM command not
    allowed ...")."""
    return isinstance(exc, OutOfMemoryError) or "OOM command not allowed" in str(exc)


def full(what: str) -> QueueFull:
    return QueueFull(
        f"{what} refused: the queue's Redis is over its maxmemory (noeviction), and nothing"
        " was written; new work waits until the sweep's retention frees memory (or an"
        " operator purges dead letters, shortens the retention or raises maxmemory)"
    )


def _server_ms(reply: tuple[int, int]) -> int:
    seconds, micros = reply
    return int(seconds) * 1000 + int(micros) // 1000
