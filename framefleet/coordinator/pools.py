"""The decode and inference actor pools of one driver: created, checked, replaced, sized.

Each tick (`Pools.tick`): actors found dead are dropped (a dead decode actor's leases are
expired at once, so its videos go back to the queue), then each pool is sized to the
queue: the decode pool to the backlog (queued + delayed + leased items over
items_per_decoder), the inference pool to its maximum while there is work and its minimum
after idle_s without any, never past the cluster's free resources nor the cost cap
(FRAMEFLEET_MAX_GPUS, FRAMEFLEET_MAX_CPUS).

Ray's autoscaler is asked for room for the fleet the backlog wants (one bundle an actor,
`request_resources`: the decode pool the backlog wants, inference actors in proportion): a
burst grows the cluster and the pools grow onto the new nodes as they come; with no work only
the pools' minima are asked for, and the idle nodes go. Actors are only created where there
is room, so none waits minutes for a node and is taken for one that cannot start.

A decode actor scaled down drains (finishes its videos, claims no more); an inference actor
scaled down is first taken out of the decode actors' rotation.

A node being drained (preempted, scaled down, or its `ray start` got SIGTERM: Ray gives it
a deadline, then ends it) is left at once: its decode actors release their videos (no
attempt counted) and return, its inference actors leave the rotation and are killed once
those decoders are done, so the node goes idle and ends early; replacements are started on
the other nodes. Every Ray call goes through the RayAdapter.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from framefleet.queue import Queue, Supervision
from framefleet.queue.supervision import worker_name
from framefleet.settings import Settings
from framefleet.workers.actors import (
    DecodeActor,
    FleetError,
    InferenceActor,
    decoder_options,
    inference_options,
)
from framefleet.workers.model import ModelLoadError
from framefleet.workers.outputs import OutputRootError
from framefleet.workers.ray_adapter import ActorGone, RayAdapter

log = logging.getLogger(__name__)

# actors of a kind failing to start in a row (dying, or not ready within start_timeout_s):
# a configuration error (at once when the model cannot be loaded: trying again would only
# wait out the same download timeouts)
FAILED_STARTS = 3

# a decode actor unreachable (not known dead) this long on a node Ray holds alive crashed:
# Ray marks a lost node dead after its health checks fail (about 15 s by default)
UNSURE_S = 60.0

# the actors' pids go in the health report up to this many (at 20,000 a megabyte a tick)
PIDS_REPORTED = 512
# the cluster short of the autoscaler request this long: an event says why it may be
_SHORT_S = 600.0
# the autoscaler's state is read at most this often (its own loop: 5 s under KubeRay)
_READ_S = 5.0


def _bundle(cpus: float, gpus: float) -> dict[str, float]:
    return {k: v for k, v in (("CPU", cpus), ("GPU", gpus)) if v > 0}


def _sum(bundles: list[dict[str, float]]) -> dict[str, float]:
    total: dict[str, float] = {}
    for bundle in bundles:
        for k, v in bundle.items():
            total[k] = total.get(k, 0.0) + v
    return total


def _key(bundle: dict[str, float]) -> tuple[tuple[str, float], ...]:
    return tuple(sorted((k, float(v)) for k, v in bundle.items()))


def _counts(bundles: list[dict[str, float]]) -> dict[tuple[tuple[str, float], ...], int]:
    return dict(Counter(_key(b) for b in bundles))


def _text(resources: dict[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in sorted(resources.items())) or "nothing"


@dataclass
class Member:
    name: str
    handle: Any
    ping: Any = None  # inference: the pending readiness / liveness call
    run: Any = None  # decode: the pending run() call
    ready: bool = False  # its readiness call answered
    draining: bool = False  # decode: finishing its videos, claiming no more (scaled down)
    leaving: bool = False  # decode: releasing its videos, its node is being drained
    pid: int | None = None
    node: str | None = None
    started_at: float = 0.0
    killed: bool = False  # decode: killed by the pools, in the pool until Ray says it ended


@dataclass
class PoolReport:
    decoders: int = 0
    inference: int = 0
    ready_inference: int = 0
    replaced: int = 0
    draining_nodes: int = 0
    decoders_wanted: int = 0  # what the backlog asks for, within the configured bounds
    inference_wanted: int = 0
    inference_room: int = 0  # how many could run with the free resources (fewer: CPU-bound)
    requested: dict[str, float] | None = None  # asked of the autoscaler: the wanted pools
    events: list[str] = field(default_factory=list)
    pids: dict[str, int | None] = field(default_factory=dict)


def _event(report: PoolReport, text: str, event: str) -> None:
    """A fleet event: one WARNING line, and in the health report's events."""
    log.warning("%s", text, extra={"event": event})
    report.events.append(text)


def _misconfigured(exc: ActorGone) -> bool:
    """An actor's __init__ failed in a way another try cannot mend."""
    error = exc.init_error or ""
    return ModelLoadError.__name__ in error or OutputRootError.__name__ in error


def wanted(current: int, low: int, high: int, demand: int, room: int) -> int:
    """The pool size to aim for: demand clamped to [low, high], growing by at most `room`
    (what the free resources allow) and shrinking at once."""
    target = max(low, min(high, demand))
    if target > current:
        return min(target, current + max(0, room))
    return target


def inference_max(settings: Settings) -> int:
    """The inference pool's maximum under the cost cap; the decode pool's minimum is kept
    out of a CPU cap (Settings checks that both minima fit)."""
    c, p = settings.coordinator, settings.pipeline
    high = p.inference_actors
    if c.max_gpus is not None and p.gpus_per_inference > 0:
        high = min(high, int(c.max_gpus / p.gpus_per_inference + 1e-9))
    if c.max_cpus is not None and p.cpus_per_inference > 0:
        spare = c.max_cpus - c.min_decode_actors * p.cpus_per_decoder
        high = min(high, int(spare / p.cpus_per_inference + 1e-9))
    return max(c.min_inference_actors, high)


def decoders_max(settings: Settings, inference: int) -> int:
    """The decode pool's maximum beside `inference` inference actors, under a CPU cap."""
    c, p = settings.coordinator, settings.pipeline
    high = p.decode_actors
    if c.max_cpus is not None and p.cpus_per_decoder > 0:
        spare = c.max_cpus - inference * p.cpus_per_inference
        high = min(high, int(spare / p.cpus_per_decoder + 1e-9))
    return max(c.min_decode_actors, high)


class Pools:
    def __init__(
        self,
        settings: Settings,
        redis_url: str,
        queue: Queue,
        adapter: RayAdapter,
        generation: str,
        clock: Callable[[], float] = time.monotonic,
        leader: str | None = None,
    ) -> None:
        self.settings, self.redis_url, self.queue = settings, redis_url, queue
        self.leader = leader  # the coordinator: its decode actors stop when another leads
        self.supervision = Supervision(queue)
        self.adapter, self.generation, self.clock = adapter, generation, clock
        self.decoders: list[Member] = []
        self.inference: list[Member] = []
        self.leaving: list[Member] = []  # inference actors on draining nodes
        self._numbers = itertools.count()
        self._failed_starts = 0  # inference actors, since one was last ready
        self._hung_decoders = 0  # decode actors not ready in time, since one was
        self._idle_since: float | None = None
        self._redis_lost_at = -math.inf  # the last tick that could not reach Redis
        self._unsure: dict[str, tuple[Member, float]] = {}  # unreachable decode actors
        self._requested: list[dict[str, float]] | None = None  # the autoscaler's, as sent
        self._short_since: float | None = None  # the cluster has been short of the request
        self._scale, self._scaled_at = 1.0, -math.inf  # the request, shrunk while infeasible
        self._told_at = -math.inf  # the infeasible request, last told as an event
        self._read_at = -math.inf  # the autoscaler's state, last read
        self._decode_cls = adapter.remote_class(DecodeActor)
        self._infer_cls = adapter.remote_class(InferenceActor)

    # -- one tick ------------------------------------------------------------------------

    def tick(self) -> PoolReport:
        """One round; a RedisError (Redis away) is noted, so that the actors' heartbeats are
        not judged for a stale time after it, and raised."""
        try:
            return self._tick()
        except RedisError:
            self._redis_lost_at = self.clock()
            raise

    def _tick(self) -> PoolReport:
        report = PoolReport()
        self._kill_silent(report)
        self._check_inference(report)
        self._check_decoders(report)
        self._settle_unsure(report)
        self._leave_draining(report)
        counts = self.queue.stats().counts
        backlog = counts["queued"] + counts["delayed"] + counts["leased"] + counts["inbox"]
        self._size_inference(backlog, report)
        report.decoders_wanted = self._decoders_wanted(backlog, report.inference_wanted)
        if any(m.ready for m in self.inference):
            self._size_decoders(report)
        c = self.settings.coordinator
        if c.autoscale and c.ray_address is not None:  # a local Ray has no autoscaler
            self._request(backlog, report)
        report.decoders = len(self.decoders)
        report.inference = len(self.inference)
        report.ready_inference = sum(m.ready for m in self.inference)
        members = [*self.decoders, *self.inference, *self.leaving]
        if len(members) <= PIDS_REPORTED:  # a large fleet's: in /v1/workers (their heartbeats)
            report.pids = {m.name: m.pid for m in members}
        return report

    def _kill_silent(self, report: PoolReport) -> None:
        """Actors whose heartbeat stopped (stopped, hung, partitioned) and actors not ready
        within start_timeout_s are killed: an inference actor leaves the rotation at once;
        each is replaced once Ray reports it dead (a chunk out there goes to another)."""
        c = self.settings.coordinator
        now = self.clock()
        # Right after Redis was away, silence says nothing: the actors beat again soon.
        if now - self._redis_lost_at < c.stale_s or self.supervision.in_grace():
            return
        ages = self.supervision.workers()
        for member in [*self.inference, *self.decoders]:
            age = ages.get(member.name)
            if member.killed:
                continue
            if age is not None and age > c.stale_s:
                why = f"its heartbeat is {age:.0f} s old"
            elif not member.ready and now - member.started_at > c.start_timeout_s:
                why = f"not ready after {c.start_timeout_s:g} s"
            else:
                continue
            _event(report, f"{member.name} killed: {why}", "actor_replaced")
            self.adapter.kill(member.handle)
            member.killed = True
            if member in self.inference:
                self.inference.remove(member)
                report.replaced += 1
                self._share_inference()
                if not member.ready:
                    self._failed_starts += 1
                    if self._failed_starts >= FAILED_STARTS:
                        raise FleetError(f"inference actors fail to start: {why}")
            elif not member.ready:  # the pool replaces it once Ray reports it dead
                self._hung_decoders += 1
                if self._hung_decoders >= FAILED_STARTS:
                    raise FleetError(f"decode actors fail to start: {why}")

    def _check_inference(self, report: PoolReport) -> None:
        finished = set(self.adapter.done([m.ping for m in self.inference]))
        changed = False
        for member in list(self.inference):
            if member.ping not in finished:
                continue
            try:
                self.adapter.get(member.ping, timeout=0)
            except ActorGone as exc:
                self.inference.remove(member)
                self.adapter.kill(member.handle)  # one only unavailable keeps its GPU share
                changed = True
                report.replaced += 1
                if not member.ready:
                    self._failed_starts += 1
                    if _misconfigured(exc) or self._failed_starts >= FAILED_STARTS:
                        raise FleetError(f"inference actors fail to start: {exc}") from None
                _event(report, f"inference actor {member.name} gone: {exc}", "actor_replaced")
                continue
            if not member.ready:
                member.ready, changed = True, True
                _, _, pid, node = self.adapter.get(member.ping, timeout=0)
                member.pid, member.node = int(pid), str(node)
                self._failed_starts = 0
                log.info("inference actor %s ready (pid %s, node %s)", member.name, pid, node)
            member.ping = self.adapter.call(member.handle, "describe")  # the next check
        if changed:
            self._share_inference()

    def _check_decoders(self, report: PoolReport) -> None:
        starting = [m.ping for m in self.decoders if m.ping is not None]
        started = set(self.adapter.done(starting))
        for member in self.decoders:
            if member.ping is not None and member.ping in started:
                with contextlib.suppress(ActorGone):
                    pid, node = self.adapter.get(member.ping, timeout=0)
                    member.pid, member.node, member.ready = int(pid), str(node), True
                    self._hung_decoders = 0
                    log.info("decode actor %s ready (pid %s, node %s)", member.name, pid, node)
                member.ping = None
        finished = set(self.adapter.done([m.run for m in self.decoders]))
        for member in list(self.decoders):
            if member.run not in finished:
                continue
            self.decoders.remove(member)
            try:
                self.adapter.get(member.run, timeout=0)
                if not (member.draining or member.leaving):
                    _event(report, f"decode actor {member.name} stopped", "actor_replaced")
            except ActorGone as exc:
                if _misconfigured(exc):
                    raise FleetError(f"decode actors fail to start: {exc}") from None
                report.replaced += 1
                if self._node_lost(member):  # a fleet-wide event: nothing charged
                    self._release_lost(member, report)
                elif not exc.dead:  # unreachable: maybe its node going, which Ray says late
                    text = f"decode actor {member.name} unreachable ({exc}): waiting for Ray's word"
                    _event(report, text, "actor_replaced")
                    self._unsure[member.name] = (member, self.clock())
                else:
                    _event(report, f"decode actor {member.name} gone: {exc}", "actor_replaced")
                    self._orphan(member.name)
            except Exception as exc:  # a bug in the actor's run(): its traceback, and replaced
                report.replaced += 1
                report.events.append(f"decode actor {member.name} failed: {exc!r}")
                log.error(
                    "decode actor %s failed: %r; replaced",
                    member.name,
                    exc,
                    exc_info=exc,
                    extra={"event": "actor_replaced"},
                )
                self._orphan(member.name)
            self.adapter.kill(member.handle)

    def _release_lost(self, member: Member, report: PoolReport) -> None:
        reason = f"its node {member.node} was lost"
        _event(report, f"decode actor {member.name} gone: {reason}", "node_lost")
        self.supervision.release_workers([member.name], reason=reason)

    def _settle_unsure(self, report: PoolReport) -> None:
        """Decode actors that could not be reached (not known dead) wait for Ray's word on
        their node, which comes some seconds after a node is lost (its raylet's missed
        health checks): its videos are then released uncharged. A node alive UNSURE_S on
        makes it a crash, judged as one. Meanwhile its silence is a suspect's at most."""
        for name, (member, since) in list(self._unsure.items()):
            if self._node_lost(member):
                del self._unsure[name]
                self._release_lost(member, report)
            elif self.clock() - since >= UNSURE_S:
                del self._unsure[name]
                _event(report, f"decode actor {name} gone: its node lives on", "actor_replaced")
                self._orphan(name)

    def _leave_draining(self, report: PoolReport) -> None:
        try:
            draining = self.adapter.draining_nodes()
        except Exception:  # best effort: the node's end is noticed anyway
            log.debug("cannot list the draining nodes", exc_info=True)
            draining = set()
        report.draining_nodes = len(draining)
        for member in self.decoders:
            if member.node in draining and not member.leaving:
                member.leaving = True
                self.adapter.call(member.handle, "request_stop")
                text = f"decode actor {member.name} releasing: its node drains ({member.node})"
                _event(report, text, "node_draining")
        moving = [m for m in self.inference if m.node in draining]
        if moving:
            self.inference = [m for m in self.inference if m not in moving]
            self.leaving.extend(moving)
            self._share_inference()
            names = ", ".join(m.name for m in moving)
            _event(report, f"inference actors leaving a draining node: {names}", "node_draining")
        if self.leaving and not any(m.leaving for m in self.decoders):
            for member in self.leaving:  # no chunk of a leaving decoder is left on them
                self.adapter.kill(member.handle)
            self.leaving = []

    def _node_lost(self, member: Member) -> bool:
        if member.node is None:
            return False
        try:
            return member.node not in self.adapter.alive_node_ids()
        except Exception:  # the GCS does not answer: no evidence either way
            log.warning("cannot list the alive nodes", exc_info=True)
            return False

    def _orphan(self, worker: str) -> None:
        """The worker is dead: its leases expire now and the reaper takes them back."""
        self.supervision.mark_gone(worker)
        self.supervision.sweep(self.settings.coordinator.stale_s)

    # -- sizing ------------------------------------------------------------------------

    def _room(self, cpus: float, gpus: float, reserve_cpus: float = 0.0) -> int:
        """How many more actors of this shape fit in the free resources, keeping
        reserve_cpus free."""
        free = self.adapter.available()
        room = math.inf
        if cpus > 0:
            room = min(room, (free.get("CPU", 0.0) - reserve_cpus) / cpus)
        if gpus > 0:
            room = min(room, free.get("GPU", 0.0) / gpus)
        return 1_000_000 if room == math.inf else max(0, int(room + 1e-9))

    def _size_inference(self, backlog: int, report: PoolReport) -> None:
        c, p = self.settings.coordinator, self.settings.pipeline
        now = self.clock()
        if backlog > 0:
            self._idle_since = None
        elif self._idle_since is None:
            self._idle_since = now
        idle = self._idle_since is not None and now - self._idle_since >= c.idle_s
        demand = c.min_inference_actors if idle else p.inference_actors
        # the decode pool's minimum comes first: inference actors alone process nothing
        missing = max(0, c.min_decode_actors - len(self.decoders))
        room = self._room(p.cpus_per_inference, p.gpus_per_inference, missing * p.cpus_per_decoder)
        if room == 0 and not self.inference:
            report.events.append(
                f"no room for an inference actor ({p.cpus_per_inference} CPU,"
                f" {p.gpus_per_inference} GPU): free {self.adapter.available()}"
            )
        low, high = c.min_inference_actors, inference_max(self.settings)
        report.inference_wanted = max(low, min(high, demand))
        report.inference_room = min(len(self.inference) + room, high)
        target = wanted(len(self.inference), low, high, demand, room)
        while len(self.inference) < target:
            self.inference.append(self._new_inference())
        if len(self.inference) > target:
            extra = self.inference[target:]
            self.inference = self.inference[:target]
            self._share_inference()
            for member in extra:
                self.adapter.kill(member.handle)
            report.events.append(f"inference pool down to {target}")
            log.info("inference pool down to %d", target)

    def _size_decoders(self, report: PoolReport) -> None:
        """Toward report.decoders_wanted, growing within the free CPUs."""
        c, p = self.settings.coordinator, self.settings.pipeline
        active = [m for m in self.decoders if not (m.draining or m.leaving)]
        room = self._room(p.cpus_per_decoder, 0.0)
        want = report.decoders_wanted
        target = wanted(len(active), c.min_decode_actors, want, want, room)
        for _ in range(target - len(active)):
            self.decoders.append(self._new_decoder())
        for member in active[target:]:
            member.draining = True
            self.adapter.call(member.handle, "drain")
            report.events.append(f"decode actor {member.name} draining (scaling down)")
            log.info("decode actor %s draining (scaling down)", member.name)

    def _decoders_wanted(self, backlog: int, inference: int) -> int:
        c, p = self.settings.coordinator, self.settings.pipeline
        demand = math.ceil(backlog / p.items_per_decoder)
        return max(c.min_decode_actors, min(decoders_max(self.settings, inference), demand))

    # -- the autoscaler ----------------------------------------------------------------

    def _asked(self, backlog: int, report: PoolReport) -> tuple[int, int]:
        """The inference and decode actors to ask the autoscaler room for: the decode pool
        the backlog wants and inference actors in the pools' proportion to it (so one video
        does not buy every GPU the pools may hold, while the nodes already there are used
        whole); the minima when there is no work."""
        c, p = self.settings.coordinator, self.settings.pipeline
        if backlog == 0:
            return c.min_inference_actors, c.min_decode_actors
        share = math.ceil(report.decoders_wanted * p.inference_actors / max(1, p.decode_actors))
        inference = max(c.min_inference_actors, min(report.inference_wanted, share))
        return inference, report.decoders_wanted

    def _request(self, backlog: int, report: PoolReport) -> None:
        """Ask Ray's autoscaler for the asked pools, whole, when that changes (each new
        driver asks once: a new head has forgotten).

        Autoscaler v2 adds no node at all for a request its node groups cannot hold whole
        (v1 adds what it can): while it says so the request shrinks by a quarter a tick,
        down to the pools' minima, and after _SHORT_S it tries the whole again (a group's
        maximum raised). A cluster that stays short of the request for _SHORT_S (quotas,
        nodes that fail to start) is told as an event."""
        c, p = self.settings.coordinator, self.settings.pipeline
        now = self.clock()
        if self._scale < 1.0 and now - self._scaled_at >= _SHORT_S:
            self._scale = 1.0
        n_inference, n_decoders = self._asked(backlog, report)
        n_inference = max(c.min_inference_actors, int(n_inference * self._scale))
        n_decoders = max(c.min_decode_actors, int(n_decoders * self._scale))
        inference = _bundle(p.cpus_per_inference, p.gpus_per_inference)
        decoder = _bundle(p.cpus_per_decoder, 0.0)
        bundles = [b for b in [inference] * n_inference + [decoder] * n_decoders if b]
        report.requested = _sum(bundles)
        if bundles != self._requested:
            try:
                self.adapter.request_resources(bundles)
            except Exception:  # the GCS's trouble is the driver's to judge: next tick
                log.warning("cannot ask the autoscaler for resources", exc_info=True)
                return
            log.info(
                "asked the autoscaler for %d inference and %d decode actors (%s)",
                n_inference,
                n_decoders,
                _text(report.requested),
                extra={"event": "autoscale_request"},
            )
            self._requested, self._short_since = bundles, now
            return  # the autoscaler has not seen it yet
        if self._short_of(report.requested, report) and now - self._read_at >= _READ_S:
            self._read_at = now
            self._check_infeasible(bundles, report)

    def _short_of(self, wants: dict[str, float], report: PoolReport) -> dict[str, float]:
        """What the cluster's nodes lack of `wants` ({} when they hold it, or unknown)."""
        try:
            total = self.adapter.total()
        except Exception:
            log.debug("cannot read the cluster's resources", exc_info=True)
            return {}
        short = {k: v - total.get(k, 0.0) for k, v in wants.items() if total.get(k, 0.0) < v - 1e-9}
        now = self.clock()
        if not short:
            self._short_since = None
        elif self._short_since is None:
            self._short_since = now
        elif now - self._short_since >= _SHORT_S:
            self._short_since = now  # said again only after as long
            _event(
                report,
                f"the cluster is still short of the resources asked of the autoscaler"
                f" ({_text(short)} more of {_text(wants)}) after {_SHORT_S:g} s: quotas,"
                " nodes that fail to start, or node groups too small (raise their maxima or"
                " lower FRAMEFLEET_INFERENCE_ACTORS / FRAMEFLEET_MAX_GPUS)",
                "autoscale_short",
            )
        return short

    def _check_infeasible(self, bundles: list[dict[str, float]], report: PoolReport) -> None:
        try:
            infeasible = self.adapter.infeasible_request()
        except Exception:  # v1, or the GCS busy: the short event still tells
            log.debug("cannot read the autoscaler's state", exc_info=True)
            return
        if not infeasible or _counts(bundles) != {
            _key(bundle): count for bundle, count in infeasible
        }:
            return
        c = self.settings.coordinator
        floor = self._scale <= 0.01 or len(bundles) <= c.min_inference_actors + c.min_decode_actors
        if floor:
            text = (
                f"the autoscaler cannot hold even the pools' minima ({_text(_sum(bundles))}):"
                " the node groups are too small for one actor"
            )
        else:
            self._scale *= 0.75
            self._scaled_at = self.clock()
            text = (
                f"the autoscaler's node groups cannot hold the whole request"
                f" ({_text(_sum(bundles))}: autoscaler v2 then adds no node at all): asking"
                f" for {self._scale:.0%} of it; raise the groups' maxima, or lower"
                " FRAMEFLEET_INFERENCE_ACTORS / FRAMEFLEET_MAX_GPUS"
            )
        now = self.clock()
        if now - self._told_at >= _SHORT_S:  # an event at most every _SHORT_S, else a line
            _event(report, text, "autoscale_infeasible")
            self._told_at = now
        else:
            log.info("%s", text, extra={"event": "autoscale_infeasible"})

    # -- creating --------------------------------------------------------------------------

    def _name(self, kind: str) -> str:
        return worker_name(kind, self.generation, next(self._numbers))

    def _new_inference(self) -> Member:
        p = self.settings.pipeline
        name = self._name("inference")
        options = inference_options(p)
        log.info("starting inference actor %s", name)
        handle = self.adapter.create(self._infer_cls, options, self.settings, self.redis_url, name)
        ping = self.adapter.call(handle, "describe")
        return Member(name, handle, ping=ping, started_at=self.clock())

    def _new_decoder(self) -> Member:
        name = self._name("decoder")
        options = decoder_options(self.settings.pipeline)
        ready = [m.handle for m in self.inference if m.ready]
        log.info("starting decode actor %s", name)
        handle = self.adapter.create(
            self._decode_cls, options, self.settings, self.redis_url, ready, name, self.leader
        )
        ping = self.adapter.call(handle, "ready")
        run = self.adapter.call(handle, "run", False)
        return Member(name, handle, ping=ping, run=run, started_at=self.clock())

    def _share_inference(self) -> None:
        """The decode actors get the ready inference actors: none, and they claim nothing
        until there are some again."""
        ready = [m.handle for m in self.inference if m.ready]
        for member in self.decoders:
            self.adapter.call(member.handle, "set_inference", ready)

    # -- stopping --------------------------------------------------------------------------

    def stop(self, timeout: float) -> None:
        """Decode actors release their leases (after settling the chunks out) and return;
        then every actor is killed, and the autoscaler's request withdrawn."""
        for member in self.decoders:
            self.adapter.call(member.handle, "request_stop")
        deadline = self.clock() + timeout
        pending = [m.run for m in self.decoders]
        while pending and self.clock() < deadline:
            finished = self.adapter.done(pending)
            pending = [r for r in pending if r not in finished]
            time.sleep(0.1)
        for member in [*self.decoders, *self.inference, *self.leaving]:
            self.adapter.kill(member.handle)
        self.decoders, self.inference, self.leaving = [], [], []
        if self._requested:
            try:
                self.adapter.request_resources([])
                self._requested = None
            except Exception:  # the next leader's request replaces it
                log.warning("cannot withdraw the autoscaler request", exc_info=True)
