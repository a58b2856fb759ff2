"""The reliable queue: every transition is one Lua script, called by SHA.

A `Queue` is a thin, typed handle over one Redis client and one `QueueSettings`; it keeps no
state of its own, so any number of processes can share a queue. Times come from the Redis
server's clock unless a `clock` (milliseconds) is given, which tests use to drive leases
and backoff deterministically. The reads (items, pages, counts, metrics) are QueueReader's,
in reader.py.
"""

from __future__ import annotations

import json
import random
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from itertools import chain
from typing import Any

from redis import Redis
from redis.exceptions import NoScriptError, ResponseError

from framefleet.settings import QueueSettings

from .cluster import FOLLOW, Client, on_node, server_of
from .durable import Durability
from .metrics import STAGES
from .model import (
    MAX_ETAG_BYTES,
    ChunkWork,
    IngestResult,
    InvalidItem,
    Lease,
    NewItem,
    ReapResult,
    SweepResult,
    Verdict,
    WorkerRetired,
    check_id,
    check_worker,
    uri_script_args,
)
from .reader import Clock, QueueReader, full, over_limit

_IN_FLIGHT = 8  # enqueue batches sent ahead of their replies
_CONFIRMED = 16  # enqueue batches confirmed by one WAIT (durability on)
AUDIT_CAP = 10_000  # entries the audit log keeps
# leases a sweep pass handles at most: one pass of 1,000 blocked the server 75-97 ms on a
# 2-vCPU VM (bench/simulate.py), one of 300 about a third of that
SWEEP_PASS = 300


class Queue(QueueReader):
    """The queue's transitions, each one Lua script (reads: QueueReader). `durability`: what
    enqueue and ack wait for before they return (durable.py; none by default)."""

    def __init__(
        self,
        client: Client,
        settings: QueueSettings | None = None,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        durability: Durability | None = None,
    ) -> None:
        super().__init__(client, settings, clock=clock, rng=rng)
        self.durability = durability or Durability()

    def _fenced(self, name: str, lease: Lease, *args: Any) -> tuple[Verdict, list[Any]]:
        reply = self._run(name, lease.id, lease.token, lease.worker, *args)
        return Verdict(reply[0]), reply[1:]

    # -- producers -------------------------------------------------------------------

    def enqueue(
        self, items: Iterable[NewItem | str], *, force: bool = False, atomic: bool = False
    ) -> list[str]:
        """Add items (a NewItem or a bare uri each), idempotent by id.

        Every item is validated before anything is written. An id already known is left as
        it is, unless it is done or dead and `force` is set: then it starts again from
        scratch. Returns the ids that were (re)queued by this call, in order. QueueFull when
        the server is over its maxmemory: each batch is written whole or not at all, and
        those before the refused one went through; enqueue them all again later.

        The items go in script calls of settings.batch_size each, so that no call holds the
        server long: a producer that dies between two calls leaves the first ones written.
        `atomic`: all the items in one call, written whole or not at all, however many (the
        API's batches, up to 10,000 items: tens of milliseconds of the server's time).
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
        if atomic:
            batch_size = max(1, len(args))
        batches = [args[i : i + batch_size] for i in range(0, len(args), batch_size)]
        calls = [[flag, *chain(*b)] for b in batches]
        if not self.durability.on:
            return _enqueued(batches, self._send_overlapped("enqueue", calls))
        ids: list[str] = []
        for i in range(0, len(calls), _CONFIRMED):
            replies, waited = self._confirmed("enqueue", calls[i : i + _CONFIRMED])
            ids += _enqueued(batches[i : i + _CONFIRMED], replies)
            self.durability.check(waited, "enqueue", ids)  # NotDurable: ids so far, written
        return ids

    def _send_overlapped(self, name: str, calls: list[list[str]]) -> list[Any]:
        """Run one script many times, sending call k+1 before reading the reply of call k, so
        that the client packs while the server runs (on a cluster: on a connection to the
        queue's primary). If the server has lost its script cache (NOSCRIPT after a restart
        or failover), or the connection failed (a failover: the old primary refuses writes,
        or is gone; a cluster's slot moved), the calls from the first unanswered one on are
        made again through the reloading, retrying path (enqueue is idempotent)."""
        sha = self._scripts.load(name)
        try:
            pool = server_of(self.client, self.keys.base).connection_pool
            conn = pool.get_connection()
        except FOLLOW:  # a cluster's primary away: none of them sent
            return [self._run(name, *call) for call in calls]
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
        except (NoScriptError, *FOLLOW) as exc:
            conn.disconnect()  # type: ignore[no-untyped-call]
            if isinstance(exc, NoScriptError):
                self._scripts.forget(name)
            return replies + [self._run(name, *call) for call in calls[len(replies) :]]
        except ResponseError as exc:
            conn.disconnect()  # type: ignore[no-untyped-call]
            if over_limit(exc):  # the calls before it went through: enqueue is idempotent
                raise full(name) from exc
            raise
        except BaseException:
            # replies may still be in flight: never reuse this connection
            conn.disconnect()  # type: ignore[no-untyped-call]
            raise
        finally:
            pool.release(conn)
        return replies

    def _confirmed(
        self, name: str, calls: list[list[Any]], *, reload: bool = True
    ) -> tuple[list[Any], Any]:
        """Run script `name` once per call, then the durability's WAIT or WAITAOF, in one
        pipeline: on one connection (on a cluster: to the queue's primary), so that the wait
        covers these writes. The scripts' replies and the wait's. Retried whole while the
        server does not answer (a failover: enqueue and ack are idempotent), and once more
        if the server lost its scripts."""
        sha = self._scripts.load(name)

        def send(server: Redis) -> list[Any]:
            pipe = server.pipeline(transaction=False)
            for call in calls:
                pipe.evalsha(sha, 1, self.keys.base, self._now(), *call)
            self.durability.queue_wait(pipe)
            return pipe.execute()

        try:
            replies = on_node(self.client, self.keys.base, send)
        except NoScriptError:  # a failover to a replica that never loaded it
            if not reload:
                raise
            self._scripts.forget(name)
            return self._confirmed(name, calls, reload=False)
        except ResponseError as exc:
            if over_limit(exc):  # the calls before it went through: enqueue is idempotent
                raise full(name) from exc
            raise
        return replies[: len(calls)], replies[-1]  # the last wait's reply

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
                return [_lease(rows[i : i + 16], worker) for i in range(0, len(rows), 16)]
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
        pin: str | None = None,
    ) -> Verdict:
        """Checkpoint one finished chunk (idempotent), fenced by the lease's token. `work`
        (frames, busy seconds) is counted the first time the chunk is checkpointed.
        `expected`: the chunks the container promises, for progress bars until `total` is
        known (chunks_expected). `pin`: what the chunk was made from (sources.Fetched.pin);
        the first checkpoint keeps it (Lease.pin), and one with another pin drops the
        checkpoints made from the other object before it is recorded."""
        return self.checkpoint(lease, [(chunk, work)], total, expected, pin)

    def checkpoint(
        self,
        lease: Lease,
        chunks: Sequence[tuple[int, ChunkWork | None]],
        total: int | None = None,
        expected: int | None = None,
        pin: str | None = None,
    ) -> Verdict:
        """progress() of several chunks in one call: (index, work) each."""
        if not chunks or any(c < 0 for c, _ in chunks) or (total is not None and total < 1):
            raise ValueError("chunks must be >= 0 (one at least) and total >= 1")
        if pin is not None and not 0 < len(pin.encode()) <= MAX_ETAG_BYTES:
            raise ValueError("a pin is 1 to MAX_ETAG_BYTES bytes")
        args: list[Any] = ["" if total is None else total, expected or "", pin or ""]
        for chunk, work in chunks:
            if work is None:
                args += [chunk, "", 0, 0, ""]
            else:
                check_worker(work.device)  # a short name: it becomes a label
                args += [chunk, work.frames, _ms(work.decode_s), _ms(work.inference_s)]
                args.append(work.device)
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
        if not self.durability.on:
            return [Verdict(v) for v in self._run("ack", *args)]
        [replies], waited = self._confirmed("ack", [args])
        verdicts = [Verdict(v) for v in replies]
        self.durability.check(waited, "ack", verdicts)  # NotDurable: these verdicts, made
        return verdicts

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
        verdict, _ = self._fenced("release", lease, reason, int(delay_s * 1000), "", 0)
        return verdict

    def release_for(
        self, lease: Lease, reason: str, cls: str, *, delay_s: float = 0
    ) -> tuple[Verdict, str | None]:
        """A release because the infrastructure failed for this video's sake (larger than
        the node's temporary space, say: class `cls`): counted, and after max_attempts of
        them the item is dead with that class instead, since such a release would repeat on
        every node for ever (lua/release.lua). The verdict, and the dead reason if it died."""
        bound = self.settings.max_attempts
        verdict, rest = self._fenced("release", lease, reason, int(delay_s * 1000), cls, bound)
        return verdict, (str(rest[1]) if len(rest) > 1 and rest[0] == "dead" else None)

    # -- supervision -----------------------------------------------------------------

    def reap(self, limit: int = SWEEP_PASS) -> ReapResult:
        """Take back expired leases (poison after max_deliveries, see sweep.lua for the
        blame) and promote due retries. Loops until none is left; each call costs
        O(expired), not O(leased). The coordinator runs Supervision.sweep, which also finds
        dead workers and forgives the leases that ran out in a gap."""
        r = self.sweep(limit=limit)
        return ReapResult(r.requeued, r.poisoned, r.promoted)

    def sweep(
        self,
        *,
        stale_s: float | None = None,
        gap_s: float | None = None,
        limit: int = SWEEP_PASS,
        judge: bool = True,
    ) -> SweepResult:
        """The queue's upkeep (lua/sweep.lua), in passes of at most `limit` leases (each
        blocks the server for its own length only), until no expired lease is left: with
        `stale_s`, the leases of workers silent that long expire now; with `gap_s`, a sweep
        that comes more than gap_s after the previous one forgives the leases that ran out
        in between (the server was down or its clock jumped: their workers could not renew).
        Each pass also deletes up to `limit` done and dead items past their retention.
        `judge=False` (the caller cannot tell a dead worker from a live one just now: its
        fleet lost the Ray GCS): expired leases come back as suspects, none charged.
        """
        s = self.settings
        stale = -1 if stale_s is None else int(stale_s * 1000)
        gap = -1 if gap_s is None else int(gap_s * 1000)
        ttls = (int(s.lease_s * 1000), int(s.done_ttl_s * 1000), int(s.dead_ttl_s * 1000))
        total = SweepResult()
        while True:
            flag = "1" if judge else "0"
            *counts, more = self._run("sweep", limit, s.max_deliveries, stale, gap, *ttls, flag)
            total += SweepResult(*(int(c) for c in counts))
            if not int(more):
                return total
            gap = -1  # done in the first pass; the workers gone are finished in the next

    def pause(self) -> None:
        """Nothing is handed out until resume(); leases already out carry on."""
        try:
            self.client.hset(self.keys.meta, "paused", "1")
        except ResponseError as exc:
            if over_limit(exc):
                raise full("pause") from exc
            raise

    def resume(self) -> None:
        self._run("resume")

    def cancel(self, item_id: str, why: str = "by request") -> bool:
        """Cancel a queued or delayed item (it becomes a dead letter). False otherwise."""
        return self._run("cancel", check_id(item_id), why) in ("queued", "delayed")

    # -- dead letters ------------------------------------------------------------------

    def retry_dead(self, ids: Sequence[str] = (), *, limit: int = 1000) -> list[str]:
        """Back to queued with fresh counts: the given ids, or the oldest `limit`."""
        return list(self._run("retry_dead", limit, *[check_id(i) for i in ids]))

    def purge_dead(self, ids: Sequence[str] = (), *, limit: int = 1000) -> list[str]:
        """Delete dead letters for good: the given ids, or the oldest `limit`."""
        return list(self._run("purge_dead", limit, *[check_id(i) for i in ids]))

    # -- the operators' audit log --------------------------------------------------------

    def record(self, entry: Mapping[str, Any]) -> None:
        """Add an operator's action to the audit log (at its head; the oldest beyond
        AUDIT_CAP are dropped), stamped with the queue's time as `at` (seconds)."""
        line = json.dumps({**entry, "at": self.now_ms() / 1000}, sort_keys=True, default=str)
        self._run("audit", AUDIT_CAP, line)  # at the limit too: an operator's purge, say

    # -- webhooks (framefleet/ops/webhooks.py) -------------------------------------------

    def webhook_result(
        self, group: str, entry: str, result: str, failure: Mapping[str, Any] | None = None
    ) -> None:
        """One webhook attempt for outcome `entry` ended: 'sent', 'skip' (no URL), 'retry'
        (it stays pending in `group`) or 'gave_up'; counted, acknowledged in `group` unless
        retried, and a failure added to the failures list (lua/webhook.lua)."""
        if result not in ("sent", "skip", "retry", "gave_up"):
            raise ValueError(f"unknown webhook result {result!r}")
        line = json.dumps(dict(failure), sort_keys=True, default=str) if failure else ""
        self._run("webhook", group, entry, result, line)


_NO_CHUNKS: frozenset[int] = frozenset()


def _enqueued(batches: list[list[list[str]]], replies: list[Any]) -> list[str]:
    """The ids each enqueue call (re)queued: its reply lists their places in its batch."""
    return [b[p - 1][0] for b, positions in zip(batches, replies, strict=True) for p in positions]


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
        pin,
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
        pin or None,
    )
