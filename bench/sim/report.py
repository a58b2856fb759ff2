"""The targets, each judged on the run (`verdicts`), and the table printed before the JSON
line (`table`)."""

from __future__ import annotations

import math
from typing import Any

from bench.sim.rates import Plan

TARGETS = {"redis_cpu_core": 0.5, "sweep_ms": 50.0}  # and the tick under tick_s


def verdicts(sizes: list[dict[str, Any]], tick_s: float) -> dict[str, Any]:
    """Each target, judged on the largest fleet simulated (load) or on every one."""
    big, small = max(sizes, key=lambda r: r["workers"]), min(sizes, key=lambda r: r["workers"])
    few = [
        v["ms_median"] for r in sizes for e, v in r["sweep"].items() if int(e) <= 100
    ]  # a few expired leases
    # many expired: the longest pass blocks the server (Queue.sweep works in passes)
    many = [
        v.get("pass_ms_median", v["ms_median"])
        for r in sizes
        for e, v in r["sweep"].items()
        if int(e) > 100
    ]
    zero_big = big["sweep"].get("0", {}).get("ms_median", math.nan)
    zero_small = small["sweep"].get("0", {}).get("ms_median", math.nan)
    return {
        "judged_at_workers": big["workers"],
        "redis_cpu_under_half_core": big["redis_cpu_core_at_target"] < TARGETS["redis_cpu_core"],
        "sweep_few_expired_under_50_ms": bool(few) and max(few) < TARGETS["sweep_ms"],
        "sweep_many_expired_under_50_ms": max(many) < TARGETS["sweep_ms"] if many else None,
        # O(expired), not O(workers): with none expired, the largest fleet's sweep costs at
        # most twice the smallest's, and a millisecond
        "sweep_not_o_workers": zero_big <= 2 * zero_small + 1.0 if big is not small else None,
        "tick_under_period": all(r["tick_ms_max"] < tick_s * 1000 for r in sizes),
    }


def _rows(sizes: list[dict[str, Any]], tick_s: float) -> list[tuple[str, list[str], str]]:
    """The table's rows: a measure, its figure for each fleet size, its target."""

    def sweep(e: str) -> list[str]:
        return [f"{r['sweep'][e]['ms_median']:.2f}" if e in r["sweep"] else "" for r in sizes]

    def longest(e: str) -> list[str]:
        return [
            f"{r['sweep'][e].get('pass_ms_median', math.nan):.2f}" if e in r["sweep"] else ""
            for r in sizes
        ]

    expired = sorted({e for r in sizes for e in r["sweep"]}, key=int)
    return [
        ("Redis CPU, measured (cores)", [f"{r['redis_cpu_core']:.3f}" for r in sizes], ""),
        (
            "Redis CPU at the target rates",
            [f"{r['redis_cpu_core_at_target']:.3f}" for r in sizes],
            "< 0.5 at 20,000",
        ),
        ("  measured x wanted/made", [f"{r['redis_cpu_core_scaled']:.3f}" for r in sizes], ""),
        (
            "  calibrated cost x target",
            [f"{r['redis_cpu_core_calibrated']:.3f}" for r in sizes],
            "",
        ),
        ("  the same in GETs/s", [f"{r['gets_per_s_at_target']:,}" for r in sizes], ""),
        ("calls/s at the real rates", [f"{r['calls_per_s_target']:,}" for r in sizes], ""),
        ("slowdown (periods x)", [f"{r['slowdown']:g}" for r in sizes], ""),
        ("calls/s made", [f"{r['calls_per_s_made']:,}" for r in sizes], ""),
        ("  of the slowed plan", [f"{r['rate_achieved']:.0%}" for r in sizes], ""),
        ("server commands/s", [f"{r['server_commands_per_s']:,}" for r in sizes], ""),
        ("used memory (MB)", [f"{r['used_memory_mb']:.1f}" for r in sizes], ""),
        *[
            row
            for e in expired
            for row in (
                (f"sweep ms, {int(e):,} expired", sweep(e), ""),
                ("  its longest pass (ms)", longest(e), "< 50"),
            )
        ],
        (
            "tick ms, median",
            [f"{r['tick_ms'].get('total', math.nan):.1f}" for r in sizes],
            f"< {tick_s * 1000:g}",
        ),
        ("tick ms, max", [f"{r['tick_ms_max']:.1f}" for r in sizes], f"< {tick_s * 1000:g}"),
        ("health report (KB)", [f"{r['health_report_bytes'] / 1024:.0f}" for r in sizes], ""),
        ("generator CPU (cores)", [f"{r['generator_cpu_cores']:.2f}" for r in sizes], ""),
        ("machine busy (cores)", [f"{r['machine_busy_cores']:.2f}" for r in sizes], ""),
        ("  of which other processes", [f"{r['other_cores']:.2f}" for r in sizes], ""),
        ("generator fell short", ["yes" if r["rate_achieved"] < 0.95 else "no" for r in sizes], ""),
    ]


def table(result: dict[str, Any]) -> str:
    m, p, sizes = result["machine"], result["plan"], result["sizes"]
    tick_s = Plan(1, 1, 1, 1, 1, 1, 1).settings.coordinator.tick_s
    lines = [
        f"framefleet simulated fleet on {m['cpu']} ({m['cores']} cores), {result['server']};",
        f"a video every {p['video_s']:g} s in {p['chunks']} chunks, {p['leases_per_worker']}"
        f" lease(s) a worker, checkpoints every {p.get('checkpoint_s', 0):g} s (0: a chunk),"
        f" {p['processes']} generator processes, a {p['duration_s']:g} s"
        f" window, sweeps: medians of {p['repeats']}",
        "",
        f"{'workers':<32}" + "".join(f" | {r['workers']:>9,}" for r in sizes) + " | target",
    ]
    for name, cells, target in _rows(sizes, tick_s):
        row = f"{name:<32}" + "".join(f" | {c:>9}" for c in cells) + f" | {target}"
        lines.append(row.rstrip(" |"))
    for r in sizes:
        top = ", ".join(
            f"{k} {v['per_s']:,}/s {v['usec_per_call']:g} µs ({v['core']:.3f} core)"
            for k, v in list(r["top_commands"].items())[:6]
        )
        by_call = ", ".join(
            f"{k} {v:.3f}" for k, v in r["redis_cpu_core_at_target_by_call"].items()
        )
        laps = ", ".join(f"{k} {v:g}" for k, v in r["tick_ms"].items() if k != "total")
        calib = ", ".join(
            f"{k} {v['redis_us']:g} ({v['gets']:.1f} GETs)" for k, v in r["calibration_us"].items()
        )
        made = ", ".join(
            f"{k} {v['made_per_s']:,.0f}/{v['planned_per_s']:,.0f}/{v['target_per_s']:,.0f}"
            for k, v in r["calls"].items()
        )
        lines += [
            "",
            f"{r['workers']:,} workers: calls/s made/planned/real: {made}",
            f"  server time by command: {top}",
            f"  Redis cores at the target rates by call: {by_call} (load factor"
            f" {r['load_factor']:g})",
            f"  Redis µs per call, calibrated alone: {calib}",
            f"  tick ms (medians of {r['ticks']}): {laps}",
            f"  AOF growth {r['aof_bytes_per_s']} B/s, {r['aof_rewrites']} rewrites; memory per"
            f" worker {r['memory_per_worker_bytes']:,} B; refused {r['refused']}, starved"
            f" {r['starved']}; latest call (s): {r['generator_late_max_s']}",
        ]
    lines += ["", "met: " + ", ".join(f"{k}={v}" for k, v in result["met"].items())]
    return "\n".join(lines)
