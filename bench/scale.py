"""Scaling benchmark: does 2x compute give 2x throughput? Steady-state throughput at N = 1, 2,
4, 8, 16, 32 inference actors, with the decode actors to match, and what bends it, measured.

The set-up, one fleet per N:
- a Ray cluster on this machine whose autoscaler (v2, as under KubeRay) starts real worker
  raylets as fake nodes (tests/support/raycluster.py: FakeAutoscalingCluster): a head with no
  CPUs and nodes of --gpus-per-node logical GPUs and twice as many CPUs, so that the nodes
  grow with N as they would on a real cluster (a 4-GPU node: 1, 1, 1, 2, 4, 8 nodes) and the
  fleet gets them the way it does in production (the pools ask the autoscaler);
- a real `framefleet coordinator` subprocess (default 2 s tick) on an embedded Redis, N
  inference actors (1 logical GPU and 1 CPU each) and D = ceil(2N / (items_per_decoder x
  max_inflight_chunks)) decode actors: a decode actor has at most items_per_decoder x
  max_inflight_chunks chunks out (8 by default), so D of them keep two chunks at each
  inference actor, one running and one waiting (1, 1, 1, 2, 4, 8);
- a model paced by sleeping (bench/paced_model.py: --pace-s per chunk, as a GPU's forward pass,
  no core busy, no torch), so that this machine's cores are not the model's; every other cost
  is framefleet's and Ray's own: decoding, the object store, tasks, outputs, checkpoints;
- small H.264 videos written with PyAV (96x64, --chunks-per-video chunks of 32 frames), the
  same few files enqueued under many ids.

Once the pools are full (every actor ready, every decode actor's places taken) and after a
warm-up, --windows windows of --window-s seconds each measure (medians over the windows):
- chunks/s through the model: each predict() counted by its share inside the window, from
  the actors' trace (so a slow pace has no rounding to whole chunks); videos acknowledged;
  each inference actor's share of the window in predict() (`predict_share`: under the pace's
  ~0.98 means it waited for chunks) and its seconds per chunk (pace + write);
- CPU seconds (psutil) of every process of the fleet by kind: inference and decode actors,
  the decoders' child processes (counted exactly, those that ended too), raylets, Ray's
  agents, idle Ray workers, GCS, autoscaler, coordinator, driver, Redis; and the machine's
  busy cores, so that others' work on a shared machine shows (`other_cores`);
- Redis: commands by name (INFO commandstats) and its CPU; the coordinator's tick times
  (each health report's `tick_s`, read four times a tick period);
  after the windows, Ray's object store.
Efficiency is chunks/s at N over N times chunks/s per actor at the smallest N; `bends_at` is
the first N under 0.9. `costs` fits each kind's cores against chunks/s over the Ns: the slope
is a chunk's CPU cost (with that of the actors that process it: chunks/s grows with N here),
split into what each node pays on its own cores on a real cluster (actors, raylets, agents)
and what the fleet's central processes pay (Redis, GCS, driver, autoscaler), and the
chunks/s at which this machine's cores, or one core for Redis, would run out.

Prints one JSON line (and a line per N on stderr). Run: `python bench/scale.py [--quick]
[--ns 1,2,4,8,16,32] [--pace-s 2] [--out FILE]`; --quick: N = 1, 2, 4, a 1 s pace, one 10 s
window.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path; drop it (see bench/queue.py).
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    del sys.path[0]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support, bench

import argparse
import contextlib
import json
import math
import os
import signal
import statistics
import subprocess
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import psutil
from redis import Redis

from bench import emit
from bench.fleetcost import (
    Proc,
    busy_shares,
    chunk_rate,
    cpu_by_kind,
    object_store,
    predicts,
    processes,
)
from bench.paced_model import spec
from bench.queue import machine
from framefleet.queue import EmbeddedServer, NewItem, Queue, Supervision
from framefleet.settings import (
    CoordinatorSettings,
    ModelSettings,
    PipelineSettings,
    QueueSettings,
    RedisSettings,
    Settings,
    SourceSettings,
)
from tests.support.fleet import Fleet, reaped, wait
from tests.support.raycluster import FakeAutoscalingCluster
from tests.support.videos import write_video

ROOT = Path(__file__).resolve().parents[1]
CHUNK_FRAMES = PipelineSettings().chunk_frames
# the process kinds that run on every node: a real cluster's nodes each bring their own cores
# for them; the others (redis, gcs, autoscaler, coordinator, driver, other_ray: the head's
# `ray start` and dashboard) are one for the whole fleet
PER_NODE = (
    "inference_actors",
    "decode_actors",
    "decode_children",
    "raylets",
    "ray_agents",
    "idle_workers",
)


@dataclass(frozen=True)
class Config:
    ns: list[int]
    pace_s: float
    chunks_per_video: int
    window_s: float
    windows: int
    warm_s: float
    gpus_per_node: int


# -- one snapshot and one window --------------------------------------------------------------


@dataclass
class Snapshot:
    at: float
    machine_busy: float  # the machine's busy CPU seconds (all of it, others' work too)
    steal: float
    procs: dict[int, Proc]
    commands: dict[str, int]
    redis_cpu: float
    frames: int
    acked: int
    inference_busy: float  # seconds at the inference actors, as each chunk's checkpoint says

    @staticmethod
    def take(run: Run) -> Snapshot:
        r = run.redis
        stats = r.info("commandstats")
        cpu = r.info("cpu")
        times = psutil.cpu_times()
        busy = sum(times) - times.idle - getattr(times, "iowait", 0.0)
        busy -= getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
        metrics = run.fleet.queue.metrics()
        return Snapshot(
            at=time.time(),
            machine_busy=busy,
            steal=getattr(times, "steal", 0.0),
            procs=processes(run.session, run.roles()),
            commands={k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()},
            redis_cpu=float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]),
            frames=metrics.stats.counters.get("frames_total", 0),
            acked=metrics.stats.counters.get("acked_total", 0),
            inference_busy=sum(v for k, v in metrics.busy_s.items() if k.startswith("inference")),
        )


@dataclass
class Window:
    a: Snapshot
    b: Snapshot

    @property
    def seconds(self) -> float:
        return self.b.at - self.a.at

    def cpu(self) -> dict[str, float]:
        return cpu_by_kind(self.a.procs, self.b.procs)

    def commands(self) -> Counter[str]:
        before = self.a.commands
        return Counter({k: v - before.get(k, 0) for k, v in self.b.commands.items()})


# -- one fleet --------------------------------------------------------------------------------


def decoders_for(n: int, p: PipelineSettings) -> int:
    """Decode actors for n inference actors: two chunks out at each (see the docstring)."""
    return max(1, math.ceil(2 * n / (p.items_per_decoder * p.max_inflight_chunks)))


@dataclass
class Run:
    """One N: its queue, coordinator, trace and ticks."""

    n: int
    config: Config
    cluster: FakeAutoscalingCluster
    videos: list[Path]
    tmp: Path
    fleet: Fleet = field(init=False)
    redis: Redis = field(init=False)
    trace: Path = field(init=False)  # the inference actors' predict() calls (paced_model)
    ticks: dict[float, float] = field(default_factory=dict)  # report time: its tick_s
    session: int = field(init=False)  # the Ray head's session: every process of the cluster
    coordinator: subprocess.Popen[bytes] | None = None
    enqueued: int = 0

    def __post_init__(self) -> None:
        self.tmp.mkdir(parents=True)
        self.trace = self.tmp / "trace"
        server = EmbeddedServer(self.tmp / "redis").start()
        p = PipelineSettings(
            out=str(self.tmp / "out"),
            inference_actors=self.n,
            decode_actors=decoders_for(self.n, PipelineSettings()),
            gpus_per_inference=1.0,
            cpus_per_inference=1.0,
            cpus_per_decoder=1.0,
        )
        settings = Settings(
            redis=RedisSettings(url=server.url),
            queue=QueueSettings(name="scale"),
            source=SourceSettings(allowed_roots=(self.videos[0].parent,)),
            model=ModelSettings(
                model=spec(self.config.pace_s, self.trace), plugin="bench.paced_model:load"
            ),
            pipeline=p,
            coordinator=CoordinatorSettings(ray_address=self.cluster.address),
        )
        client = Redis.from_url(server.url, decode_responses=True)
        queue = Queue(client, settings.queue)
        env = {
            **os.environ,
            **settings.to_env(),
            **self.cluster.auth,
            "PYTHONPATH": str(ROOT),
        }
        logs = self.tmp / "logs"
        logs.mkdir()
        self.fleet = Fleet(settings, server, queue, Supervision(queue), [], [], env, logs)
        self.redis = client
        self.session = self.cluster.head.proc.pid if self.cluster.head.proc else -1

    @property
    def decoders(self) -> int:
        return self.fleet.settings.pipeline.decode_actors

    def roles(self) -> dict[int, str]:
        roles = {os.getpid(): "bench"}
        if self.fleet.server.pid is not None:
            roles[self.fleet.server.pid] = "redis"
        if self.coordinator is not None:
            roles[self.coordinator.pid] = "coordinator"
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(self.coordinator.pid).children(recursive=True):
                    roles[child.pid] = "driver"
        return roles

    def enqueue(self, n: int) -> None:
        first, self.enqueued = self.enqueued, self.enqueued + n
        items = [
            NewItem(str(self.videos[i % len(self.videos)]), id=f"n{self.n}-{i:06d}")
            for i in range(first, self.enqueued)
        ]
        self.fleet.queue.enqueue(items)

    def top_up(self, seconds: float) -> None:
        """Enough queued for `seconds` at N / pace chunks a second (and half as much again),
        and every decode actor's places; enqueued between the windows, not during one."""
        c = self.config
        videos = self.n / c.pace_s / c.chunks_per_video * seconds * 1.5
        want = (
            math.ceil(videos) + 2 * self.decoders * self.fleet.settings.pipeline.items_per_decoder
        )
        queued = self.fleet.queue.stats().counts["queued"]
        if queued < want:
            self.enqueue(want - queued)

    def health(self) -> dict[str, Any]:
        return self.fleet.supervision.health() or {}

    def watch_ticks(self, seconds: float) -> None:
        """Wait `seconds`, keeping the tick time of each health report meanwhile."""
        end, period = time.monotonic() + seconds, self.fleet.settings.coordinator.tick_s / 4
        while time.monotonic() < end:
            h = self.health()
            if isinstance(h.get("tick_s"), int | float) and isinstance(h.get("at"), int | float):
                self.ticks[float(h["at"])] = float(h["tick_s"])
            time.sleep(min(period, max(0.0, end - time.monotonic())))

    def full(self) -> bool:
        """Every actor ready and every decode actor's places taken (the queue topped up on
        the way: a long ramp must not run it dry)."""
        self.top_up(60.0)
        h = self.health()
        pids = (h.get("pids") or {}).items()
        decoders = sum(1 for name, pid in pids if name.startswith("decoder") and pid)
        if h.get("ready_inference") != self.n or decoders != self.decoders:
            return False
        places = self.decoders * self.fleet.settings.pipeline.items_per_decoder
        return self.fleet.queue.stats().counts["leased"] >= places

    def actors_left(self) -> bool:
        kinds = {"inference_actors", "decode_actors", "decode_children"}
        return any(p.kind in kinds for p in processes(self.session, {}).values())


def measure(run: Run) -> dict[str, Any]:
    """With the coordinator started: wait for full pools, warm up, then the windows."""
    c = run.config
    started = time.monotonic()
    ready_s = wait(lambda: bool(run.health().get("ready_inference")), 600, "an inference actor")
    wait(run.full, 900, f"{run.n} inference and {run.decoders} decode actors busy")
    ramp = {"first_ready_s": round(ready_s, 1), "full_s": round(time.monotonic() - started, 1)}
    nodes = len(run.cluster.worker_nodes())
    run.top_up(c.warm_s + c.window_s + 30)
    time.sleep(c.warm_s)
    windows, starved = [], False
    for _ in range(c.windows):
        run.top_up(c.window_s + 30)
        a = Snapshot.take(run)
        run.watch_ticks(c.window_s)
        windows.append(Window(a, Snapshot.take(run)))
        starved |= run.fleet.queue.stats().counts["queued"] == 0
    store = object_store(run.cluster.address, run.fleet.env)
    health = run.health()
    result = summarise(run, windows, predicts(run.trace))
    result.update(
        nodes=nodes,
        ramp=ramp,
        object_store=store,
        starved=starved,
        replaced=health.get("replaced", 0),
        events=health.get("events", [])[-3:],
    )
    return result


def one_n(run: Run) -> dict[str, Any]:
    """The coordinator started, measured and stopped (SIGTERM: its decode actors release,
    its actors are killed), then until no actor process is left on the nodes; the queue's
    Redis goes last. On a failure, the coordinator's log is printed."""
    started = time.monotonic()
    run.top_up(120.0)  # the ramp's work: more is enqueued once the pools are full
    run.coordinator = run.fleet.coordinator("coordinator")
    try:
        with reaped(run.coordinator, logs=run.fleet.logs):
            result = measure(run)
            run.coordinator.send_signal(signal.SIGTERM)
            run.coordinator.wait(60)
        wait(lambda: not run.actors_left(), 90, "the fleet's actors gone")
    finally:
        run.redis.close()
        run.fleet.close()
    result["seconds"] = round(time.monotonic() - started)
    return result


# -- figures ----------------------------------------------------------------------------------


def _q(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else 0.0


def _r(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(x, digits)


def window_figures(w: Window, calls: dict[str, list[tuple[float, float]]]) -> dict[str, Any]:
    t0, t1, s = w.a.at, w.b.at, w.seconds
    cpu = w.cpu()
    shares = busy_shares(calls, t0, t1)
    return {
        "seconds": round(s, 2),
        "chunks_per_s": round(chunk_rate(calls, t0, t1), 3),
        "chunks_checkpointed": (w.b.frames - w.a.frames) // CHUNK_FRAMES,
        "videos_acked": w.b.acked - w.a.acked,
        "predict_share_min": _r(shares[0] if shares else None),
        "machine_busy_cores": round((w.b.machine_busy - w.a.machine_busy) / s, 3),
        "steal_cores": round((w.b.steal - w.a.steal) / s, 3),
        "fleet_cores": round(sum(v for k, v in cpu.items() if k != "bench") / s, 3),
        "redis_cores": round((w.b.redis_cpu - w.a.redis_cpu) / s, 3),
    }


def cpu_figures(windows: list[Window], each: list[dict[str, Any]], chunks: float) -> dict[str, Any]:
    span = sum(w.seconds for w in windows)
    cpu: defaultdict[str, float] = defaultdict(float)
    for w in windows:
        for kind, seconds in w.cpu().items():
            cpu[kind] += seconds
    fleet = sum(v for k, v in cpu.items() if k != "bench")
    return {
        "machine_busy_cores": statistics.median(e["machine_busy_cores"] for e in each),
        "steal_cores": statistics.median(e["steal_cores"] for e in each),
        "fleet_cores": round(fleet / span, 3),
        # the machine's busy time that is not the fleet's: others' work on a shared machine
        "other_cores": round(
            statistics.median(e["machine_busy_cores"] - e["fleet_cores"] for e in each), 3
        ),
        "cores_by_kind": {k: round(v / span, 3) for k, v in sorted(cpu.items())},
        "ms_per_chunk": _r(1000 * fleet / chunks if chunks else None, 1),
        "ms_per_chunk_by_kind": {k: round(1000 * v / chunks, 2) for k, v in sorted(cpu.items())}
        if chunks
        else {},
    }


def redis_figures(
    windows: list[Window], each: list[dict[str, Any]], chunks: float, videos: int
) -> dict[str, Any]:
    span = sum(w.seconds for w in windows)
    commands: Counter[str] = Counter()
    for w in windows:
        commands.update(w.commands())
    total = sum(commands.values())
    return {
        "commands_per_s": round(total / span, 1),
        "commands_per_chunk": _r(total / chunks if chunks else None, 1),
        "commands_per_video": _r(total / videos if videos else None, 1),
        "top_per_s": {k: round(v / span, 2) for k, v in commands.most_common(12)},
        "cores": statistics.median(e["redis_cores"] for e in each),
    }


def tick_figures(run: Run, windows: list[Window], driver_cpu_s: float) -> dict[str, Any]:
    spans = [(w.a.at, w.b.at) for w in windows]
    ticks = sorted(s for at, s in run.ticks.items() if any(t0 <= at <= t1 for t0, t1 in spans))
    return {
        "count": len(ticks),
        "p50_s": round(_q(ticks, 0.5), 3),
        "p90_s": round(_q(ticks, 0.9), 3),
        "max_s": _r(ticks[-1] if ticks else None),
        "tick_s": run.fleet.settings.coordinator.tick_s,
        "driver_cpu_s_per_tick": _r(driver_cpu_s / len(ticks) if ticks else None),
    }


def process_figures(procs: dict[int, Proc]) -> dict[str, Any]:
    rss: Counter[str] = Counter()
    count: Counter[str] = Counter()
    names: defaultdict[str, set[str]] = defaultdict(set)
    for p in procs.values():
        rss[p.kind] += p.rss
        count[p.kind] += 1
        names[p.kind].add(p.name)
    return {
        "rss_mb_by_kind": {k: round(v / 2**20) for k, v in sorted(rss.items())},
        "processes_by_kind": dict(sorted(count.items())),
        "names_by_kind": {k: sorted(v)[:6] for k, v in sorted(names.items())},
    }


def summarise(
    run: Run, windows: list[Window], calls: dict[str, list[tuple[float, float]]]
) -> dict[str, Any]:
    c = run.config
    each = [window_figures(w, calls) for w in windows]
    span = sum(w.seconds for w in windows)
    chunks = sum(e["chunks_per_s"] * e["seconds"] for e in each)
    videos = sum(e["videos_acked"] for e in each)
    cps = statistics.median(e["chunks_per_s"] for e in each)
    shares = sorted(x for w in windows for x in busy_shares(calls, w.a.at, w.b.at))
    checkpointed = sum(e["chunks_checkpointed"] for e in each)
    actor_s = sum(w.b.inference_busy - w.a.inference_busy for w in windows)
    cpu = cpu_figures(windows, each, chunks)
    ticks = tick_figures(run, windows, cpu["cores_by_kind"].get("driver", 0.0) * span)
    redis = redis_figures(windows, each, chunks, videos)
    return {
        "n": run.n,
        "decode_actors": run.decoders,
        "chunks_per_s": round(cps, 3),
        "vs_pace": round(cps * c.pace_s / run.n, 3),
        "videos_per_s": round(videos / span, 4),
        "videos_per_s_from_chunks": round(cps / c.chunks_per_video, 4),
        # each inference actor's share of each window spent in predict() (the pace)
        "predict_share": {
            "min": _r(shares[0] if shares else None),
            "median": round(_q(shares, 0.5), 3),
            "max": _r(shares[-1] if shares else None),
        },
        # seconds an inference actor spends on a chunk: the pace, the output's write
        "actor_s_per_chunk": _r(actor_s / checkpointed if checkpointed else None),
        "cpu": cpu,
        "redis": redis,
        "ticks": ticks,
        # how near each shared resource is to its limit: the machine's cores, Redis's one
        # core, the driver's tick (p90 over tick_s)
        "saturation": {
            "machine_cpu": round(cpu["machine_busy_cores"] / (os.cpu_count() or 1), 3),
            "redis_cpu": redis["cores"],
            "tick": round(ticks["p90_s"] / ticks["tick_s"], 3),
        },
        **process_figures(windows[-1].b.procs),
        "windows": each,
    }


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """(intercept, slope) of the least-squares line; (mean, 0) with one point."""
    if len(set(xs)) < 2:
        return statistics.fmean(ys), 0.0
    slope, intercept = statistics.linear_regression(xs, ys)
    return intercept, slope


def costs(runs: list[dict[str, Any]], config: Config) -> dict[str, Any]:
    """CPU and Redis commands against chunks/s over the Ns: the slope is the cost of a
    chunk (with the actors that process it: chunks/s grows with N here), the intercept what
    the cluster costs with nothing to do."""
    xs = [r["chunks_per_s"] for r in runs]
    kinds = sorted({k for r in runs for k in r["cpu"]["cores_by_kind"]} - {"bench"})
    by_kind = {k: fit(xs, [r["cpu"]["cores_by_kind"].get(k, 0.0) for r in runs]) for k in kinds}
    idle, per_chunk = fit(xs, [r["cpu"]["fleet_cores"] for r in runs])
    commands_idle, commands = fit(xs, [r["redis"]["commands_per_s"] for r in runs])
    node_ms = 1000 * sum(by_kind[k][1] for k in kinds if k in PER_NODE)
    central_ms = 1000 * sum(by_kind[k][1] for k in kinds if k not in PER_NODE)
    redis_ms = 1000 * by_kind.get("redis", (0.0, 0.0))[1]
    cores = os.cpu_count() or 1
    return {
        "cpu_ms_per_chunk": round(1000 * per_chunk, 1),
        "idle_cores": round(idle, 3),
        "ms_per_chunk_by_kind": {k: round(1000 * b, 2) for k, (_, b) in by_kind.items()},
        "idle_cores_by_kind": {k: round(a, 3) for k, (a, _) in by_kind.items()},
        "per_node_ms_per_chunk": round(node_ms, 1),
        "central_ms_per_chunk": round(central_ms, 1),
        "redis_commands_per_chunk": round(commands, 1),
        "redis_commands_per_video": round(commands * config.chunks_per_video),
        "redis_idle_commands_per_s": round(commands_idle, 1),
        "limits_chunks_per_s": {
            # this machine's cores, the fleet alone, at the fitted cost
            "this_machine": _r((cores - idle) / per_chunk if per_chunk > 0 else None, 1),
            # one core for Redis (single-threaded), for the central processes together
            "redis_core": _r(1000 / redis_ms if redis_ms > 0 else None, 1),
            "central_core": _r(1000 / central_ms if central_ms > 0 else None, 1),
        },
    }


def conclude(runs: list[dict[str, Any]], config: Config) -> dict[str, Any]:
    """Efficiency against the smallest N (chunks/s per inference actor), where it first
    falls under 0.9, and the costs behind it."""
    base = runs[0]
    per_actor = base["chunks_per_s"] / base["n"]
    for r in runs:
        r["efficiency"] = _r(r["chunks_per_s"] / (r["n"] * per_actor) if per_actor else None)
    return {
        "efficiency": {r["n"]: r["efficiency"] for r in runs},
        "bends_at": next((r["n"] for r in runs if (r["efficiency"] or 0) < 0.9), None),
        "costs": costs(runs, config),
    }


# -- the whole run ----------------------------------------------------------------------------


def run_all(config: Config, tmp: Path) -> list[dict[str, Any]]:
    folder = tmp / "videos"
    folder.mkdir()
    frames = config.chunks_per_video * CHUNK_FRAMES
    videos = [write_video(folder / f"v{i}.mp4", frames=frames) for i in range(4)]
    node = {
        "resources": {"CPU": 2 * config.gpus_per_node, "GPU": config.gpus_per_node},
        "max_workers": math.ceil(max(config.ns) / config.gpus_per_node),
    }
    # nodes outlive a fleet for two minutes: the next N, larger, finds them
    cluster = FakeAutoscalingCluster({"gpu": node}, idle_timeout_s=120).start()
    results = []
    try:
        for n in config.ns:
            result = one_n(Run(n, config, cluster, videos, tmp / f"n{n}"))
            results.append(result)
            keys = ("n", "chunks_per_s", "vs_pace", "predict_share", "ramp", "seconds")
            line = {k: result[k] for k in keys}
            line["machine_busy_cores"] = result["cpu"]["machine_busy_cores"]
            print(json.dumps(line), file=sys.stderr, flush=True)
    finally:
        cluster.stop()
    return results


def _stop_cleanly() -> None:
    """SIGINT and SIGTERM end the run through its `finally` blocks, so that the fake
    cluster's raylets and actors are stopped too: a job started in the background has
    SIGINT ignored, and SIGTERM's default action skips them (a stopped run left its whole
    cluster running)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))


def main(argv: list[str] | None = None) -> int:
    _stop_cleanly()
    parser = argparse.ArgumentParser(prog="bench/scale.py", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="N = 1, 2, 4, 1 s pace, one window")
    parser.add_argument("--ns", default="1,2,4,8,16,32", help="inference actors, ascending")
    parser.add_argument("--pace-s", type=float, default=2.0, help="the model's seconds a chunk")
    parser.add_argument("--chunks-per-video", type=int, default=16)
    parser.add_argument("--window-s", type=float, default=20.0)
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--warm-s", type=float, default=10.0, help="after the pools are full")
    parser.add_argument("--gpus-per-node", type=int, default=4)
    parser.add_argument("--out", help="also append the JSON line to this file")
    args = parser.parse_args(argv)
    config = Config(
        ns=[1, 2, 4] if args.quick else sorted(int(x) for x in args.ns.split(",")),
        pace_s=1.0 if args.quick else args.pace_s,
        chunks_per_video=args.chunks_per_video,
        window_s=10.0 if args.quick else args.window_s,
        windows=1 if args.quick else args.windows,
        warm_s=3.0 if args.quick else args.warm_s,
        gpus_per_node=args.gpus_per_node,
    )
    started = time.monotonic()
    load = os.getloadavg()[0]  # others' work on a shared machine shows here
    with tempfile.TemporaryDirectory(prefix="ff-scale-", dir="/tmp") as tmp:
        runs = run_all(config, Path(tmp))
    result: dict[str, Any] = {
        "bench": "scale",
        "machine": {**machine(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1)},
        "load_before": round(load, 2),
        "config": {
            **vars(config),
            "chunk_frames": CHUNK_FRAMES,
            "video": "96x64 H.264, 15 fps",
            "node": f"{config.gpus_per_node} GPU, {2 * config.gpus_per_node} CPU (logical)",
        },
        **conclude(runs, config),
        "runs": runs,
        "seconds": round(time.monotonic() - started),
    }
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
