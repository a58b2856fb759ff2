"""One fleet size's figures: the Redis CPU measured in the window and projected to the real
rates, the calls made against those planned and wanted, the server's commands, memory and
AOF, the coordinator's ticks, the processes' CPU and the timed sweeps."""

from __future__ import annotations

import math
import os
import statistics
from collections import Counter
from typing import Any

from bench.sim.rates import CALLS, Plan, redis_cores


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3) if values else math.nan


def summary(
    plan: Plan,
    before: dict[str, Any],
    after: dict[str, Any],
    generators: list[dict[str, Any]],
    coordinator: dict[str, Any],
    costs: dict[str, dict[str, float]],
    sweeps: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    wall = after["t"] - before["t"]
    redis_cpu = (after["cpu"] - before["cpu"]) / wall
    counts: Counter[str] = Counter()
    for g in generators:
        counts.update(g["counts"])
    rates = plan.rates()
    made, wanted = sum(counts.values()) / plan.duration_s, sum(rates.values())
    achieved = made * plan.slowdown / wanted  # of the slowed plan
    made_rates = {k: counts[k] / plan.duration_s for k in CALLS}
    sweep0 = sweeps[min(sweeps, key=int)]["ms_median"] if sweeps else 0.0
    tick_s = plan.settings.coordinator.tick_s
    by_call_target = redis_cores(rates, costs, sweep0, tick_s)
    calibrated = sum(by_call_target.values())
    # the same in plain GETs a second (as the calibration saw them), whatever the machine
    gets = calibrated * 1e6 / costs["leader"]["redis_us"]
    # what the calibration says of the calls made, against what Redis did meanwhile: more
    # than 1 where spaced calls wake an idle server (a cost a busier server shares out)
    made_load = sum(redis_cores(made_rates, costs, sweep0, tick_s).values())
    factor = redis_cpu / made_load if made_load > 0 else math.nan
    # the workers' share scaled to the target rates, the ticks' (not slowed) as they are
    ticks_share = by_call_target["ticks"]
    scaled = (redis_cpu - ticks_share) * wanted / made + ticks_share if made else math.inf
    # Measured where the fleet ran at the real rates; else the calibrated costs (back to
    # back: the regime of a server kept busy, as the real rates would keep it)
    at_target = redis_cpu if plan.slowdown == 1 and achieved >= 0.95 else calibrated
    calls = {
        k: {
            "target_per_s": round(rates[k], 1),
            "planned_per_s": round(rates[k] / plan.slowdown, 1),
            "made_per_s": round(made_rates[k], 1),
        }
        for k in CALLS
    }
    stats = {
        name: (
            calls_ - before["cmdstats"].get(name, (0, 0))[0],
            usec - before["cmdstats"].get(name, (0, 0))[1],
        )
        for name, (calls_, usec) in after["cmdstats"].items()
    }
    top = sorted(stats.items(), key=lambda kv: -kv[1][1])[:10]
    ticks: list[dict[str, float]] = coordinator["ticks"]
    laps = {k: _median([t[k] for t in ticks]) for k in (ticks[0] if ticks else {})}
    jiffies = after["all_jiffies"] - before["all_jiffies"]
    busy = (after["busy_jiffies"] - before["busy_jiffies"]) / jiffies * (os.cpu_count() or 1)
    gen_cpu = sum(g["cpu_s"] for g in generators)
    return {
        "workers": plan.workers,
        "slowdown": plan.slowdown,
        "leases": plan.workers * plan.leases,
        "window_s": round(wall, 2),
        "redis_cpu_core": round(redis_cpu, 3),
        "redis_cpu_core_at_target": round(at_target, 3),
        "redis_cpu_core_scaled": round(scaled, 3),
        "redis_cpu_core_calibrated": round(calibrated, 3),
        "gets_per_s_at_target": round(gets),
        "load_factor": round(factor, 3),
        "redis_cpu_core_at_target_by_call": {
            k: round(v * factor, 4) for k, v in by_call_target.items()
        },
        "calls_per_s_target": round(wanted),
        "calls_per_s_made": round(made),
        "rate_achieved": round(achieved, 3),
        "calls": calls,
        "server_commands_per_s": round((after["commands"] - before["commands"]) / wall),
        "top_commands": {
            k: {
                "per_s": round(c / wall),
                "usec_per_call": round(u / c, 2) if c else 0.0,
                "core": round(u / 1e6 / wall, 3),
            }
            for k, (c, u) in top
        },
        "used_memory_mb": round(after["used_memory"] / 2**20, 1),
        "aof_bytes_per_s": (
            round((after["aof_size"] - before["aof_size"]) / wall)
            if after["aof_rewrites"] == before["aof_rewrites"]
            else None  # rewritten meanwhile: its size started again
        ),
        "aof_rewrites": after["aof_rewrites"] - before["aof_rewrites"],
        "health_report_bytes": coordinator["report_bytes"],
        "generator_cpu_cores": round(gen_cpu / plan.duration_s, 3),
        "coordinator_cpu_cores": round(coordinator["cpu_s"] / plan.duration_s, 3),
        # the machine's other processes meanwhile (besides Redis and the simulation): noise
        "other_cores": round(
            busy - redis_cpu - (gen_cpu + coordinator["cpu_s"]) / plan.duration_s, 2
        ),
        "machine_busy_cores": round(busy, 2),
        "generator_late_max_s": {
            k: round(max(g["late_max_s"][k] for g in generators), 2)
            for k in ("heartbeat", "renew", "chunk")
        },
        "generator_lag_at_end_s": round(max(g["lag_at_end_s"] for g in generators), 3),
        "refused": sum(g["refused"] for g in generators),
        "starved": sum(g["starved"] for g in generators),
        "swept_in_window": coordinator["swept"],
        "calibration_us": {k: {kk: round(vv, 1) for kk, vv in v.items()} for k, v in costs.items()},
        "ticks": len(ticks),
        "tick_ms": laps,
        "tick_ms_max": round(max((t["total"] for t in ticks), default=math.nan), 3),
        "sweep": sweeps,
    }
