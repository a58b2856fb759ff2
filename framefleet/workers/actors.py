"""The Ray actors and the pools the driver builds from them.

- InferenceActor: holds a fractional GPU (or CPU with bounded torch threads), loads the model
  once, runs it on the chunks decode actors send and writes each chunk's output.
- DecodeActor: claims items from the queue itself and runs VideoJob on each, sending chunks
  to the inference actors through Ray's object store (RayInference); a SIGTERM or a stop
  request makes it stop claiming and release what it holds.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import threading
from dataclasses import asdict
from typing import Any

import numpy as np

from framefleet.queue import Queue, Supervision, connect
from framefleet.settings import Settings

from .decode import Chunk
from .errors import TransientError
from .model import load_model
from .outputs import OutputStore, warm_up
from .pipeline import Pending, VideoJob, infer_chunk
from .ray_adapter import ActorGone, RayAdapter

RESUBMITS = 3  # a chunk whose inference actor died goes to another one this many times


class Heartbeat:
    """A worker's heartbeat in Redis (Supervision.heartbeat), from a daemon thread, every
    quarter of the coordinator's stale time, until the process ends or close() is called."""

    def __init__(self, queue: Queue, name: str, stale_s: float) -> None:
        self.supervision, self.name = Supervision(queue), name
        self.closed = threading.Event()
        self.supervision.heartbeat(name)
        threading.Thread(target=self._run, args=(stale_s / 4,), daemon=True, name="beat").start()

    def _run(self, interval: float) -> None:
        while not self.closed.wait(interval):
            with contextlib.suppress(Exception):  # Redis away: the next beat tries again
                self.supervision.heartbeat(self.name)

    def close(self) -> None:
        self.closed.set()
        with contextlib.suppress(Exception):
            self.supervision.leave(self.name)


class InferenceActor:
    def __init__(self, settings: Settings, redis_url: str | None = None, name: str = "") -> None:
        self.model = load_model(settings.model)
        self.store = OutputStore(settings.pipeline.out, settings.source)
        p = settings.pipeline
        # The first forward pass (allocations, kernel selection) and the first table are slow:
        # do both before reporting ready, on frames of the configured size.
        width, height = p.width or 640, p.height or 360
        frames = np.zeros((min(2, settings.model.batch_size), height, width, 3), np.uint8)
        self.model.predict(frames, (width, height))
        warm_up(self.model.schema)
        if redis_url is not None:
            self.heartbeat = Heartbeat(
                Queue(connect(redis_url), settings.queue), name, settings.coordinator.stale_s
            )

    def describe(self) -> tuple[str, Any, int, str]:
        """(model name, record schema, pid, node id): also the readiness call."""
        return self.model.name, self.model.schema, os.getpid(), RayAdapter().node_id()

    def infer(self, item_id: str, chunk: Chunk) -> int:
        return infer_chunk(self.model, self.store, item_id, chunk)


class RayPending:
    def __init__(self, pool: RayInference, item_id: str, chunk: Chunk) -> None:
        self.pool, self.item_id, self.chunk = pool, item_id, chunk
        self.tries = 0
        self._send()

    def _send(self) -> None:
        self.actor = self.pool.pick()
        self.ref = self.pool.adapter.call(self.actor, "infer", self.item_id, self.chunk)

    def result(self, timeout: float | None = None) -> int:
        while True:
            try:
                rows = int(self.pool.adapter.get(self.ref, timeout=timeout))
                self.chunk = None  # type: ignore[assignment]  # let the frames go
                return rows
            except ActorGone as exc:
                self.tries += 1
                if self.tries > RESUBMITS:
                    raise TransientError(f"inference actors keep dying: {exc}") from None
                self._send()


class RayInference:
    """Sends chunks to a pool of inference actors, round robin."""

    def __init__(
        self, adapter: RayAdapter, actors: list[Any], model_name: str, schema: Any
    ) -> None:
        if not actors:
            raise ValueError("no inference actors")
        self.adapter, self.actors = adapter, actors
        self.model_name, self.schema = model_name, schema
        self._next = itertools.count()

    def pick(self) -> Any:
        actors = self.actors
        return actors[next(self._next) % len(actors)]

    def set_actors(self, actors: list[Any]) -> None:
        """A new pool (after a replacement or scaling); chunks out keep their actor."""
        if not actors:
            raise ValueError("no inference actors")
        self.actors = list(actors)

    def submit(self, item_id: str, chunk: Chunk) -> Pending:
        return RayPending(self, item_id, chunk)


def lower_priority(increment: int) -> None:
    """Make this process `increment` nicer, every thread of it. On Linux nice() changes the
    calling thread only, and an actor's __init__ may not run in the threads that later decode
    (or start decord's and Ray's threads), so each existing thread is changed; threads made
    later inherit it."""
    if increment <= 0:
        return
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:  # no /proc (macOS): the process as a whole
        os.nice(increment)
        return
    for tid in tids:
        with contextlib.suppress(OSError):  # a thread that has just ended
            now = os.getpriority(os.PRIO_PROCESS, tid)
            os.setpriority(os.PRIO_PROCESS, tid, min(19, now + increment))


class _Place:
    """One of a decode actor's items_per_decoder places for a decoding item, given back once:
    when the item's frames are all decoded, or when it ends, whichever comes first (both in
    the item's own thread)."""

    def __init__(self, places: threading.Semaphore) -> None:
        self._places = places
        self._held = True

    def give_back(self) -> None:
        if self._held:
            self._held = False
            self._places.release()


class DecodeActor:
    def __init__(self, settings: Settings, redis_url: str, inference: list[Any], name: str) -> None:
        # Inference first where both share cores: decoders run ahead of it, within
        # max_inflight_chunks, on the cycles it leaves (bench/pipeline.py measures the gain).
        lower_priority(settings.pipeline.decode_nice)
        adapter = RayAdapter()
        model_name, schema, *_ = adapter.get(adapter.call(inference[0], "describe"))
        warm_up(schema)  # finalize reads and writes parquet: its first time is slow
        self.name = name
        self.settings = settings
        self.queue = Queue(connect(redis_url), settings.queue)
        store = OutputStore(settings.pipeline.out, settings.source)
        self.stop = threading.Event()  # release what is held and return
        self.draining = threading.Event()  # finish the items held, claim no more
        self.pool = RayInference(adapter, inference, model_name, schema)
        self.job = VideoJob(self.queue, store, self.pool, settings, stop=self.stop)
        self.heartbeat = Heartbeat(self.queue, name, settings.coordinator.stale_s)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda signum, frame: self.stop.set())

    def ready(self) -> tuple[int, str]:
        """(pid, node id)."""
        return os.getpid(), RayAdapter().node_id()

    def request_stop(self) -> None:
        self.stop.set()

    def drain(self) -> None:
        self.draining.set()

    def set_inference(self, actors: list[Any]) -> None:
        self.pool.set_actors(actors)

    def run(self, until_empty: bool = False) -> list[dict[str, Any]]:
        """Claim and process items until stopped (or, with until_empty, until the queue has
        nothing queued, delayed or leased), each in its own thread. items_per_decoder items
        decode at once; an item whose frames are all decoded gives its place to the next one
        while its last chunks are in inference, so that the decoder does not idle at the end
        of each video (VideoJob bounds the chunks out for all of them together). Returns what
        happened to each item."""
        outcomes: list[dict[str, Any]] = []
        places = threading.Semaphore(self.settings.pipeline.items_per_decoder)
        threads = [
            threading.Thread(
                target=self._loop, args=(until_empty, outcomes, places), name=f"item-{i}"
            )
            for i in range(2 * self.settings.pipeline.items_per_decoder)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.heartbeat.close()
        return outcomes

    def _loop(
        self, until_empty: bool, outcomes: list[dict[str, Any]], places: threading.Semaphore
    ) -> None:
        while not self.stop.is_set() and not self.draining.is_set():
            if not places.acquire(timeout=0.2):
                if until_empty and self._drained():
                    return
                continue
            place = _Place(places)
            try:
                # Until empty, a short wait: a thread waiting here while the last item
                # finishes in another one notices the queue is drained this much later.
                leases = self.queue.claim(1, self.name, block=0.2 if until_empty else 1.0)
                if leases and (self.stop.is_set() or self.draining.is_set()):  # came meanwhile
                    for lease in leases:
                        self.queue.release(lease, "worker stopping (shutdown or preemption)")
                    return
                if not leases:
                    if until_empty and self._drained():
                        return
                    continue
                outcomes.append(asdict(self.job.run(leases[0], decoded=place.give_back)))
            finally:
                place.give_back()

    def _drained(self) -> bool:
        counts = self.queue.stats().counts
        return counts["queued"] == counts["delayed"] == counts["leased"] == counts["inbox"] == 0


class Fleet:
    """The decode and inference actors of one driver (the coordinator supervises them)."""

    def __init__(
        self, settings: Settings, redis_url: str, adapter: RayAdapter | None = None
    ) -> None:
        self.settings, self.redis_url = settings, redis_url
        self.adapter = adapter or RayAdapter()
        self.inference: list[Any] = []
        self.decoders: list[Any] = []

    def start(self, ready_timeout: float = 300.0) -> Fleet:
        p, a = self.settings.pipeline, self.adapter
        infer_cls = a.remote_class(InferenceActor)
        decode_cls = a.remote_class(DecodeActor)
        infer_opts = {"num_gpus": p.gpus_per_inference, "num_cpus": p.cpus_per_inference}
        self.inference = [
            a.create(infer_cls, infer_opts, self.settings) for _ in range(p.inference_actors)
        ]
        a.wait_ready([a.call(actor, "describe") for actor in self.inference], ready_timeout)
        decode_opts = {"num_cpus": p.cpus_per_decoder, "max_concurrency": 4}
        self.decoders = [
            a.create(
                decode_cls,
                decode_opts,
                self.settings,
                self.redis_url,
                self.inference,
                f"decoder-{i}",
            )
            for i in range(p.decode_actors)
        ]
        a.wait_ready([a.call(actor, "ready") for actor in self.decoders], ready_timeout)
        return self

    def run_until_empty(self, timeout: float | None = None) -> list[dict[str, Any]]:
        refs = [self.adapter.call(d, "run", True) for d in self.decoders]
        return [o for ref in refs for o in self.adapter.get(ref, timeout=timeout)]

    def stop(self) -> None:
        for actor in self.decoders:
            self.adapter.call(actor, "request_stop")
        for actor in [*self.decoders, *self.inference]:
            self.adapter.kill(actor)
        self.decoders, self.inference = [], []
