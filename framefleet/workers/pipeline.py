"""One video, from lease to ack: the state machine a decode actor runs for each item.

    claim -> (outputs already complete? ack) -> fetch -> decode chunk by chunk, skipping
    checkpointed ones -> each chunk to inference (at most max_inflight_chunks out) -> as each
    chunk's output is durable: progress(chunk) -> finalize (merged file, manifest last) ->
    ack(manifest), fenced by the lease's epoch.

A background thread renews the lease every third of its length, whatever the decoder is
doing; when a renewal is refused the item stops at once (another worker owns it now).
PermanentError -> fail(retryable=False): dead with its reason. TransientError ->
fail(retryable=True): retried with backoff. A stop request (SIGTERM, preemption) releases
the lease without counting an attempt. Nothing here calls Ray: inference is behind the
`Inference` protocol (a Ray actor pool in production, in-process in tests).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from framefleet.queue import Lease, Queue
from framefleet.settings import Settings

from .decode import Chunk, ChunkReader, Sampling, open_decoder
from .errors import ItemError, PermanentError, TransientError
from .model import FrameModel
from .outputs import OutputStore, records_table
from .sources import fetched

DRAIN_S = 10.0  # on a stop request, how long chunks already out may still be settled


class LeaseLost(Exception):
    """The queue refused a renewal, a checkpoint or the ack: another worker owns the item."""


class Stopped(Exception):
    """The worker was asked to stop (shutdown or preemption)."""


class Pending(Protocol):
    """A chunk handed to inference."""

    def result(self, timeout: float | None = None) -> int:
        """Rows written for the chunk (raises ItemError)."""
        ...


class Inference(Protocol):
    schema: Any  # the model's record schema (pyarrow)
    model_name: str

    def submit(self, item_id: str, chunk: Chunk) -> Pending: ...


@dataclass
class Outcome:
    item_id: str
    status: str  # acked | already-done | failed | dead | lost | released
    reason: str = ""
    chunks: int = 0
    frames: int = 0
    result: str = ""


class LeaseKeeper:
    """Renews a lease from a background thread every `interval` seconds."""

    def __init__(self, queue: Queue, lease: Lease, interval: float) -> None:
        self.queue, self.lease, self.interval = queue, lease, interval
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"renew-{lease.id}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                ok = self.queue.renew(self.lease).ok
            except Exception:  # Redis unreachable for a moment: try again next time
                continue
            if not ok:
                self.lost.set()
                return


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
    ) -> None:
        self.queue, self.store, self.inference, self.settings = queue, store, inference, settings
        self.stop = stop or threading.Event()
        self.clock = clock
        p = settings.pipeline
        self.sampling = Sampling(fps=p.sample_fps, stride=p.stride, width=p.width, height=p.height)
        self.config_hash = p.config_hash(settings.model)
        self.decoding = threading.Lock()
        self.budget = threading.BoundedSemaphore(p.items_per_decoder * p.max_inflight_chunks)

    def run(self, lease: Lease, decoded: Callable[[], None] | None = None) -> Outcome:
        """Process one item. `decoded` is called when its last chunk has gone to inference
        (its frames are decoded; it waits for outputs, finalizes and acks from then on), so
        that the caller can start the next item's decoding meanwhile."""
        interval = self.settings.queue.lease_s / 3
        with LeaseKeeper(self.queue, lease, interval) as keeper:
            try:
                return self._process(lease, keeper, decoded or (lambda: None))
            except LeaseLost as exc:
                return Outcome(lease.id, "lost", str(exc))
            except Stopped:
                self.queue.release(lease, "worker stopping (shutdown or preemption)")
                return Outcome(lease.id, "released", "stop requested")
            except ItemError as exc:
                verdict = self.queue.fail(lease, exc.reason, retryable=exc.retryable)
                if not verdict.ok:
                    return Outcome(lease.id, "lost", exc.reason)
                return Outcome(lease.id, "failed" if exc.retryable else "dead", exc.reason)

    def _check(self, keeper: LeaseKeeper) -> None:
        if keeper.lost.is_set():
            raise LeaseLost("the lease was lost (a renewal was refused)")
        if self.stop.is_set():
            raise Stopped

    def _process(self, lease: Lease, keeper: LeaseKeeper, decoded: Callable[[], None]) -> Outcome:
        if self.store.is_complete(lease.id):  # done before, only the ack was lost
            return self._ack(
                lease,
                self.store.uri(self.store.key(lease.id, "_manifest.json")),
                0,
                0,
                "already-done",
            )
        timings: dict[str, float] = {}
        started = self.clock()
        p = self.settings.pipeline
        with fetched(lease.uri, self.settings.source) as path:
            mark = self._lap(timings, "fetch", started)
            decoder = open_decoder(path, self.sampling, prefer=p.decoder, threads=p.decode_threads)
            mark = self._lap(timings, "open", mark)
            try:
                reader = ChunkReader(decoder, self.sampling, p.chunk_frames, lease.chunks_done)
                frames = self._stream(lease, keeper, reader, timings, decoded)
            finally:
                decoder.close()
        self._check(keeper)
        total = reader.chunk_count
        if total:  # known only now that every frame went by: record it with the last chunk
            self._progress(lease, keeper, total - 1, total)
        timings["total"] = self.clock() - started
        manifest = {
            "video_id": lease.id,
            "uri": lease.uri,
            "frames": reader.kept,
            "chunks": total,
            "model": self.inference.model_name,
            "config_hash": self.config_hash,
            "decoder": decoder.info.decoder,
            "source_size": [decoder.info.width, decoder.info.height],
            "resumed_chunks": sorted(lease.chunks_done),
            "epoch": lease.epoch,
            "timings_s": {k: round(v, 3) for k, v in timings.items()},
        }
        uri = self.store.finalize(lease.id, total, self.inference.schema, manifest)
        return self._ack(lease, uri, total, frames, "acked")

    def _lap(self, timings: dict[str, float], name: str, since: float) -> float:
        now = self.clock()
        timings[name] = timings.get(name, 0.0) + now - since
        return now

    def _stream(
        self,
        lease: Lease,
        keeper: LeaseKeeper,
        reader: ChunkReader,
        timings: dict[str, float],
        decoded: Callable[[], None],
    ) -> int:
        """Decode and hand out chunks, at most max_inflight_chunks at a time (and within the
        shared budget); checkpoint each chunk as its output becomes durable. Returns the
        frames sent to inference. On a stop request the chunks already out are still settled
        and checkpointed (for up to DRAIN_S), so that the next worker skips them. `timings`
        gets the seconds spent decoding, waiting for another item's decoding, handing chunks
        out and waiting for inference."""
        inflight: deque[tuple[int, Pending]] = deque()
        frames = 0
        chunks = iter(reader)
        mark = self.clock()
        try:
            while True:
                with self.decoding:
                    mark = self._lap(timings, "decode_wait", mark)  # another item's turn
                    chunk = next(chunks, None)
                if chunk is None:
                    break
                mark = self._lap(timings, "decode", mark)
                self._check(keeper)
                self._take_budget(lease, keeper, inflight)
                mark = self._lap(timings, "wait", mark)
                try:
                    handle = self.inference.submit(lease.id, chunk)
                except BaseException:
                    self.budget.release()
                    raise
                frames += len(chunk)
                inflight.append((chunk.index, handle))
                del chunk  # at most max_inflight_chunks decoded chunks stay referenced
                mark = self._lap(timings, "submit", mark)
                while len(inflight) >= self.settings.pipeline.max_inflight_chunks:
                    self._settle_next(lease, keeper, inflight)
                mark = self._lap(timings, "wait", mark)
            decoded()
            while inflight:
                self._settle_next(lease, keeper, inflight)
            self._lap(timings, "wait", mark)
        except Stopped:
            deadline = self.clock() + DRAIN_S
            while inflight and self.clock() < deadline:
                self._settle_next(lease, keeper, inflight, deadline=deadline)
            raise
        finally:
            for _ in inflight:  # left unsettled (the item failed or stopped): its budget back
                self.budget.release()
            inflight.clear()
        return frames

    def _take_budget(
        self, lease: Lease, keeper: LeaseKeeper, inflight: deque[tuple[int, Pending]]
    ) -> None:
        """Wait for room in the budget shared by this actor's items. While waiting, settle
        this item's own oldest chunk: that frees room whatever the other items do."""
        while not self.budget.acquire(timeout=0.5):
            if inflight:
                self._settle_next(lease, keeper, inflight)
            else:
                self._check(keeper)

    def _settle_next(
        self,
        lease: Lease,
        keeper: LeaseKeeper,
        inflight: deque[tuple[int, Pending]],
        deadline: float | None = None,
    ) -> None:
        index, handle = inflight.popleft()
        try:
            self._settle(lease, keeper, index, handle, deadline)
        finally:
            self.budget.release()

    def _settle(
        self,
        lease: Lease,
        keeper: LeaseKeeper,
        index: int,
        handle: Pending,
        deadline: float | None = None,
    ) -> None:
        """Wait for a chunk's output, then checkpoint it. With a deadline (draining on stop)
        a stop request does not interrupt the wait; past the deadline the chunk is left."""
        while True:
            if deadline is None:
                self._check(keeper)
            elif keeper.lost.is_set() or self.clock() >= deadline:
                raise Stopped
            try:
                handle.result(timeout=1.0)
                break
            except TimeoutError:
                continue
        self._progress(lease, keeper, index, None)

    def _progress(self, lease: Lease, keeper: LeaseKeeper, index: int, total: int | None) -> None:
        if not self.queue.progress(lease, index, total).ok:
            keeper.lost.set()
            raise LeaseLost(f"checkpoint of chunk {index} refused")

    def _ack(self, lease: Lease, uri: str, chunks: int, frames: int, status: str) -> Outcome:
        verdict = self.queue.ack(lease, uri)
        if not verdict.ok:
            raise LeaseLost(f"ack refused ({verdict.value})")
        return Outcome(lease.id, status, chunks=chunks, frames=frames, result=uri)


# -- in-process inference (tests, tools, single-process runs) ---------------------------------


class _Done:
    def __init__(self, rows: int) -> None:
        self.rows = rows

    def result(self, timeout: float | None = None) -> int:
        return self.rows


def infer_chunk(model: FrameModel, store: OutputStore, item_id: str, chunk: Chunk) -> int:
    """Run the model on one chunk and write its output (what an inference actor does).
    A chunk whose output exists is not run again. Returns the rows written (-1: skipped)."""
    if store.has_chunk(item_id, chunk.index):
        return -1
    try:
        records = model.predict(chunk.images, chunk.source_size)
    except ItemError:
        raise
    except (ValueError, IndexError) as exc:
        raise PermanentError(f"the model failed on chunk {chunk.index}: {exc}") from exc
    except RuntimeError as exc:  # CUDA OOM, device errors: another try may succeed
        raise TransientError(f"the model failed on chunk {chunk.index}: {exc}") from exc
    table = records_table(
        item_id, model.name, model.schema, records, chunk.frame_indices, chunk.pts_s
    )
    store.write_chunk(item_id, chunk.index, table, if_absent=False)  # checked above
    return int(table.num_rows)


class LocalInference:
    """Inference in the calling process, synchronously."""

    def __init__(self, model: FrameModel, store: OutputStore) -> None:
        self.model, self.store = model, store
        self.schema, self.model_name = model.schema, model.name

    def submit(self, item_id: str, chunk: Chunk) -> Pending:
        return _Done(infer_chunk(self.model, self.store, item_id, chunk))
