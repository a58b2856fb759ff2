"""The pools' state machine (coordinator/pools.py) with Ray scripted in memory behind the
RayAdapter's surface (which is what the adapter is for) and a real queue in Redis: sizing to
the backlog and the free resources, bursts, idle scale-down, and leaving a draining node.
The same pools on a real cluster are in tests/integration/test_coordinator.py."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from redis import Redis

from framefleet.coordinator import pools as pools_module
from framefleet.coordinator.pools import Pools, wanted
from framefleet.queue import Queue
from framefleet.settings import (
    CoordinatorSettings,
    PipelineSettings,
    QueueSettings,
    Settings,
    SettingsError,
)
from framefleet.workers.actors import DECODE_MALLOC_ENV, FleetError
from framefleet.workers.ray_adapter import ActorGone


@dataclass(eq=False)
class Actor:
    kind: str
    options: dict[str, Any]
    node: str
    pid: int
    alive: bool = True
    stopping: bool = False
    hung: bool = False  # stuck in its __init__ (loading a model, no GPU after all): not ready
    unreachable: bool = False  # gone, and Ray says only that it cannot reach it (for now)
    calls: list[str] = field(default_factory=list)


@dataclass(eq=False)
class Ref:
    actor: Actor
    method: str


class ScriptedRay:
    """The RayAdapter's surface in memory. Actors start at once on `node`, except those of
    the kinds in `hang`, which never finish their __init__ (no call of theirs answers until
    they are killed); a decode actor's run() returns when it is told to stop or drain;
    resources are counted."""

    def __init__(self, cpus: float, gpus: float) -> None:
        self.free = {"CPU": float(cpus), "GPU": float(gpus)}
        self.actors: list[Actor] = []
        self.draining: set[str] = set()
        self.lost: set[str] = set()
        self.node = "node-1"
        self.hang: set[str] = set()
        self.requests: list[list[dict[str, float]]] = []  # asked of the autoscaler, in order
        self.refuse_requests = False  # the GCS does not take them
        self.max_gpus: float | None = None  # the node groups hold this many GPUs at most
        self.added = {"CPU": 0.0, "GPU": 0.0}  # nodes the autoscaler added since the start
        self._pids = itertools.count(1000)

    def remote_class(self, cls: type) -> str:
        return cls.__name__

    def create(self, remote_cls: str, options: dict[str, Any], *args: Any) -> Actor:
        cpus, gpus = options.get("num_cpus", 0.0), options.get("num_gpus", 0.0)
        assert self.free["CPU"] >= cpus - 1e-9 and self.free["GPU"] >= gpus - 1e-9
        self.free["CPU"] -= cpus
        self.free["GPU"] -= gpus
        actor = Actor(
            remote_cls, options, self.node, next(self._pids), hung=remote_cls in self.hang
        )
        self.actors.append(actor)
        return actor

    def call(self, actor: Actor, method: str, *args: Any) -> Ref:
        actor.calls.append(method)
        if method in ("request_stop", "drain"):
            actor.stopping = True
        return Ref(actor, method)

    def done(self, refs: list[Ref]) -> list[Ref]:
        return [r for r in refs if r is not None and self._finished(r)]

    def _finished(self, ref: Ref) -> bool:
        if not ref.actor.alive:
            return True
        return not ref.actor.hung and (ref.method != "run" or ref.actor.stopping)

    def get(self, ref: Ref, timeout: float | None = None) -> Any:
        if not ref.actor.alive:
            if ref.actor.unreachable:
                raise ActorGone("the actor is temporarily unavailable", dead=False)
            raise ActorGone("the actor died")
        if not self._finished(ref):
            raise TimeoutError
        if ref.method == "describe":
            return "model", None, ref.actor.pid, ref.actor.node
        if ref.method == "ready":
            return ref.actor.pid, ref.actor.node
        return []

    def kill(self, actor: Actor) -> None:
        if actor.alive:
            actor.alive = False
            self.free["CPU"] += actor.options.get("num_cpus", 0.0)
            self.free["GPU"] += actor.options.get("num_gpus", 0.0)

    def available(self) -> dict[str, float]:
        return dict(self.free)

    def total(self) -> dict[str, float]:
        used = {"CPU": 0.0, "GPU": 0.0}
        for a in self.actors:
            if a.alive:
                used["CPU"] += a.options.get("num_cpus", 0.0)
                used["GPU"] += a.options.get("num_gpus", 0.0)
        return {k: self.free[k] + used[k] for k in used}

    def request_resources(self, bundles: list[dict[str, float]]) -> None:
        if self.refuse_requests:
            raise ConnectionError("the GCS does not answer")
        self.requests.append(bundles)

    def infeasible_request(self) -> list[tuple[dict[str, float], int]]:
        """Autoscaler v2: a request of more GPUs than `max_gpus` is infeasible whole."""
        if not self.requests or self.max_gpus is None:
            return []
        last = self.requests[-1]
        if sum(b.get("GPU", 0.0) for b in last) <= self.max_gpus:
            return []
        counts: dict[tuple[tuple[str, float], ...], int] = {}
        for b in last:
            key = tuple(sorted(b.items()))
            counts[key] = counts.get(key, 0) + 1
        return [(dict(k), n) for k, n in counts.items()]

    def grow(self, cpus: float, gpus: float) -> None:
        """The autoscaler added a node."""
        self.free["CPU"] += cpus
        self.free["GPU"] += gpus

    def alive_node_ids(self) -> set[str]:
        return {a.node for a in self.actors} - self.lost

    def lose(self, node: str) -> None:
        """The node is gone with every actor on it."""
        self.lost.add(node)
        for actor in self.actors:
            if actor.node == node:
                self.kill(actor)

    def draining_nodes(self) -> set[str]:
        return set(self.draining)

    def live(self, kind: str) -> list[Actor]:
        return [a for a in self.actors if a.alive and a.kind == kind]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


SETTINGS = Settings(
    queue=QueueSettings(name="pools"),
    pipeline=PipelineSettings(
        decode_actors=4,
        inference_actors=4,
        items_per_decoder=2,
        gpus_per_inference=0.25,
        cpus_per_inference=1.0,
        cpus_per_decoder=1.0,
    ),
    coordinator=CoordinatorSettings(
        min_decode_actors=1, min_inference_actors=1, idle_s=60, ray_address="10.0.0.1:6379"
    ),
)


@pytest.fixture
def queue(valkey_client: Redis) -> Queue:
    return Queue(valkey_client, SETTINGS.queue)


def make_pools(
    queue: Queue, ray: ScriptedRay, clock: Clock | None = None, settings: Settings = SETTINGS
) -> Pools:
    return Pools(settings, "redis://unused", queue, ray, "g1", clock=clock or Clock())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("current", "low", "high", "demand", "room", "want"),
    [
        (0, 1, 4, 1000, 100, 4),  # a burst: to the maximum at once
        (0, 1, 4, 1000, 2, 2),  # ...as far as the free resources go
        (2, 1, 4, 1000, 0, 2),  # no room: stay
        (4, 1, 4, 0, 100, 1),  # nothing to do: down to the minimum at once
        (0, 1, 4, 0, 100, 1),  # the minimum even without work
        (0, 2, 4, 0, 1, 1),  # ...but not past the free resources
        (3, 1, 4, 3, 0, 3),
    ],
)
def test_wanted(current: int, low: int, high: int, demand: int, room: int, want: int) -> None:
    assert wanted(current, low, high, demand, room) == want


def test_a_burst_scales_both_pools_to_their_maximum_at_once(queue: Queue) -> None:
    queue.enqueue([f"file:///videos/v{i}.mp4" for i in range(1000)])
    ray = ScriptedRay(cpus=100, gpus=1)
    pools = make_pools(queue, ray)
    pools.tick()  # the inference actors start; decoders wait for a ready one
    assert len(ray.live("InferenceActor")) == 4
    assert ray.live("DecodeActor") == []
    report = pools.tick()
    assert len(ray.live("DecodeActor")) == 4
    assert (report.decoders, report.inference, report.ready_inference) == (4, 4, 4)
    # Every actor without Ray's task events (a record in the GCS per call: per chunk), the
    # decoders with their malloc settings (actors.py)
    assert all(a.options["enable_task_events"] is False for a in ray.actors)
    envs = {a.kind: a.options.get("runtime_env") for a in ray.actors}
    assert envs == {
        "DecodeActor": {"env_vars": DECODE_MALLOC_ENV},
        "InferenceActor": None,
    }


def test_the_report_names_the_actors_pids_only_for_a_fleet_of_modest_size(
    queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 20,000 actors their pids were a megabyte of every tick's health report; a large
    fleet's are in /v1/workers (each actor says its pid in its heartbeats)."""
    queue.enqueue([f"file:///videos/v{i}.mp4" for i in range(1000)])
    ray = ScriptedRay(cpus=100, gpus=1)
    pools = make_pools(queue, ray)
    pools.tick()
    report = pools.tick()
    assert len(report.pids) == 8  # (a decode actor's pid once it has said it)
    monkeypatch.setattr(pools_module, "PIDS_REPORTED", 7)
    assert pools.tick().pids == {}


def test_the_free_resources_bound_the_pools(queue: Queue) -> None:
    queue.enqueue([f"file:///videos/v{i}.mp4" for i in range(100)])
    ray = ScriptedRay(cpus=4, gpus=0.5)  # room for two 0.25-GPU inference actors
    pools = make_pools(queue, ray)
    pools.tick()
    report = pools.tick()
    assert len(ray.live("InferenceActor")) == 2
    # one CPU was kept for the first decoder; two are left after it
    assert len(ray.live("DecodeActor")) == 2
    assert ray.free["CPU"] == 0
    # the report says why fewer run than the backlog wants: room for two
    assert (report.inference, report.inference_wanted, report.inference_room) == (2, 4, 2)


def test_an_idle_queue_scales_down_to_the_minimum_and_a_burst_up_again(queue: Queue) -> None:
    ray, clock = ScriptedRay(cpus=100, gpus=1), Clock()
    pools = make_pools(queue, ray, clock)
    pools.tick()
    pools.tick()
    assert len(ray.live("DecodeActor")) == 1  # no backlog: the decode minimum
    clock.now += 59
    pools.tick()
    assert len(ray.live("InferenceActor")) == 4  # not idle for idle_s yet
    clock.now += 2
    report = pools.tick()
    assert len(ray.live("InferenceActor")) == 1
    assert "inference pool down to 1" in report.events
    queue.enqueue([f"file:///videos/v{i}.mp4" for i in range(50)])
    pools.tick()
    pools.tick()
    assert len(ray.live("InferenceActor")) == 4
    assert len(ray.live("DecodeActor")) == 4


def test_a_smaller_backlog_drains_decoders_instead_of_killing_them(queue: Queue) -> None:
    ids = queue.enqueue([f"file:///videos/v{i}.mp4" for i in range(8)])
    ray = ScriptedRay(cpus=100, gpus=1)
    pools = make_pools(queue, ray)
    pools.tick()
    pools.tick()
    assert len(ray.live("DecodeActor")) == 4
    for item_id in ids[2:]:  # 2 items left: one decoder's worth
        queue.cancel(item_id)
    report = pools.tick()
    drained = [a for a in ray.live("DecodeActor") if "drain" in a.calls]
    assert len(drained) == 3 and not any("request_stop" in a.calls for a in drained)
    assert sum("draining" in e for e in report.events) == 3
    pools.tick()  # their run() returned: gone from the pool, killed
    assert len(ray.live("DecodeActor")) == 1


def test_a_draining_node_is_left_and_replaced_elsewhere(queue: Queue) -> None:
    queue.enqueue([f"file:///videos/v{i}.mp4" for i in range(100)])
    ray = ScriptedRay(cpus=100, gpus=2)
    pools = make_pools(queue, ray)
    pools.tick()
    pools.tick()
    old_decoders, old_inference = ray.live("DecodeActor"), ray.live("InferenceActor")
    ray.draining, ray.node = {"node-1"}, "node-2"
    report = pools.tick()
    # decode actors there release their videos (request_stop, not drain: no waiting for
    # them to finish); the inference actors leave the rotation at once
    assert all("request_stop" in a.calls for a in old_decoders)
    assert sum("its node drains" in e for e in report.events) == 4
    assert all(a.alive for a in old_inference)  # still settling the released chunks
    assert report.inference == 4  # replacements on node-2
    pools.tick()  # the released decoders returned: the old inference actors are killed
    assert not any(a.alive for a in old_inference + old_decoders)
    pools.tick()
    assert {a.node for a in ray.live("InferenceActor")} == {"node-2"}
    assert {a.node for a in ray.live("DecodeActor")} == {"node-2"}
    assert len(ray.live("DecodeActor")) == 4


def test_a_lost_node_gives_its_videos_back_uncharged_and_a_crash_is_judged(
    queue: Queue,
) -> None:
    """Each decode actor holds one video. Its node lost: the video comes back at once, no
    delivery counted. Its process crashed on a live node: the video, which it held alone,
    is charged one delivery (the blame is exact)."""
    queue.enqueue([f"file:///videos/v{i}.mp4" for i in range(8)])
    ray = ScriptedRay(cpus=100, gpus=1)
    pools = make_pools(queue, ray)
    pools.tick()  # the inference actors, on node-1
    ray.node = "node-2"
    pools.tick()  # the decode actors, on node-2
    first, second, *_ = pools.decoders
    [crashed] = queue.claim(1, first.name)
    [lost] = queue.claim(1, second.name)
    first.handle.alive = False  # its process crashed; node-2 lives
    pools.tick()
    crashed_item = queue.get(crashed.id)
    assert crashed_item is not None and (crashed_item.state, crashed_item.deliveries) == (
        "queued",
        1,
    )
    ray.lose("node-2")
    report = pools.tick()
    lost_item = queue.get(lost.id)
    assert lost_item is not None
    assert (lost_item.state, lost_item.deliveries, lost_item.solo) == ("queued", 0, False)
    assert "node-2" in (lost_item.release_reason or "")
    assert report.replaced >= 3


def test_an_actor_whose_heartbeat_stopped_is_killed_but_not_just_after_redis_was_away(
    valkey_client: Redis,
) -> None:
    """An inference actor silent for longer than stale_s (SIGSTOPped, hung) is killed and
    leaves the rotation at once. Silence right after a Redis outage (the sweep's grace, or a
    tick that could not reach Redis) says nothing: nobody is killed then."""
    from framefleet.queue import Supervision
    from tests.conftest import ManualClock

    clock = ManualClock()
    queue = Queue(valkey_client, SETTINGS.queue, clock=clock)
    sup = Supervision(queue)
    queue.enqueue([f"file:///videos/v{i}.mp4" for i in range(8)])
    ray = ScriptedRay(cpus=100, gpus=1)
    pools = make_pools(queue, ray)
    pools.tick()
    pools.tick()
    for member in [*pools.inference, *pools.decoders]:
        sup.heartbeat(member.name)
    victim = pools.inference[0]
    clock.advance(11_000)
    for member in [*pools.inference[1:], *pools.decoders]:
        sup.heartbeat(member.name)
    valkey_client.hset(queue.keys.meta, "grace_until", clock.now_ms + 5_000)  # a gap seen
    pools.tick()
    assert victim.handle.alive  # in the grace: not judged
    valkey_client.hdel(queue.keys.meta, "grace_until")
    report = pools.tick()
    assert not victim.handle.alive and victim not in pools.inference
    assert any("heartbeat" in e for e in report.events)


START_TIMEOUT_S = 45.0  # not the default (600 s): the setting is what counts


def _with_start_timeout() -> Settings:
    """Pools of at most two of each kind (fewer than FAILED_STARTS), waiting START_TIMEOUT_S
    for an actor to start."""
    return replace(
        SETTINGS,
        pipeline=replace(SETTINGS.pipeline, inference_actors=2, decode_actors=2),
        coordinator=replace(SETTINGS.coordinator, start_timeout_s=START_TIMEOUT_S),
    )


def test_an_inference_actor_not_ready_within_the_start_timeout_is_replaced(
    queue: Queue,
) -> None:
    """Inference actors that never finish starting (their __init__ hangs) are waited for
    start_timeout_s after their creation, then killed and replaced; the replacements,
    which start, get the work (the decode actors come once one is ready)."""
    queue.enqueue([f"file:///videos/v{i}.mp4" for i in range(100)])
    ray, clock = ScriptedRay(cpus=100, gpus=1), Clock()
    ray.hang.add("InferenceActor")
    pools = make_pools(queue, ray, clock, _with_start_timeout())
    pools.tick()
    hung = ray.live("InferenceActor")
    assert len(hung) == 2
    clock.now += START_TIMEOUT_S  # not over the timeout yet: still waited for
    report = pools.tick()
    assert ray.live("InferenceActor") == hung and report.ready_inference == 0
    assert report.replaced == 0 and ray.live("DecodeActor") == []
    ray.hang.clear()  # the next ones start
    clock.now += 1
    report = pools.tick()
    assert not any(a.alive for a in hung)  # killed: their GPU shares are free again
    assert report.replaced == 2
    assert sum(f"not ready after {START_TIMEOUT_S:g} s" in e for e in report.events) == 2
    fresh = ray.live("InferenceActor")
    assert len(fresh) == 2 and not set(fresh) & set(hung)
    report = pools.tick()
    assert report.ready_inference == 2 and len(ray.live("DecodeActor")) == 2


def test_a_decode_actor_not_ready_within_the_start_timeout_is_replaced(queue: Queue) -> None:
    """Decode actors that never report ready are waited for start_timeout_s after their
    creation, then killed, once each; they leave the pool and the replacements, which
    start, take their place."""
    queue.enqueue([f"file:///videos/v{i}.mp4" for i in range(100)])
    ray, clock = ScriptedRay(cpus=100, gpus=1), Clock()
    pools = make_pools(queue, ray, clock, _with_start_timeout())
    pools.tick()  # the inference actors, which start
    ray.hang.add("DecodeActor")
    pools.tick()
    hung = ray.live("DecodeActor")
    assert len(hung) == 2 and not any(m.ready for m in pools.decoders)
    clock.now += START_TIMEOUT_S
    report = pools.tick()
    assert ray.live("DecodeActor") == hung and report.replaced == 0
    ray.hang.clear()
    clock.now += 1
    report = pools.tick()
    assert not any(a.alive for a in hung) and report.replaced == 2
    assert sum(f"not ready after {START_TIMEOUT_S:g} s" in e for e in report.events) == 2
    fresh = ray.live("DecodeActor")
    assert len(fresh) == 2 and not set(fresh) & set(hung)
    pools.tick()
    assert all(m.ready for m in pools.decoders) and len(pools.decoders) == 2


@pytest.mark.parametrize("kind", ["InferenceActor", "DecodeActor"])
def test_actors_that_never_start_stop_the_fleet_with_the_reason(queue: Queue, kind: str) -> None:
    """Actors of a kind that keep hanging at start (a CUDA init that never returns, say)
    are not replaced for ever: the FAILED_STARTS-th in a row not ready within
    start_timeout_s is a FleetError that says so (the fleet cannot run as configured)."""
    queue.enqueue([f"file:///videos/v{i}.mp4" for i in range(100)])
    ray, clock = ScriptedRay(cpus=100, gpus=1), Clock()
    pools = make_pools(queue, ray, clock, _with_start_timeout())
    if kind == "DecodeActor":
        pools.tick()  # the inference actors start, then the decode actors come
    ray.hang.add(kind)
    pools.tick()
    assert len(ray.live(kind)) == 2
    clock.now += START_TIMEOUT_S + 1
    pools.tick()  # two killed (fewer than FAILED_STARTS): replaced
    assert len(ray.live(kind)) == 2
    clock.now += START_TIMEOUT_S + 1
    with pytest.raises(FleetError, match=f"fail to start: not ready after {START_TIMEOUT_S:g} s"):
        pools.tick()


INFERENCE = {"CPU": 1.0, "GPU": 0.25}
DECODER = {"CPU": 1.0}


def test_a_burst_asks_the_autoscaler_for_the_whole_fleet_and_the_pools_grow_onto_new_nodes(
    queue: Queue,
) -> None:
    """The request is the whole wanted fleet (the autoscaler packs it as if the nodes were
    empty), sent once while it holds; actors start only where there is room, more as the
    new nodes come."""
    queue.enqueue([f"file:///videos/v{i}.mp4" for i in range(1000)])
    ray = ScriptedRay(cpus=2, gpus=0.25)  # the head: room for one actor of each kind
    pools = make_pools(queue, ray)
    report = pools.tick()
    assert ray.requests == [[INFERENCE] * 4 + [DECODER] * 4]
    assert report.requested == {"CPU": 8.0, "GPU": 1.0}
    assert len(ray.live("InferenceActor")) == 1  # the decoder minimum's CPU is kept free
    pools.tick()
    assert (len(ray.live("InferenceActor")), len(ray.live("DecodeActor"))) == (1, 1)
    ray.grow(cpus=8, gpus=1)  # the autoscaler's node came
    pools.tick()
    pools.tick()
    assert (len(ray.live("InferenceActor")), len(ray.live("DecodeActor"))) == (4, 4)
    assert len(ray.requests) == 1  # unchanged: not sent again


def test_an_empty_queue_asks_for_the_minima_and_stop_withdraws_the_request(
    queue: Queue,
) -> None:
    ids = queue.enqueue([f"file:///videos/v{i}.mp4" for i in range(100)])
    ray = ScriptedRay(cpus=100, gpus=1)
    pools = make_pools(queue, ray)
    pools.tick()
    for item_id in ids:
        queue.cancel(item_id)
    pools.tick()
    # the nodes that hold the minima are kept; the idle others may go
    assert ray.requests[-1] == [INFERENCE, DECODER]
    pools.stop(timeout=1)
    assert ray.requests[-1] == []


def test_a_small_backlog_asks_for_inference_in_proportion_not_every_gpu(queue: Queue) -> None:
    """One video must not buy every GPU the pools may hold; the nodes already there are
    used whole all the same."""
    settings = replace(SETTINGS, pipeline=replace(SETTINGS.pipeline, inference_actors=8))
    queue.enqueue(["file:///videos/a.mp4", "file:///videos/b.mp4", "file:///videos/c.mp4"])
    ray = ScriptedRay(cpus=100, gpus=4)
    pools = make_pools(queue, ray, settings=settings)
    pools.tick()
    # 3 videos: 2 decode actors (2 a decoder), inference 8/4 as many as decoders
    assert ray.requests == [[INFERENCE] * 4 + [DECODER] * 2]
    assert len(ray.live("InferenceActor")) == 8  # the room there was, used


def test_the_cost_cap_bounds_the_pools_and_the_request(queue: Queue) -> None:
    settings = replace(
        SETTINGS, coordinator=replace(SETTINGS.coordinator, max_gpus=0.5, max_cpus=5.0)
    )
    queue.enqueue([f"file:///videos/v{i}.mp4" for i in range(1000)])
    ray = ScriptedRay(cpus=100, gpus=4)
    pools = make_pools(queue, ray, settings=settings)
    pools.tick()
    report = pools.tick()
    # two 0.25-GPU inference actors; the 5 CPUs leave three for decoders
    assert (len(ray.live("InferenceActor")), len(ray.live("DecodeActor"))) == (2, 3)
    assert ray.requests[-1] == [INFERENCE] * 2 + [DECODER] * 3
    assert (report.inference_wanted, report.decoders_wanted) == (2, 3)


def test_caps_that_cannot_hold_the_minima_are_refused() -> None:
    with pytest.raises(SettingsError, match=r"MAX_GPUS=0\.1 "):
        replace(SETTINGS, coordinator=replace(SETTINGS.coordinator, max_gpus=0.1))
    with pytest.raises(SettingsError, match=r"MAX_CPUS=1 "):
        replace(SETTINGS, coordinator=replace(SETTINGS.coordinator, max_cpus=1.0))


def test_without_autoscale_nothing_is_asked(queue: Queue) -> None:
    settings = replace(SETTINGS, coordinator=replace(SETTINGS.coordinator, autoscale=False))
    queue.enqueue([f"file:///videos/v{i}.mp4" for i in range(10)])
    ray = ScriptedRay(cpus=100, gpus=1)
    pools = make_pools(queue, ray, settings=settings)
    report = pools.tick()
    pools.stop(timeout=1)
    assert ray.requests == [] and report.requested is None


def test_a_request_the_gcs_refused_is_sent_again_and_a_cluster_left_short_is_told(
    queue: Queue,
) -> None:
    queue.enqueue([f"file:///videos/v{i}.mp4" for i in range(1000)])
    ray, clock = ScriptedRay(cpus=2, gpus=0.25), Clock()
    ray.refuse_requests = True
    pools = make_pools(queue, ray, clock)
    pools.tick()
    ray.refuse_requests = False
    report = pools.tick()
    assert len(ray.requests) == 1
    assert not any("short" in e for e in report.events)
    clock.now += 601  # no node came in ten minutes (a group's maximum, a quota)
    report = pools.tick()
    short = [e for e in report.events if "still short" in e]
    assert short and "6 CPU, 0.75 GPU more" in short[0] and "FRAMEFLEET_MAX_GPUS" in short[0]
    assert not any("still short" in e for e in pools.tick().events)  # not every tick


def test_a_request_autoscaler_v2_cannot_hold_whole_shrinks_until_it_can(queue: Queue) -> None:
    """Autoscaler v2 adds no node for a request its node groups cannot hold whole: the
    request shrinks by a quarter a tick until it fits, is told once, and after ten minutes
    the whole is tried again."""
    settings = replace(SETTINGS, pipeline=replace(SETTINGS.pipeline, inference_actors=16))
    settings = replace(settings, pipeline=replace(settings.pipeline, decode_actors=16))
    queue.enqueue([f"file:///videos/v{i}.mp4" for i in range(1000)])
    ray, clock = ScriptedRay(cpus=2, gpus=0.25), Clock()
    ray.max_gpus = 2.0  # room for 8 of the 16 inference actors
    pools = make_pools(queue, ray, clock, settings=settings)
    events = []
    for _ in range(20):  # the autoscaler's state is read every 5 s at most
        events += pools.tick().events
        clock.now += 2
    gpus = [sum(b.get("GPU", 0.0) for b in r) for r in ray.requests]
    assert gpus[0] == 4.0 and gpus[-1] <= 2.0  # 16, then 12, then 9 x 0.25 GPU, ...
    assert gpus == sorted(gpus, reverse=True) and len(set(gpus)) == len(gpus)
    told = [e for e in events if "cannot hold the whole request" in e]
    assert len(told) == 1 and "asking for 75% of it" in told[0]
    settled = len(ray.requests)
    pools.tick()
    assert len(ray.requests) == settled  # it fits: left as it is
    clock.now += 601
    pools.tick()
    assert sum(b.get("GPU", 0.0) for b in ray.requests[-1]) == 4.0  # the whole, again


def test_an_unreachable_decoder_waits_for_rays_word_on_its_node_before_it_is_judged(
    queue: Queue,
) -> None:
    """A node killed whole: Ray first says only that its actors cannot be reached, and
    marks the node dead some seconds later. The video of a decode actor there is released
    uncharged once the node is known lost, not charged as a crash at the first error; one
    whose node lives on for UNSURE_S is judged as a crash."""
    queue.enqueue([f"file:///videos/v{i}.mp4" for i in range(8)])
    ray, clock = ScriptedRay(cpus=100, gpus=1), Clock()
    pools = make_pools(queue, ray, clock)
    pools.tick()  # the inference actors, on node-1
    ray.node = "node-2"
    pools.tick()  # the decode actors, on node-2
    pools.tick()  # ready
    first, second, *_ = pools.decoders
    [lost] = queue.claim(1, first.name)
    [crashed] = queue.claim(1, second.name)
    for member in (first, second):
        member.handle.alive, member.handle.unreachable = False, True
    report = pools.tick()
    assert sum("waiting for Ray's word" in e for e in report.events) == 2
    for item_id in (lost.id, crashed.id):
        item = queue.get(item_id)
        assert item is not None and (item.state, item.deliveries) == ("leased", 0)
    ray.lost.add("node-2")  # Ray's word: node-2 is dead; say the second ran on node-1
    second.node = "node-1"
    pools.tick()
    lost_item = queue.get(lost.id)
    assert lost_item is not None
    assert (lost_item.state, lost_item.deliveries) == ("queued", 0)
    assert "node-2" in (lost_item.release_reason or "")
    clock.now += 61  # node-3 lives on: a crash
    report = pools.tick()
    assert any("its node lives on" in e for e in report.events)
    crashed_item = queue.get(crashed.id)
    assert crashed_item is not None and crashed_item.deliveries == 1
