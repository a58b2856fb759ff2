"""The Ray actors and the pools the driver builds from them.

- InferenceActor: holds a fractional GPU (or CPU with bounded torch threads), loads the model
  once, runs it on the chunks decode actors send and writes each chunk's output.
- DecodeActor: claims items from the queue itself and runs VideoJob on each, sending chunks
  to the inference actors through Ray's object store (RayInference). It claims nothing while
  no inference actor is ready; a SIGTERM, a stop request, or another coordinator taking the
  lead makes it stop claiming and release what it holds.
- Fleet: both pools without a coordinator (the Python API): its decode actors also sweep the
  queue, so that a killed one's videos come back.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import os
import random
import signal
import socket
import threading
import time
import weakref
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, replace
from typing import Any

import numpy as np
from redis.exceptions import RedisError

from framefleet import logs
from framefleet.chaos import recorder
from framefleet.queue import (
    Lease,
    Queue,
    QueueFull,
    Supervision,
    WorkerRetired,
    connect,
    queue_at,
)
from framefleet.queue.supervision import new_generation, worker_name
from framefleet.settings import PipelineSettings, Settings

from . import heap
from .decode import Chunk
from .errors import MODEL_ERROR, InfraError, TransientError
from .model import load_model, pin_weights
from .outputs import OutputStore, check_root, warm_up
from .pipeline import (
    ChunkDone,
    LeaseKeeper,
    LeaseLost,
    Outcome,
    Pending,
    Status,
    Stopped,
    VideoJob,
    infer_chunk,
)
from .ray_adapter import ActorGone, RayAdapter

log = logging.getLogger(__name__)

RESUBMITS = 3  # a chunk under which this many inference actors died fails the item
OUTCOMES_KEPT = 1000  # the newest outcomes a decode actor keeps (run() returns them)


class Heartbeat:
    """A worker's heartbeat in Redis, from a daemon thread, every quarter of the stale time,
    until close(). With `holding` (a decode actor) it says which items it holds, and the
    queue gives back the leases it has lost track of. With `leader`, `deposed()` is called
    once another coordinator holds the leader lease. `retired()` is called once the queue has
    retired the worker (its fleet ended: WorkerRetired). With `sweep`, it also sweeps the
    queue (for a fleet without a coordinator). `silenced()` is called once its beats have
    failed for max(stale_s, leader_ttl_s): by then the queue counts the worker as gone and
    its leader has given its fleet up, so going on would be work (and a GPU) for nothing; a
    shorter Redis outage is waited out."""

    def __init__(
        self,
        queue: Queue,
        name: str,
        settings: Settings,
        holding: Callable[[], list[str]] | None = None,
        leader: str | None = None,
        deposed: Callable[[str], None] | None = None,
        retired: Callable[[], None] | None = None,
        sweep: bool = False,
        silenced: Callable[[], None] | None = None,
        info: Mapping[str, str | int] | None = None,
    ) -> None:
        self.supervision, self.name, self.settings = Supervision(queue), name, settings
        self.holding, self.leader, self.deposed, self.sweep = holding, leader, deposed, sweep
        self.retired, self.silenced = retired, silenced
        self.info: dict[str, str | int] = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "node": RayAdapter().node_id(),
            **(info or {}),
        }
        self._info_known = False  # sent with each beat until the queue says it knows it
        self.closed = threading.Event()
        self._beat()
        self.beaten = time.monotonic()  # the last beat written
        stale = settings.coordinator.stale_s
        threading.Thread(target=self._run, args=(stale / 4,), daemon=True, name="beat").start()

    def _beat(self) -> None:
        c = self.settings.coordinator
        held = None if self.holding is None else self.holding()
        info = None if self._info_known else self.info
        beat = self.supervision.beat(self.name, held, grace_s=c.stale_s, info=info)
        self._info_known = beat.info_known
        if beat.back:
            log.warning(
                "%s: %d leases it no longer held went back to the queue", self.name, beat.back
            )
        holder, told = beat.leader, self.deposed
        if self.leader is not None and told is not None and holder not in (None, self.leader):
            told(str(holder))
        if self.sweep:
            self.supervision.sweep(c.stale_s, gap_s=c.gap_s)

    def _run(self, interval: float) -> None:
        c = self.settings.coordinator
        give_up = max(c.stale_s, c.leader_ttl_s)
        while not self.closed.wait(interval):
            try:
                self._beat()
                self.beaten = time.monotonic()
            except WorkerRetired as exc:
                log.warning("%s: retired by the queue (%s): stopping", self.name, exc)
                if self.retired is not None:
                    self.retired()
                return
            except RedisError as exc:  # Redis away: the next beat tries again, for a while
                silent = time.monotonic() - self.beaten
                log.warning("%s: heartbeat failed (%.0f s without one): %s", self.name, silent, exc)
                if silent >= give_up and self.silenced is not None:
                    log.warning(
                        "%s: no heartbeat written for %.0f s: the queue counts it gone and"
                        " its leader has given its fleet up: stopping",
                        self.name,
                        silent,
                        extra={"event": "worker_silenced"},
                    )
                    self.silenced()
                    return
            except Exception:  # a bug: logged, and the heartbeat goes on
                log.exception("%s: heartbeat failed", self.name)

    def close(self) -> None:
        self.closed.set()
        try:
            self.supervision.leave(self.name)
        except RedisError as exc:
            log.warning("%s: could not leave: %s", self.name, exc)


def beat_queue(redis_url: str, settings: Settings) -> Queue:
    """A worker's heartbeat client: no retries and replies awaited for a beat's interval at
    most, so that a beat is never sent late (from an old snapshot of what the worker holds)
    and a cut-off worker counts its silence by its own clock (the next beat is the retry)."""
    interval = settings.coordinator.stale_s / 4
    return Queue(connect(redis_url, retry_s=0, timeout_s=interval), settings.queue)


def _exit_silenced() -> None:
    """An inference actor cut off from Redis: its process ends, so that its GPU is free for
    the fleet that has taken over (the pools start a new actor where Redis answers)."""
    logging.shutdown()
    os._exit(1)


class InferenceActor:
    def __init__(self, settings: Settings, redis_url: str | None = None, name: str = "") -> None:
        heap.keep_freed_memory()  # the model's buffers: reused, not faulted in per batch
        logs.configure(settings.log, actor=name or "inference", node=RayAdapter().node_id())
        check_root(settings.pipeline.out, settings.pipeline.out_marker)
        self.model = load_model(settings.model)
        self.store = OutputStore(settings.pipeline.out, settings.source)
        self.digest = settings.pipeline.history is not None  # a chaos run's history
        p = settings.pipeline
        # The first forward pass (allocations, kernel selection) and the first table are slow:
        # do both before reporting ready, on frames of the configured size.
        width, height = p.width or 640, p.height or 360
        frames = np.zeros((min(2, settings.model.batch_size), height, width, 3), np.uint8)
        self.model.predict(frames, (width, height))
        warm_up(self.model.schema)
        if redis_url is not None:
            beats = beat_queue(redis_url, settings)
            share = {"gpus": str(p.gpus_per_inference)}  # what Ray gave it: 0 without a GPU
            self.heartbeat = Heartbeat(beats, name, settings, silenced=_exit_silenced, info=share)

    def describe(self) -> tuple[str, Any, int, str]:
        """(model name, record schema, pid, node id): also the readiness call."""
        return self.model.name, self.model.schema, os.getpid(), RayAdapter().node_id()

    def infer(self, item_id: str, video: str, chunk: Chunk) -> ChunkDone:
        return infer_chunk(self.model, self.store, item_id, video, chunk, self.digest)


FADE = 4.0  # an actor's latency average not renewed for FADE times itself is down to 1/e


class RayInference:
    """Sends chunks to a pool of inference actors. Each chunk goes to one of the actors this
    decode actor has the fewest chunks out at; among those, the better of two drawn at
    random, by the time its chunks have taken lately (a peak-weighted moving average, from
    send to done: an actor other decode actors keep busy answers slower, and is left for
    one less busy). Two at random, not the best of all, so that decode actors that see the
    same figures do not all pile onto one actor. (A round robin from the first actor, as
    before, sent every decode actor's chunks to the same few actors at once: at 16
    inference actors they waited half the time, bench/scale.py.) The driver sends a new
    pool as it changes (set_actors, empty while none is ready); an actor a chunk found dead
    is left out from then on."""

    def __init__(
        self,
        adapter: RayAdapter,
        actors: list[Any],
        model_name: str,
        schema: Any,
        settings: PipelineSettings,
    ) -> None:
        self.adapter, self.settings = adapter, settings
        self.model_name, self.schema = model_name, schema
        self._changed = threading.Condition()
        self._actors = list(actors)
        self._dead: set[str] = set()
        # the chunks out, by weak reference: one its item gave up on is not counted for ever
        self._out: weakref.WeakSet[RayPending] = weakref.WeakSet()
        # actor id -> (seconds a chunk lately, when that was last renewed: monotonic)
        self._latency: dict[str, tuple[float, float]] = {}
        self._random = random.Random()

    def live(self) -> list[Any]:
        with self._changed:
            return [a for a in self._actors if self.adapter.actor_id(a) not in self._dead]

    def pick(self, avoid: Collection[str] = ()) -> Any | None:
        """The next live actor (one not in `avoid`, when there is another), or None."""
        live = self.live()
        if not live:
            return None
        fresh = [a for a in live if self.adapter.actor_id(a) not in avoid] or live
        self._observe()
        with self._changed:
            out = collections.Counter(p.actor_id for p in self._out if p.done_at is None)
            latency = dict(self._latency)
        ids = [self.adapter.actor_id(a) for a in fresh]
        fewest = min(out[i] for i in ids)
        drawn = [(a, i) for a, i in zip(fresh, ids, strict=True) if out[i] == fewest]
        if len(drawn) > 2:
            drawn = self._random.sample(drawn, 2)
        now = time.monotonic()

        def lately(actor_id: str) -> float | None:
            """Its average, faded over a few of its own lengths when not renewed: an actor
            left for a slow spell is tried again, not judged by it for ever."""
            if actor_id not in latency:
                return None
            took, at = latency[actor_id]
            return took * math.exp(-(now - at) / (FADE * took)) if took > 0 else 0.0

        seen = {i: lately(i) for _, i in drawn}
        known = [t for t in seen.values() if t is not None]
        guess = min(known, default=0.0)  # one not heard from yet: as good as the better
        self._random.shuffle(drawn)  # a tie: either
        return min(drawn, key=lambda d: t if (t := seen[d[1]]) is not None else guess)[0]

    def _observe(self) -> None:
        """The chunks out that have finished since the last look (without waiting): the
        time each took goes into its actor's moving average."""
        with self._changed:
            pending = [p for p in self._out if p.done_at is None and p.ref is not None]
        if not pending:
            return
        try:
            done = self.adapter.done([p.ref for p in pending])
        except Exception:  # a lost object, a dead actor: its result() says so
            return
        now, finished = time.monotonic(), set(done)
        for p in pending:
            if p.ref in finished:
                self.took(p, now)

    def took(self, pending: RayPending, now: float) -> None:
        """`pending`'s chunk was done at `now` (once: later calls are ignored)."""
        with self._changed:
            if pending.done_at is not None or pending.actor_id is None:
                return
            pending.done_at = now
            took, before = now - pending.sent_at, self._latency.get(pending.actor_id)
            # up at once (a queue building up shows at the next chunk), down gradually
            if before is not None and took <= before[0]:
                took = 0.7 * before[0] + 0.3 * took
            self._latency[pending.actor_id] = (took, now)

    def sent(self, pending: RayPending, actor: Any | None) -> None:
        """`pending` is out at `actor` now (None: at none)."""
        with self._changed:
            pending.actor_id = None if actor is None else self.adapter.actor_id(actor)
            pending.done_at = None
            if actor is None:
                self._out.discard(pending)
            else:
                self._out.add(pending)

    def wait_ready(self, timeout: float) -> bool:
        """Until some actor is live (True), or timeout."""
        end = time.monotonic() + timeout
        with self._changed:
            while not self._live_locked():
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            return True

    def _live_locked(self) -> bool:
        return any(self.adapter.actor_id(a) not in self._dead for a in self._actors)

    def set_actors(self, actors: list[Any]) -> None:
        """A new pool (after a replacement or scaling); chunks out keep their actor."""
        with self._changed:
            self._actors = list(actors)
            self._changed.notify_all()

    def forget(self, actor: Any) -> None:
        with self._changed:
            self._dead.add(self.adapter.actor_id(actor))

    def submit(self, item_id: str, video: str, chunk: Chunk) -> Pending:
        return RayPending(self, item_id, video, chunk)


class RayPending:
    """One chunk at an inference actor. Its actor died: sent to another, and that actor is
    left out by this decode actor from then on (RESUBMITS deaths, then the item fails: the
    chunk may be what kills them). Its actor unavailable for now, or the chunk's object
    lost: sent to another. Out longer than chunk_timeout_s: sent to another too (the actor
    may be hung). No actor ready: it waits for one for inference_wait_s, then the item goes
    back to the queue uncharged (InfraError).

    The chunk is put in the object store once, here, and its ref is what every send
    passes: the decode actor's buffer (ChunkReader's `reuse`) is free once this returns,
    and a resend copies nothing. The object is this actor's (Ray keeps it on its node), so
    it is lost only with the node, and this actor with it; were it lost otherwise, the
    sends of the same ref would fail too, and the chunk's tries run out (TransientError)."""

    def __init__(self, pool: RayInference, item_id: str, video: str, chunk: Chunk) -> None:
        self.pool, self.item_id, self.video, self.index = pool, item_id, video, chunk.index
        self.chunk: Any = pool.adapter.put(chunk)  # its ref, until the result is in
        self.actor: Any = None
        self.actor_id: str | None = None  # set by the pool, under its lock
        self.done_at: float | None = None  # when the pool saw it done (monotonic)
        self.ref: Any = None
        self.sent_at = self.waiting_since = time.monotonic()
        self.dead: set[str] = set()  # the actors that died under this chunk
        self.timeouts = 0
        self._send()

    def _send(self, avoid: Collection[str] = ()) -> None:
        self.actor = self.pool.pick({*avoid, *self.dead})
        self.pool.sent(self, self.actor)
        if self.actor is None:
            self.ref = None
            return
        self.ref = self.pool.adapter.call(self.actor, "infer", self.item_id, self.video, self.chunk)
        self.sent_at = time.monotonic()

    def result(self, timeout: float | None = None) -> ChunkDone:
        s = self.pool.settings
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.ref is None:
                self._await_actor(end)
                continue
            left = s.chunk_timeout_s - (time.monotonic() - self.sent_at)
            wait = left if end is None else min(left, end - time.monotonic())
            try:
                done: ChunkDone = self.pool.adapter.get(self.ref, timeout=max(wait, 0.0))
            except TimeoutError:
                if time.monotonic() - self.sent_at < s.chunk_timeout_s:
                    raise  # the caller's own timeout
                self._resend_slow()
                continue
            except ActorGone as exc:
                self._resend_dead(exc)
                continue
            self.chunk = None  # let the frames go
            self.pool.took(self, time.monotonic())
            self.pool.sent(self, None)
            return done

    def _await_actor(self, end: float | None) -> None:
        waited = time.monotonic() - self.waiting_since
        limit = self.pool.settings.inference_wait_s
        if waited >= limit:
            raise InfraError(f"no inference actor was ready for {waited:.0f} s")
        left = limit - waited if end is None else min(limit - waited, end - time.monotonic())
        if left <= 0:
            raise TimeoutError
        if self.pool.wait_ready(min(left, 1.0)):
            self._send()

    def _resend_slow(self) -> None:
        self.timeouts += 1
        log.warning(
            "%s chunk %d: out at an inference actor for %.0f s: sending it to another",
            self.item_id,
            self.index,
            time.monotonic() - self.sent_at,
        )
        if self.timeouts > RESUBMITS:
            raise TransientError(
                f"chunk {self.index} timed out at {self.timeouts} inference actors",
                MODEL_ERROR,
            )
        self._send(avoid={self.pool.adapter.actor_id(self.actor)})

    def _resend_dead(self, exc: ActorGone) -> None:
        actor = self.pool.adapter.actor_id(self.actor)
        if not exc.dead:  # unavailable for now, or the chunk's object lost: another try
            self.timeouts += 1
            if self.timeouts > 4 * RESUBMITS:
                raise TransientError(
                    f"chunk {self.index}: no inference actor could take it ({exc})",
                    MODEL_ERROR,
                ) from None
            self._send(avoid={actor})
            return
        self.pool.forget(self.actor)
        self.dead.add(actor)
        if len(self.dead) >= RESUBMITS:
            raise TransientError(
                f"chunk {self.index}: {len(self.dead)} inference actors died under it ({exc})",
                MODEL_ERROR,
            ) from None
        self.waiting_since = time.monotonic()
        self._send()


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
        try:
            now = os.getpriority(os.PRIO_PROCESS, tid)
            os.setpriority(os.PRIO_PROCESS, tid, min(19, now + increment))
        except OSError:  # a thread that has just ended
            continue


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


# glibc's malloc in a decode actor. It frees frames of a few hundred KB and chunks of tens of
# MB all the time, and by default raises its mmap threshold to the largest block freed (up
# to 32 MB): from then on each chunk comes from arenas (one per thread) that fragment and
# are never given back. A decode actor's private memory grew from 334 to 643 MB over four
# runs of the same videos that way (1,459 MB in a longer run on a faster machine); with a
# fixed threshold every block over 1 MB is mapped and unmapped on its own, and it stayed
# at 303 MB (bench/pipeline.py, decode_actor_peak_private_mb). glibc reads these once, as
# the process starts: they go in the actor's runtime environment.
DECODE_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20), "MALLOC_ARENA_MAX": "2"}


def decoder_options(p: PipelineSettings) -> dict[str, Any]:
    """A decode actor's Ray options: its CPUs, its threads (a video each, plus the calls
    that come in meanwhile), its malloc, no task events (see inference_options)."""
    return {
        "num_cpus": p.cpus_per_decoder,
        "max_concurrency": 4,
        "runtime_env": {"env_vars": DECODE_MALLOC_ENV},
        "enable_task_events": False,
    }


def inference_options(p: PipelineSettings) -> dict[str, Any]:
    """An inference actor's Ray options: its share of a GPU and its CPUs, and no task
    events. Ray records every call of an actor method in the GCS, on the head, for its
    dashboard and state API, up to 100,000 calls (task_events_max_num_task_in_gcs): a call
    per chunk made the head's GCS grow by 90 MB an hour in the soak (bench/soak.py), and
    framefleet reads none of them. Ray Serve leaves them out of its replicas the same way."""
    return {
        "num_gpus": p.gpus_per_inference,
        "num_cpus": p.cpus_per_inference,
        "enable_task_events": False,
    }


class DecodeActor:
    def __init__(
        self,
        settings: Settings,
        redis_url: str,
        inference: list[Any],
        name: str,
        leader: str | None = None,
        sweep: bool = False,
    ) -> None:
        logs.configure(settings.log, actor=name, node=RayAdapter().node_id())
        check_root(settings.pipeline.out, settings.pipeline.out_marker)
        # Inference first where both share cores: decoders run ahead of it, within
        # max_inflight_chunks, on the cycles it leaves (bench/pipeline.py measures the gain).
        lower_priority(settings.pipeline.decode_nice)
        adapter = RayAdapter()
        model_name, schema, *_ = adapter.get(adapter.call(inference[0], "describe"))
        warm_up(schema)  # finalize reads and writes parquet: its first time is slow
        self.name = name
        self.settings = settings
        self.queue = queue_at(redis_url, settings)  # ack waits for replicas if asked to
        store = OutputStore(settings.pipeline.out, settings.source)
        history = recorder.writer(settings.pipeline.history)  # a chaos run's
        if history is not None:
            self.queue = recorder.RecordingQueue.of(self.queue, history, store)
        self.stop = threading.Event()  # release what is held and return
        self.draining = threading.Event()  # finish the items held, claim no more
        self.pool = RayInference(adapter, inference, model_name, schema, settings.pipeline)
        self.job = VideoJob(self.queue, store, self.pool, settings, stop=self.stop, history=history)
        self._held = threading.Condition()
        # the ids its threads hold leases on (a count: two threads may have held one id in
        # turn, the first still ending its lost lease), and the claims under way
        self.holding: collections.Counter[str] = collections.Counter()
        self._claims: set[int] = set()  # the claims under way (tickets)
        self._tickets = itertools.count()
        self._full_said = -60.0  # when a full Redis was last said (once a minute at most)
        self._before: dict[str, set[int]] = {}  # a suspect: the claims it must wait for
        self.outcomes: collections.deque[dict[str, Any]] = collections.deque(maxlen=OUTCOMES_KEPT)
        self.counts: collections.Counter[str] = collections.Counter()
        beats = beat_queue(redis_url, settings)
        self.heartbeat = Heartbeat(
            beats,
            name,
            settings,
            holding=self._holding,
            leader=leader,
            deposed=self._deposed,
            retired=self.stop.set,
            sweep=sweep,
            silenced=self.stop.set,
        )
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

    def _holding(self) -> list[str]:
        with self._held:
            return list(self.holding)

    def _deposed(self, leader: str) -> None:
        if not self.stop.is_set():
            log.warning("%s: %s leads now: releasing and stopping", self.name, leader)
            self.stop.set()

    def run(self, until_empty: bool = False) -> list[dict[str, Any]]:
        """Claim and process items until stopped (or, with until_empty, until the queue has
        nothing queued, delayed or leased), each in its own thread. items_per_decoder items
        decode at once; an item whose frames are all decoded gives its place to the next one
        while its last chunks are in inference, so that the decoder does not idle at the end
        of each video (VideoJob bounds the chunks out for all of them together). Returns what
        happened to the newest OUTCOMES_KEPT items of this run (`counts` has all)."""
        self.outcomes = collections.deque(maxlen=OUTCOMES_KEPT)
        places = threading.Semaphore(self.settings.pipeline.items_per_decoder)
        threads = [
            threading.Thread(target=self._loop, args=(until_empty, places), name=f"item-{i}")
            for i in range(2 * self.settings.pipeline.items_per_decoder)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.heartbeat.close()
        return list(self.outcomes)

    def _loop(self, until_empty: bool, places: threading.Semaphore) -> None:
        """One item thread. Nothing ends it but a stop, a drain or an empty queue: an error
        (a bug, Redis gone) is logged and the loop carries on after a pause."""
        while not self.stop.is_set() and not self.draining.is_set():
            try:
                if self._next(until_empty, places) == "drained":
                    return
            except Exception:
                log.exception("%s: item loop error; carrying on", self.name)
                self.stop.wait(1.0)

    def _next(self, until_empty: bool, places: threading.Semaphore) -> str:
        if not self.pool.wait_ready(1.0):  # no inference actor: claim nothing
            return "waiting"
        if not places.acquire(timeout=0.2):
            return "drained" if until_empty and self._drained() else "busy"
        place = _Place(places)
        try:
            leases = self._claim(until_empty)
            if not leases:
                return "drained" if until_empty and self._drained() else "idle"
            [lease] = leases
            try:
                if self.stop.is_set() or self.draining.is_set():  # came meanwhile
                    why = "worker stopping (shutdown or preemption)"
                    self.queue.release(lease, why)
                    self.job.log_outcome(lease, Outcome(lease.id, Status.RELEASED, why), 0.0)
                    return "stopping"
                ready = self._alone if lease.solo else None
                self._record(self.job.run(lease, decoded=place.give_back, ready=ready))
            finally:
                with self._held:
                    self.holding[lease.id] -= 1
                    if self.holding[lease.id] <= 0:
                        del self.holding[lease.id]
                    self._before.pop(lease.id, None)
                    self._held.notify_all()
            return "done"
        finally:
            place.give_back()

    def _claim(self, until_empty: bool) -> list[Lease]:
        """One claim, under way with a ticket, and its lease counted as held before anything
        else can look. A suspect also notes the claims under way when it came back: they may
        have been served before it (those that start later get nothing: the queue gives a
        worker holding a suspect nothing more)."""
        with self._held:
            ticket = next(self._tickets)
            self._claims.add(ticket)
        leases: list[Lease] = []
        try:
            # Until empty, a short wait: a thread waiting here while the last item
            # finishes in another one notices the queue is drained this much later.
            leases = self.queue.claim(1, self.name, block=0.2 if until_empty else 1.0)
            return leases
        except WorkerRetired as exc:  # its fleet ended while it ran on: it must stop
            if not self.stop.is_set():
                log.warning("%s: retired by the queue (%s): stopping", self.name, exc)
                self.stop.set()
            return leases
        except QueueFull as exc:  # nothing new while Redis is full: retention frees it
            if time.monotonic() >= self._full_said + 60:
                log.warning("%s: claims wait: %s", self.name, exc)
                self._full_said = time.monotonic()
            self.stop.wait(self.settings.queue.poll_s)
            return leases
        finally:
            with self._held:
                self._claims.discard(ticket)
                for lease in leases:
                    self.holding[lease.id] += 1
                    if lease.solo:
                        self._before[lease.id] = set(self._claims)
                self._held.notify_all()

    def _alone(self, keeper: LeaseKeeper) -> None:
        """A suspect starts only once this actor holds nothing else (the queue hands it
        nothing more meanwhile): if it crashes the actor, the blame is exact."""
        lease: Lease = keeper.lease
        with self._held:
            before = self._before.pop(lease.id, set())
            while before & self._claims or set(self.holding) - {lease.id}:
                if self.stop.is_set():
                    raise Stopped
                if keeper.lost.is_set():
                    raise LeaseLost(keeper.why)
                keeper.touch()  # waiting for the others is no stall
                self._held.wait(0.5)

    def _record(self, outcome: Outcome) -> None:
        self.counts[outcome.status] += 1
        self.outcomes.append(asdict(outcome))

    def _drained(self) -> bool:
        counts = self.queue.stats().counts
        return counts["queued"] == counts["delayed"] == counts["leased"] == counts["inbox"] == 0


class FleetError(Exception):
    """The fleet cannot run: as configured (the model cannot be loaded, say), or at all
    (every decode actor died)."""


class Fleet:
    """The decode and inference actors of one driver, without a coordinator: its decode
    actors sweep the queue themselves (a killed one's videos come back), and their names are
    unique to this fleet, so that a dead one is never taken for a live one."""

    def __init__(
        self, settings: Settings, redis_url: str, adapter: RayAdapter | None = None
    ) -> None:
        self.settings, self.redis_url = settings, redis_url
        self.adapter = adapter or RayAdapter()
        self.generation = new_generation()
        self.inference: list[Any] = []
        self.decoders: list[Any] = []
        self.names: list[str] = []

    def start(self, ready_timeout: float = 300.0) -> Fleet:
        self.settings = replace(self.settings, model=pin_weights(self.settings.model))
        p, a = self.settings.pipeline, self.adapter
        infer_cls = a.remote_class(InferenceActor)
        decode_cls = a.remote_class(DecodeActor)
        infer_opts = inference_options(p)
        self.inference = [
            a.create(
                infer_cls,
                infer_opts,
                self.settings,
                self.redis_url,
                worker_name("inference", self.generation, i),
            )
            for i in range(p.inference_actors)
        ]
        a.wait_ready([a.call(actor, "describe") for actor in self.inference], ready_timeout)
        decode_opts = decoder_options(p)
        self.names = [worker_name("decoder", self.generation, i) for i in range(p.decode_actors)]
        self.decoders = [
            a.create(
                decode_cls,
                decode_opts,
                self.settings,
                self.redis_url,
                self.inference,
                name,
                None,
                True,
            )
            for name in self.names
        ]
        a.wait_ready([a.call(actor, "ready") for actor in self.decoders], ready_timeout)
        return self

    def run_until_empty(self, timeout: float | None = None) -> list[dict[str, Any]]:
        """Until the queue is drained. A decode actor that dies on the way is marked gone
        (the others' sweeps give its videos back at once); FleetError when none is left."""
        a = self.adapter
        runs = zip(self.decoders, self.names, strict=True)
        pending = {a.call(d, "run", True): name for d, name in runs}
        supervision = Supervision(Queue(connect(self.redis_url), self.settings.queue))
        outcomes: list[dict[str, Any]] = []
        deaths: list[str] = []
        end = None if timeout is None else time.monotonic() + timeout
        while pending:
            if end is not None and time.monotonic() > end:
                raise TimeoutError(f"the queue did not drain within {timeout} s")
            for ref in a.done(list(pending)):
                name = pending.pop(ref)
                try:
                    outcomes += a.get(ref, timeout=0)
                except ActorGone as exc:
                    deaths.append(f"{name}: {exc}")
                    supervision.mark_gone(name)
            time.sleep(0.1)
        if len(deaths) == len(self.decoders):
            raise FleetError("every decode actor died: " + "; ".join(deaths))
        return outcomes

    def stop(self) -> None:
        for actor in self.decoders:
            self.adapter.call(actor, "request_stop")
        for actor in [*self.decoders, *self.inference]:
            self.adapter.kill(actor)
        self.decoders, self.inference = [], []
