"""One video, from lease to ack: the state machine a decode actor runs for each item.

    claim -> (outputs of this version already complete? ack) -> fetch -> decode chunk by
    chunk, skipping checkpointed ones whose files are there -> each chunk to inference (at
    most max_inflight_chunks out) -> as each chunk's output is durable: progress(chunk) ->
    finalize (merged file, manifest last) -> ack(manifest), fenced by the lease's token.

The output version is the configuration, the revision and what was fetched: the etag given
at enqueue, or else the fetch's pin (sources.Fetched.pin), which the first checkpoint keeps
(Lease.pin). A later attempt that fetches another object than the pinned one (the video was
replaced at its URI) starts over on it, in another version, rather than resume: one output
never holds frames of two videos. With an etag given at enqueue, another object is `changed`.

A background thread renews the lease every third of its length while the item makes
progress (bytes fetched, chunks decoded or settled); after stall_s without any it stops, so
that a stuck item goes back to the queue. When a renewal is refused the item stops at once
(another worker owns it now). How each failure ends (errors.py): PermanentError -> dead with
its reason and class; TransientError -> retried with backoff; InfraError -> back to the
queue after a delay, no attempt; a stop request (SIGTERM, preemption) -> released, no
attempt; anything else is a bug: logged with its traceback, back after a delay, counted in
`bugs`. A queue call that fails because Redis does not answer is tried again for up to a
lease time (the client has retried already); the thread never dies of it. Nothing here calls
Ray: inference is behind the `Inference` protocol (a Ray actor pool in production,
in-process in tests).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from framefleet.chaos.digest import table_digest
from framefleet.chaos.events import ChunkWritten, Decoded
from framefleet.chaos.history import HistoryWriter
from framefleet.queue import ChunkWork, Lease, Queue, State, Verdict
from framefleet.settings import Settings

from . import previews
from .decode import Chunk, ChunkReader, Decoder, Limits, Sampling, open_decoder
from .decode_process import ProcessDecoder
from .errors import (
    INTERNAL_ERROR,
    MODEL_ERROR,
    STALLED,
    TOO_BIG,
    InfraError,
    ItemError,
    PermanentError,
    TransientError,
)
from .model import FrameModel
from .outputs import OutputStore, chunk_name, output_version, records_table
from .results import Results
from .sources import fetched

log = logging.getLogger(__name__)

DRAIN_S = 10.0  # on a stop request, how long chunks already out may still be settled
_T = TypeVar("_T")


class LeaseLost(Exception):
    """The queue refused a renewal, a checkpoint or the ack: another worker owns the item."""


class Stopped(Exception):
    """The worker was asked to stop (shutdown or preemption)."""


@dataclass(frozen=True, slots=True)
class ChunkDone:
    """A chunk's output is durable: the rows written (-1: it was there already, nothing
    ran) and what inference cost, for the busy-time metrics."""

    rows: int
    infer_s: float = 0.0
    write_s: float = 0.0
    device: str = "cpu"
    # of the rows this call wrote (chaos/digest.py), when asked for (a chaos run's history);
    # None when it wrote nothing (the file was there, or another writer won)
    digest: str | None = None


class Pending(Protocol):
    """A chunk handed to inference."""

    def result(self, timeout: float | None = None) -> ChunkDone:
        """The chunk's output is written (raises ItemError, or InfraError when no
        inference actor could take it)."""
        ...


class Inference(Protocol):
    schema: Any  # the model's record schema (pyarrow)
    model_name: str

    def submit(self, item_id: str, video: str, chunk: Chunk) -> Pending:
        """Run the model on the chunk and write its output under `video` (a key prefix of
        the output store). The chunk's images are the reader's buffer, overwritten by the
        next chunk (ChunkReader's `reuse`): what is kept of them is copied before this
        returns (to the object store; or the model runs on them here)."""
        ...


class Status(StrEnum):
    ACKED = "acked"
    ALREADY_DONE = "already-done"  # its outputs were complete: acked without work
    FAILED = "failed"  # retried later
    DEAD = "dead"
    LOST = "lost"  # another worker owns it now
    RELEASED = "released"  # back to the queue, no attempt (stop, infrastructure)
    ERROR = "error"  # a bug, or Redis gone for longer than a lease time


@dataclass
class Outcome:
    item_id: str
    status: Status
    reason: str = ""
    chunks: int = 0
    frames: int = 0
    result: str = ""
    cls: str = ""  # the failure's class (dead letters'); internal_error for a bug


# the word an item's outcome line says (a retried one that reached max_attempts: dead)
_ENDS = {
    Status.ACKED: "done",
    Status.ALREADY_DONE: "done",
    Status.FAILED: "retried",
    Status.DEAD: "dead",
    Status.LOST: "lost",
    Status.RELEASED: "released",
    Status.ERROR: "error",
}


class LeaseKeeper:
    """Renews a lease from a background thread every `interval` seconds, as long as the item
    was `touch()`ed within `stall_s`; after that it stops renewing and marks it lost."""

    def __init__(
        self, queue: Queue, lease: Lease, interval: float, stall_s: float = float("inf")
    ) -> None:
        self.queue, self.lease, self.interval, self.stall_s = queue, lease, interval, stall_s
        self.lost = threading.Event()
        self.stalled = threading.Event()  # lost too: no progress for stall_s
        self.why = ""
        self._touched = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"renew-{lease.id}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def touch(self) -> None:
        """The item made progress."""
        self._touched = time.monotonic()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            idle = time.monotonic() - self._touched
            if idle > self.stall_s:
                self.why = f"no progress for {idle:.0f} s (stall_s {self.stall_s:g}): given up"
                log.warning("%s: %s", self.lease.id, self.why)
                self.stalled.set()
                self.lost.set()
                return
            try:
                ok = self.queue.renew(self.lease).ok
            except RedisError:  # Redis unreachable for a moment: try again next time
                continue
            except Exception:  # a bug: logged, and the renewals go on
                log.exception("%s: renewal failed", self.lease.id)
                continue
            if not ok:
                self.why = "the lease was lost (a renewal was refused)"
                self.lost.set()
                return


@dataclass
class _Item:
    """One item in flight: its lease, keeper, output prefix, chunks out and timings."""

    lease: Lease
    keeper: LeaseKeeper
    video: str
    inflight: deque[tuple[int, Pending, int, float]] = field(default_factory=deque)
    timings: dict[str, float] = field(default_factory=dict)  # laps: they add up to the whole
    inference: dict[str, float] = field(default_factory=dict)  # infer, write: at the actors
    expected: int | None = None  # the chunks the container promises, until it is written
    mark: float = 0.0
    pin: str | None = None  # what the chunks are made from (sources.Fetched.pin)
    previews: frozenset[int] = frozenset()  # the kept frames to preview (previews.py)
    drawn: list[str] = field(default_factory=list)  # the previews asked for by this attempt
    unsaved: list[tuple[int, ChunkWork]] = field(default_factory=list)  # settled, not saved
    saved_at: float = 0.0  # when the last checkpoint was written (the clock's)

    def lap(self, name: str, now: float) -> None:
        self.timings[name] = self.timings.get(name, 0.0) + now - self.mark
        self.mark = now


class VideoJob:
    """Processes leases; one instance per decode actor (it holds no per-item state). Several
    threads may run items at once, but one decodes at a time (`decoding`, taken per chunk):
    the others fetch, open, wait for inference, finalize and ack meanwhile. So a decode
    actor keeps to about one core of decoding, and the next video is fetched and opened while
    the current one decodes, instead of the inference actors idling between videos.

    The chunks out at once are bounded per item (max_inflight_chunks) and for all the items
    together (`budget`: items_per_decoder x max_inflight_chunks), so an actor that starts the
    next video while the last chunks of the previous ones are in inference (see `run`'s
    `decoded`) holds no more decoded frames than one that waits."""

    def __init__(
        self,
        queue: Queue,
        store: OutputStore,
        inference: Inference,
        settings: Settings,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
        history: HistoryWriter | None = None,
    ) -> None:
        self.queue, self.store, self.inference, self.settings = queue, store, inference, settings
        self.history = history  # a chaos run's: chunks decoded and written (chaos/recorder.py)
        self.results = Results(store)
        self.stop = stop or threading.Event()
        self.clock = clock
        p = settings.pipeline
        self.sampling = Sampling(
            fps=p.sample_fps, stride=p.stride, width=p.width, height=p.height, max_side=p.max_side
        )
        self.limits = Limits(p.max_pixels, p.max_frames, p.max_duration_s)
        self.config_hash = p.config_hash(settings.model)
        self.decoding = threading.Lock()
        self.budget = threading.BoundedSemaphore(p.items_per_decoder * p.max_inflight_chunks)

    def run(
        self,
        lease: Lease,
        decoded: Callable[[], None] | None = None,
        ready: Callable[[LeaseKeeper], None] | None = None,
    ) -> Outcome:
        """Process one item. `ready` is called first, with the lease kept (a suspect waits
        there until its worker holds nothing else). `decoded` is called when its last chunk
        has gone to inference (its frames are decoded; it waits for outputs, finalizes and
        acks from then on), so that the caller can start the next item's decoding."""
        s = self.settings
        started = self.clock()
        with LeaseKeeper(self.queue, lease, s.queue.lease_s / 3, s.pipeline.stall_s) as keeper:
            try:
                outcome = self._run(lease, keeper, decoded or (lambda: None), ready)
            except RedisError as exc:  # gone for longer than a lease time
                why = f"Redis does not answer ({exc}): left to the queue's upkeep"
                outcome = Outcome(lease.id, Status.ERROR, why)
        self.log_outcome(lease, outcome, self.clock() - started)
        return outcome

    def log_outcome(self, lease: Lease, outcome: Outcome, seconds: float) -> None:
        """The item's one INFO line: its id, URI, outcome (done, dead with its class,
        retried, released with why, lost), attempt and seconds; in JSON with each of them
        a field (event "item")."""
        attempt, end, cls = lease.attempts + 1, _ENDS[outcome.status], outcome.cls or None
        if outcome.status is Status.FAILED and attempt >= self.settings.queue.max_attempts:
            end = "dead"
        elif cls == INTERNAL_ERROR:  # a bug: counted in bugs, dead after max_attempts of them
            end = "dead" if self._dead(lease.id) else "retried"
        text = f"item {lease.id} {end}{f' ({cls})' if cls else ''}: {lease.uri}"
        text += f" (attempt {attempt}, {seconds:.1f} s"
        if outcome.status is Status.ACKED:
            text += f"; {outcome.chunks} chunks, {outcome.frames} frames inferred"
        elif outcome.status is Status.ALREADY_DONE:
            text += "; its outputs were there already"
        text += f"){f': {outcome.reason}' if outcome.reason else ''}"
        fields = {
            "event": "item",
            "item": lease.id,
            "uri": lease.uri,
            "outcome": end,
            "class": cls,
            "reason": outcome.reason or None,
            "attempt": attempt,
            "seconds": round(seconds, 3),
            "frames": outcome.frames,
            "chunks": outcome.chunks,
        }
        log.info("%s", text, extra=fields)

    def _dead(self, item_id: str) -> bool:
        try:
            item = self.queue.get(item_id)
        except RedisError:
            return False
        return item is not None and item.state is State.DEAD

    def _run(
        self,
        lease: Lease,
        keeper: LeaseKeeper,
        decoded: Callable[[], None],
        ready: Callable[[LeaseKeeper], None] | None,
    ) -> Outcome:
        q, persist = self.queue, self._persist
        try:
            if ready is not None:
                ready(keeper)
            return self._process(lease, keeper, decoded)
        except LeaseLost as exc:
            return Outcome(lease.id, Status.LOST, str(exc))
        except Stopped:
            why = "worker stopping (shutdown or preemption)"
            persist(keeper, q.release, lease, why)
            return Outcome(lease.id, Status.RELEASED, why)
        except ItemError as exc:
            verdict = persist(
                keeper, q.fail, lease, exc.reason, retryable=exc.retryable, cls=exc.cls
            )
            if not verdict.ok:
                return Outcome(lease.id, Status.LOST, exc.reason)
            status = Status.FAILED if exc.retryable else Status.DEAD
            return Outcome(lease.id, status, exc.reason, cls=exc.cls)
        except InfraError as exc:
            delay = self.settings.queue.backoff_base_s
            if exc.cls:  # for this video's sake: counted, dead after a bound
                _, dead = persist(keeper, q.release_for, lease, exc.reason, exc.cls, delay_s=delay)
                if dead is not None:
                    return Outcome(lease.id, Status.DEAD, dead, cls=exc.cls)
            else:
                persist(keeper, q.release, lease, exc.reason, delay_s=delay)
            why = f"{exc.reason}; back to the queue in {delay:g} s, no attempt counted"
            return Outcome(lease.id, Status.RELEASED, why)
        except RedisError:
            raise
        except Exception as exc:
            log.exception(
                "item %s: a bug (the item goes back, counted in bugs)",
                lease.id,
                extra={"item": lease.id, "uri": lease.uri},
            )
            text = f"{type(exc).__name__}: {exc}"[:500]
            persist(keeper, q.fail, lease, text, bug=True)
            return Outcome(lease.id, Status.ERROR, text, cls=INTERNAL_ERROR)

    def _persist(
        self, keeper: LeaseKeeper, call: Callable[..., _T], *args: Any, **kwargs: Any
    ) -> _T:
        """A queue call, tried again while Redis does not answer, for up to a lease time."""
        deadline = self.clock() + self.settings.queue.lease_s
        while True:
            try:
                return call(*args, **kwargs)
            except (RedisConnectionError, RedisTimeoutError) as exc:
                if keeper.lost.is_set() or self.clock() >= deadline:
                    raise
                log.warning("Redis does not answer (%s); trying again", exc)
                time.sleep(1.0)

    def _check(self, keeper: LeaseKeeper) -> None:
        if keeper.stalled.is_set():  # the item's own doing: an attempt (its lease is kept)
            raise TransientError(keeper.why, STALLED)
        if keeper.lost.is_set():
            raise LeaseLost(keeper.why)
        if self.stop.is_set():
            raise Stopped

    def _video(self, lease: Lease, source: str | None) -> str:
        return self.store.video(lease.id, output_version(self.config_hash, source, lease.rev))

    def _process(self, lease: Lease, keeper: LeaseKeeper, decoded: Callable[[], None]) -> Outcome:
        known = lease.etag or lease.pin  # what the outputs were made from, if they were
        item = _Item(lease, keeper, self._video(lease, known))
        if known and self.store.is_complete(item.video):  # done before, the ack was lost
            return self._ack(item, self.store.manifest_uri(item.video), 0, 0, Status.ALREADY_DONE)
        started = item.mark = self.clock()
        p, source = self.settings.pipeline, self.settings.source
        if lease.size is not None and lease.size > source.max_video_bytes:
            raise PermanentError(
                f"{lease.uri} is {lease.size} bytes (as enqueued), over max_video_bytes"
                f" ({source.max_video_bytes})",
                TOO_BIG,
            )
        with fetched(lease.uri, source, etag=lease.etag, touch=keeper.touch) as (path, pin):
            item.lap("fetch", self.clock())
            item.pin, item.video = pin, self._video(lease, lease.etag or pin)
            if not known and self.store.is_complete(item.video):
                uri = self.store.manifest_uri(item.video)  # done before, the ack was lost
                return self._ack(item, uri, 0, 0, Status.ALREADY_DONE)
            done = self._resumable(item)
            decoder = self._open(path)
            item.lap("open", self.clock())
            try:
                reader = ChunkReader(decoder, self.sampling, p.chunk_frames, done, reuse=True)
                item.expected = reader.expected_chunks
                item.previews = previews.targets(reader.expected_kept, p.chunk_frames, p.previews)
                frames = self._stream(item, reader, decoded)
            finally:
                decoder.close()
        self._check(keeper)
        total = reader.chunk_count
        if total:  # known only now that every frame went by: record it with the last chunk
            self._save(item, total)
        item.timings["total"] = self.clock() - started
        manifest = {
            "video_id": lease.id,
            "uri": lease.uri,
            "rev": lease.rev,
            "etag": lease.etag or item.pin,
            "version": item.video.rsplit("/", 1)[-1],
            "frames": reader.kept,
            "chunks": total,
            "model": self.inference.model_name,
            "config_hash": self.config_hash,
            "decoder": decoder.info.decoder,
            "source_size": [decoder.info.width, decoder.info.height],
            "resumed_chunks": sorted(done),
            "epoch": lease.epoch,
            "timings_s": {k: round(v, 3) for k, v in item.timings.items()},
            "inference_s": {k: round(v, 3) for k, v in item.inference.items()},
        }
        if p.previews:
            try:  # those of chunks done by an earlier attempt too
                manifest["previews"] = previews.listed(self.store, item.video)
            except InfraError:  # a store that may not be listed: this attempt's own
                manifest["previews"] = sorted(item.drawn)
        uri = self.store.finalize(item.video, total, self.inference.schema, manifest)
        return self._ack(item, uri, total, frames, Status.ACKED)

    def _open(self, path: Path) -> Decoder:
        """The video's decoder: in a child process of bounded memory (decode_process.py), or
        in this one when FRAMEFLEET_DECODE_MEMORY_BYTES is 0."""
        p = self.settings.pipeline
        if p.decode_memory_bytes:
            return ProcessDecoder(
                path, self.sampling, p.decoder, p.decode_threads, self.limits, p.decode_memory_bytes
            )
        return open_decoder(path, self.sampling, p.decoder, p.decode_threads, self.limits)

    def _resumable(self, item: _Item) -> frozenset[int]:
        """The checkpointed chunks this attempt may skip: none when they were made from
        another object than the one just fetched (their checkpoints are dropped with the
        next one), else those whose files are there (a node-local disk, or a crash before
        the directory entry was durable, loses them: they are done again)."""
        lease = item.lease
        if lease.pin is not None and lease.pin != item.pin:
            if lease.chunks_done:
                log.warning(
                    "item %s: %s is not the object its %d checkpointed chunks were made from"
                    " (%s, now %s); starting over",
                    lease.id,
                    lease.uri,
                    len(lease.chunks_done),
                    lease.pin,
                    item.pin,
                    extra={"item": lease.id, "uri": lease.uri},
                )
            return frozenset()
        return frozenset(self.store.chunks_present(item.video, lease.chunks_done))

    def _stream(self, item: _Item, reader: ChunkReader, decoded: Callable[[], None]) -> int:
        """Decode and hand out chunks, at most max_inflight_chunks at a time (and within the
        shared budget); checkpoint each chunk as its output becomes durable. Returns the
        frames sent to inference. On a stop request the chunks already out are still settled
        and checkpointed (for up to DRAIN_S), so that the next worker skips them. `timings`
        gets the seconds spent decoding, waiting for another item's decoding, handing chunks
        out and waiting for inference."""
        frames = 0
        chunks = iter(reader)
        inflight = item.inflight
        try:
            while True:
                with self.decoding:
                    item.lap("decode_wait", self.clock())  # another item's turn
                    chunk = next(chunks, None)
                if chunk is None:
                    break
                item.keeper.touch()
                now = self.clock()
                decode_s = now - item.mark
                item.lap("decode", now)
                self._check(item.keeper)
                self._take_budget(item)
                item.lap("wait", self.clock())
                chunk.previews = previews.positions(
                    item.previews, chunk.index, reader.chunk_frames, len(chunk)
                )
                item.drawn += [previews.name(int(chunk.frame_indices[k])) for k in chunk.previews]
                try:
                    handle = self.inference.submit(item.lease.id, item.video, chunk)
                except BaseException:
                    self.budget.release()
                    raise
                frames += len(chunk)
                inflight.append((chunk.index, handle, len(chunk), decode_s))
                if self.history is not None:
                    lease = item.lease
                    self.history.write(
                        Decoded(
                            id=lease.id, chunk=chunk.index, epoch=lease.epoch, frames=len(chunk)
                        )
                    )
                del chunk  # at most max_inflight_chunks decoded chunks stay referenced
                item.lap("submit", self.clock())
                while len(inflight) >= self.settings.pipeline.max_inflight_chunks:
                    self._settle_next(item)
                item.lap("wait", self.clock())
            decoded()
            while inflight:
                self._settle_next(item)
            item.lap("wait", self.clock())
        except Stopped:
            deadline = self.clock() + DRAIN_S
            while inflight and self.clock() < deadline:
                self._settle_next(item, deadline=deadline)
            self._save(item)
            raise
        except ItemError:  # what is settled is kept: the next attempt skips it
            self._save_quietly(item)
            raise
        finally:
            for _ in inflight:  # left unsettled (the item failed or stopped): its budget back
                self.budget.release()
            inflight.clear()
        return frames

    def _take_budget(self, item: _Item) -> None:
        """Wait for room in the budget shared by this actor's items. While waiting, settle
        this item's own oldest chunk: that frees room whatever the other items do."""
        while not self.budget.acquire(timeout=0.5):
            if item.inflight:
                self._settle_next(item)
            else:
                self._check(item.keeper)

    def _settle_next(self, item: _Item, deadline: float | None = None) -> None:
        """Wait for the oldest chunk's output, then checkpoint it. With a deadline (draining
        on stop) a stop request does not interrupt the wait; past the deadline the chunk is
        left, and stays out (so that the drain leaves it to the next worker)."""
        index, handle, frames, decode_s = item.inflight[0]
        while True:
            if deadline is None:
                self._check(item.keeper)
            elif item.keeper.lost.is_set() or self.clock() >= deadline:
                raise Stopped
            try:
                done = handle.result(timeout=1.0)
                break
            except TimeoutError:  # a chunk out has deadlines of its own (RayPending)
                item.keeper.touch()
                continue
        item.inflight.popleft()
        self.budget.release()
        item.keeper.touch()
        for stage, took in (("infer", done.infer_s), ("write", done.write_s)):
            item.inference[stage] = item.inference.get(stage, 0.0) + took
        work = ChunkWork(frames, decode_s, done.infer_s + done.write_s, done.device)
        if self.history is not None and done.digest is not None:
            lease = item.lease
            self.history.write(
                ChunkWritten(
                    id=lease.id,
                    chunk=index,
                    epoch=lease.epoch,
                    key=f"{item.video}/{chunk_name(index)}",
                    digest=done.digest,
                    frames=frames,
                )
            )
        item.unsaved.append((index, work))
        if self.clock() - item.saved_at >= self.settings.pipeline.checkpoint_s:
            self._save(item)

    def _save(self, item: _Item, total: int | None = None) -> None:
        """Checkpoint the chunks settled since the last checkpoint (with `total`: the last
        chunk again, with the video's number of chunks, known once it is all decoded)."""
        chunks: list[tuple[int, ChunkWork | None]] = list(item.unsaved)
        if total is not None:
            chunks.append((total - 1, None))
        if not chunks:
            return
        call, expected = self.queue.checkpoint, None if total else item.expected
        args = (item.lease, chunks, total, expected, item.pin)
        if not self._persist(item.keeper, call, *args).ok:
            item.keeper.lost.set()
            raise LeaseLost(f"checkpoint of chunks {[c for c, _ in chunks]} refused")
        item.unsaved.clear()
        item.saved_at = self.clock()
        item.expected = None  # written: not sent again with every chunk

    def _save_quietly(self, item: _Item) -> None:
        """_save, for an item that is failing anyway: a refusal or Redis away is logged."""
        try:
            self._save(item)
        except (LeaseLost, RedisError) as exc:
            log.debug("item %s: its settled chunks were not checkpointed: %s", item.lease.id, exc)

    def _ack(self, item: _Item, uri: str, chunks: int, frames: int, status: Status) -> Outcome:
        """Into the output root's index and dataset (again, when done before: a worker that
        died between the manifest and the ack may not have), then acknowledged. The outputs
        are complete whatever the index says: a store that refuses the index's reads or
        writes (an S3 role without s3:ListBucket, say) is said in a warning, not a reason to
        hold the video back; `framefleet results rebuild` makes the index from the
        manifests."""
        try:
            self.results.publish(item.video)
        except Exception as exc:
            log.warning(
                "item %s: done, but not in the results index of %s (%s: %s); `framefleet"
                " results rebuild` adds it",
                item.lease.id,
                self.store.base,
                type(exc).__name__,
                exc,
                exc_info=not isinstance(exc, InfraError),
                extra={"item": item.lease.id, "uri": item.lease.uri},
            )
        stages = None if status is Status.ALREADY_DONE else {**item.timings, **item.inference}
        verdict: Verdict = self._persist(item.keeper, self.queue.ack, item.lease, uri, stages)
        if not verdict.ok:
            raise LeaseLost(f"ack refused ({verdict.value})")
        return Outcome(item.lease.id, status, chunks=chunks, frames=frames, result=uri)


# -- in-process inference (tests, tools, single-process runs) ---------------------------------


class _Done:
    def __init__(self, done: ChunkDone) -> None:
        self.done = done

    def result(self, timeout: float | None = None) -> ChunkDone:
        return self.done


def infer_chunk(
    model: FrameModel,
    store: OutputStore,
    item_id: str,
    video: str,
    chunk: Chunk,
    digest: bool = False,
) -> ChunkDone:
    """Run the model on one chunk and write its output under `video` (what an inference
    actor does). A chunk whose output exists is not run again (rows -1). `digest`: say the
    digest of the rows, if this call wrote them (a chaos run's history)."""
    device = str(getattr(model, "device", "cpu")).split(":", 1)[0]
    if store.has_chunk(video, chunk.index):
        return ChunkDone(-1, device=device)
    started = time.perf_counter()
    try:
        records = model.predict(chunk.images, chunk.source_size)
    except ItemError:
        raise
    except (ValueError, IndexError) as exc:
        raise PermanentError(
            f"the model failed on chunk {chunk.index}: {exc}", MODEL_ERROR
        ) from exc
    except RuntimeError as exc:  # CUDA OOM, device errors: another try may succeed
        raise TransientError(
            f"the model failed on chunk {chunk.index}: {exc}", MODEL_ERROR
        ) from exc
    inferred = time.perf_counter()
    if chunk.previews:  # before the rows: a chunk that is done has its previews
        previews.write(
            store, video, chunk.images, chunk.frame_indices, chunk.previews, records,
            chunk.source_size,
        )  # fmt: skip
    table = records_table(
        item_id, model.name, model.schema, records, chunk.frame_indices, chunk.pts_s
    )
    # the first write wins: a resent chunk's second run, or a zombie actor's, never replaces
    # the file a merge may already have read
    wrote = store.write_chunk(video, chunk.index, table, checked=True)
    return ChunkDone(
        int(table.num_rows),
        inferred - started,
        time.perf_counter() - inferred,
        device,
        table_digest(table) if digest and wrote else None,
    )


class LocalInference:
    """Inference in the calling process, synchronously."""

    def __init__(self, model: FrameModel, store: OutputStore) -> None:
        self.model, self.store = model, store
        self.schema, self.model_name = model.schema, model.name

    def submit(self, item_id: str, video: str, chunk: Chunk) -> Pending:
        return _Done(infer_chunk(self.model, self.store, item_id, video, chunk))
