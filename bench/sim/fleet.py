"""One fleet size end to end: the backlog enqueued, the calls calibrated, the generator
processes and the coordinator started, the window sampled, the sweeps timed, the figures
summed up (`run_size`)."""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import Any

from redis import Redis
from redis.exceptions import ResponseError

from bench.queue import quiesce
from bench.sim.coordinator import COORDINATOR, Coordinator, ticker
from bench.sim.costs import calibrate, call_costs, sample, sweep_costs, wait_idle
from bench.sim.rates import Plan, auto_slowdown
from bench.sim.summary import summary
from bench.sim.workers import generator, uris
from framefleet.queue import Queue, Supervision
from framefleet.queue.supervision import new_generation


@dataclasses.dataclass
class _Children:
    """The generator processes and the coordinator process of one run."""

    ctx: Any
    generators: list[tuple[Any, Connection]] = dataclasses.field(default_factory=list)
    coordinator: tuple[Any, Connection] | None = None
    stop: Any = None
    stop_ticks: Any = None

    def spawn(self, target: Callable[..., None], *args: Any) -> tuple[Any, Connection]:
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=target, args=(*args, child), daemon=True)
        proc.start()
        return proc, parent

    def all(self) -> Iterator[tuple[Any, Connection]]:
        yield from self.generators
        if self.coordinator is not None:
            yield self.coordinator

    def end(self) -> None:
        for event in (self.stop, self.stop_ticks):
            if event is not None:
                event.set()
        for proc, _ in self.all():
            proc.join(10)
            if proc.is_alive():
                proc.kill()


def _answer(conn: Connection, timeout: float) -> Any:
    if not conn.poll(timeout):
        raise RuntimeError(f"a simulation process did not answer within {timeout:g} s")
    try:
        reply = conn.recv()
    except EOFError:
        raise RuntimeError("a simulation process ended without answering") from None
    if isinstance(reply, dict) and "error" in reply:
        raise RuntimeError(f"a simulation process failed:\n{reply['error']}")
    return reply


def _quiesce(client: Redis) -> None:
    """bench/queue.py's quiesce (an empty server, its AOF compacted), after any rewrite the
    server started by itself: the health report grows the AOF fast."""
    while True:
        info = client.info("persistence")
        if not info.get("aof_rewrite_in_progress") and not info.get("aof_rewrite_scheduled"):
            try:
                return quiesce(client)
            except ResponseError as exc:  # one started meanwhile
                if "in progress" not in str(exc):
                    raise
        time.sleep(0.1)


def _sleep_until(at: float) -> None:
    time.sleep(max(0.0, at - time.monotonic()))


def run_size(
    url: str,
    client: Redis,
    plan: Plan,
    expired: list[int],
    repeats: int,
    calibration: int,
    slowdown: float | None,
) -> dict[str, Any]:
    _quiesce(client)
    n = plan.workers
    q, sup = Queue(client, plan.settings.queue), Supervision(Queue(client, plan.settings.queue))
    generation = new_generation()
    span = plan.warmup_s + plan.duration_s + 30 + 2 * len(expired) * repeats
    backlog = math.ceil(plan.rates()["claim"] * span * 1.5) + sum(expired) * repeats
    q.enqueue(uris(n * plan.leases + backlog + 2 * calibration + 1000, f"n{n}"))
    memory_items = int(client.info("memory")["used_memory"])
    wait_idle(client)
    costs = calibrate(url, plan, generation, calibration)
    plan = dataclasses.replace(plan, slowdown=slowdown or auto_slowdown(plan, costs))
    sup.add_fleet(generation, COORDINATOR)
    sup.hold_leadership(COORDINATOR, plan.settings.coordinator.leader_ttl_s)
    kids = _Children(multiprocessing.get_context("fork"))
    kids.stop, kids.stop_ticks = kids.ctx.Event(), kids.ctx.Event()
    window = kids.ctx.RawArray("d", [math.inf, math.inf])  # start, end (monotonic)
    rounds = kids.ctx.Value("i", 0)  # generators whose workers have all beaten since go
    started = time.monotonic()
    try:
        for part in range(plan.processes):
            numbers = range(part * n // plan.processes, (part + 1) * n // plan.processes)
            args = (url, plan, generation, numbers, window, rounds)
            kids.generators.append(kids.spawn(generator, *args, kids.stop))
        args = (url, plan, generation, window, rounds, kids.stop_ticks)
        kids.coordinator = kids.spawn(ticker, *args)
        for _, conn in kids.all():
            _answer(conn, 600)
        setup_s = time.monotonic() - started
        memory_fleet = int(client.info("memory")["used_memory"])
        coordinator = Coordinator(url, plan, generation)  # the fleet in place, not running
        wait_idle(client)
        tick = {"tick_without_sweep": (lambda: coordinator.tick(sweep=False), 1)}
        costs |= call_costs(client, tick)
        costs["tick_without_sweep"]["gets"] = (
            costs["tick_without_sweep"]["redis_us"] / costs["leader"]["redis_us"]
        )
        go = time.monotonic()
        for _, conn in kids.all():
            conn.send(go)
        while rounds.value < plan.processes:  # every worker has beaten since go
            if time.monotonic() - go > 300:
                raise RuntimeError("the simulated workers did not all beat within 300 s")
            time.sleep(0.05)
        first_round_s = time.monotonic() - go
        window[0] = time.monotonic() + plan.warmup_s
        window[1] = window[0] + plan.duration_s
        _sleep_until(window[0])
        before = sample(client)
        _sleep_until(window[1])
        after = sample(client)
        kids.stop_ticks.set()
        ticks = _answer(kids.coordinator[1], 120)
        sweeps = sweep_costs(url, plan, generation, expired, repeats)
        kids.stop.set()
        generators = [_answer(conn, 120) for _, conn in kids.generators]
    finally:
        kids.end()
    return summary(plan, before, after, generators, ticks, costs, sweeps) | {
        "setup_s": round(setup_s, 1),
        "first_round_s": round(first_round_s, 1),
        "memory_items_mb": round(memory_items / 2**20, 1),
        "memory_per_worker_bytes": round((memory_fleet - memory_items) / n),
    }
