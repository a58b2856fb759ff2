"""The proof suite's fault runs (issue 25): a real fleet on this machine (bench/chaoskit/rig.py)
works through good videos, 5% poison ones (one of each kind at least) and one its model
raises on, while faults strike on a seeded random schedule; its history is then checked
(framefleet/chaos/checker.py: lost, unexpected, acknowledged twice, stale writes visible,
outputs that differ from a fault-free run, stuck; all must be zero) and its figures worked
out (recovery, redelivery, rework, goodput).

    framefleet chaos run [--seed N] [--faults K] [--kinds a,b] [--videos V] [--rounds R]

Each round draws its faults from --kinds (all by default) with the seed (printed; the same
seed replays the same schedule; the fleet's own timing still varies), and keeps its history
under --keep (default: a temporary folder, removed unless the round was invalid). Prints
the checker's table per round, then one JSON line (appended to --out).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path; drop it (see bench/queue.py).
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

import argparse
import random
import shutil
import signal
import statistics
import tempfile
from dataclasses import asdict
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support, bench

from bench import emit
from bench.chaoskit.faults import FAULTS, LOCAL_KINDS
from bench.chaoskit.rig import Shape
from bench.chaoskit.run import Outcome, Schedule, run
from framefleet.chaos.checker import ANOMALIES, Report, render

# each fault's recovery figures (figures.Recovery), and the harness's requeued_s
RECOVERY_KEYS = (
    "to_progress_s",
    "to_ack_s",
    "to_rate_s",
    "to_chunk_rate_s",
    "requeued_s",
    "redelivered_s",
)


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # through the finally blocks: the rig is stopped


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)  # a background job ignores SIGINT otherwise
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, help="the first round's seed (default: random)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--faults", type=int, default=6, help="faults per round")
    parser.add_argument(
        "--kinds",
        default=",".join(LOCAL_KINDS),
        help="comma-separated (default: every fault of a local output root)",
    )
    parser.add_argument("--videos", type=int, default=12, help="good videos per round")
    parser.add_argument("--frames", type=int, default=160)
    parser.add_argument("--appendfsync", choices=("always", "everysec"), default="always")
    parser.add_argument(
        "--power-cut",
        action="store_true",
        help="Valkey's data on LazyFS: each kill_redis also drops what it had not fsynced",
    )
    parser.add_argument(
        "--store",
        choices=("local", "s3"),
        help="where the outputs go (default: s3 when an s3 fault is asked for, else local)",
    )
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="a fault-free round first: the ack rate and goodput the others are measured against",
    )
    parser.add_argument(
        "--settle-s",
        type=float,
        default=600.0,
        help="after the last fault, how long every item has to end done or dead",
    )
    parser.add_argument("--keep", type=Path, help="keep each round's folder under this one")
    parser.add_argument("--out", help="append the JSON line to this file")
    parser.add_argument(
        "--each",
        action="store_true",
        help="each kind alone for --rounds rounds, then --rounds of them mixed (the table)",
    )
    args = parser.parse_args(argv)
    kinds = tuple(k for k in args.kinds.split(",") if k)
    unknown = [k for k in kinds if k not in FAULTS]
    if unknown or not kinds:
        parser.error(f"unknown fault kinds {unknown}; known: {', '.join(FAULTS)}")
    classes = [(k,) for k in kinds] if args.each else []
    mixed = tuple(k for k in kinds if not args.each or _mixable(k, kinds))
    classes.append(mixed)
    for group in classes:
        if _shape(args, group).s3 and "disk_full" in group:
            parser.error("disk_full strikes a local output root: run it apart from the s3 faults")
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    print(f"seed {seed}", flush=True)
    fault_free = None
    rows: list[dict[str, Any]] = []
    if args.baseline:
        print("fault-free round", flush=True)
        shape = _shape(args, ())
        outcome = _one(args.keep, "fault-free", shape, Schedule(seed, (), 0))
        fault_free = outcome.report
        rows.append(_summary([_round(outcome, seed)], seed, (), shape))
    for group in classes:
        shape = _shape(args, group)
        rounds: list[dict[str, Any]] = []
        for n in range(args.rounds):
            round_seed = seed + n
            label = group[0] if len(group) == 1 else "mixed"
            print(f"{label}, round {n + 1}/{args.rounds}: seed {round_seed}", flush=True)
            schedule = Schedule(round_seed, group, args.faults, settle_s=args.settle_s)
            name = f"{label}-{round_seed}"
            outcome = _one(args.keep, name, shape, schedule, fault_free)
            rounds.append(_round(outcome, round_seed))
        rows.append(_summary(rounds, seed, group, shape))
    result = rows[-1] if len(rows) == 1 else {"bench": "chaos", "seed": seed, "classes": rows}
    result["valid"] = all(r["valid"] for r in rows)
    print(table(rows), flush=True)
    emit(result, args.out)
    return 0 if result["valid"] else 1


def _shape(args: argparse.Namespace, kinds: tuple[str, ...]) -> Shape:
    return Shape(
        videos=args.videos,
        frames=args.frames,
        appendfsync=args.appendfsync,
        power_cut=args.power_cut,
        out_tmpfs_mib=64 if "disk_full" in kinds else 0,  # a disk that can fill (root)
        s3=args.store == "s3" or (args.store is None and any(k.startswith("s3_") for k in kinds)),
    )


def _mixable(kind: str, kinds: tuple[str, ...]) -> bool:
    """In the mixed rounds of --each: the faults of one kind of output root (local, unless
    only s3 faults were asked for)."""
    local = [k for k in kinds if not k.startswith("s3_")]
    return not kind.startswith("s3_") if local else True


def _one(
    keep: Path | None,
    name: str,
    shape: Shape,
    schedule: Schedule,
    fault_free: Report | None = None,
) -> Outcome:
    base = keep or Path(tempfile.mkdtemp(prefix="ffchaos-"))
    outcome = run(base / name, shape, schedule, fault_free)
    print(render(outcome.report), flush=True)
    if not outcome.valid:
        print(f"history kept: {outcome.history} (valid: {_why(outcome)})", flush=True)
    elif keep is None:
        shutil.rmtree(base, ignore_errors=True)
    return outcome


def _why(outcome: Outcome) -> str:
    return (
        f"checker {outcome.report.valid}, settled {outcome.settled}, good videos dead"
        f" {len(outcome.good_dead)}, two drivers for {outcome.two_drivers_max_s:.1f} s,"
        f" API batches in part {outcome.partial_batches}"
    )


def _round(outcome: Outcome, seed: int) -> dict[str, Any]:
    report = outcome.report
    return {
        "seed": seed,
        "valid": outcome.valid,
        "two_drivers_max_s": round(outcome.two_drivers_max_s, 2),
        "partial_batches": outcome.partial_batches,
        "redone": len(report.redone),
        "unsynced": len(report.unsynced),
        "settled": outcome.settled,
        "good_dead": outcome.good_dead,
        "counts": report.counts,
        "enqueued": report.enqueued,
        "finished": report.finished,
        "dead": report.dead,
        "faults": outcome.faults,
        "recoveries": [
            {**asdict(r), "requeued_s": outcome.requeued_s.get(r.at)} for r in report.recoveries
        ],
        "rework": asdict(report.rework),
        "goodput_per_s": report.goodput.per_s,
        "goodput_ratio": report.goodput.ratio,
        "baseline_rate": report.baseline_rate,
        "baseline_chunk_rate": report.baseline_chunk_rate,
        "seconds": round(outcome.seconds, 1),
    }


def _summary(
    rounds: list[dict[str, Any]], seed: int, kinds: tuple[str, ...], shape: Shape
) -> dict[str, Any]:
    by_kind: dict[str, dict[str, list[float]]] = {}
    struck: dict[str, int] = {}
    for r in rounds:
        for rec in r["recoveries"]:
            figures = by_kind.setdefault(rec["kind"], {k: [] for k in RECOVERY_KEYS})
            struck[rec["kind"]] = struck.get(rec["kind"], 0) + 1
            for key in figures:
                if rec.get(key) is not None:
                    figures[key].append(rec[key])
    return {
        "bench": "chaos",
        "seed": seed,
        "kinds": list(kinds),
        "shape": asdict(shape),
        "valid": all(r["valid"] for r in rounds),
        "rounds_n": len(rounds),
        "counts": {a: sum(r["counts"][a] for r in rounds) for a in ANOMALIES},
        "goodput_ratio_p50": _q([r["goodput_ratio"] for r in rounds if r["goodput_ratio"]], 0.5),
        "redecoded_chunks": sum(r["rework"]["redecodes"] for r in rounds),
        "decoded_chunks": sum(r["rework"]["decodes"] for r in rounds),
        "rewritten_chunks": sum(r["rework"]["rewrites"] for r in rounds),
        "redone": sum(r["redone"] for r in rounds),
        "unsynced": sum(r["unsynced"] for r in rounds),
        "per_kind": {
            kind: {
                "faults": struck[kind],
                **{f"{key}_p50": _q(v, 0.5) for key, v in f.items()},
                **{f"{key}_p95": _q(v, 0.95) for key, v in f.items()},
            }
            for kind, f in sorted(by_kind.items())
        },
        "pooled": {  # every fault of the rows' rounds together (the mixed row's figures)
            f"{key}_{name}": _q([v for f in by_kind.values() for v in f[key]], q)
            for key in RECOVERY_KEYS
            for name, q in (("p50", 0.5), ("p95", 0.95))
        },
        "rounds": rounds,
    }


def table(rows: list[dict[str, Any]]) -> str:
    """The chaos table (BENCHMARKS.md): a row per fault class."""
    head = (
        "| fault class | rounds | faults | lost | unexpected | acked twice | stale visible |"
        " differs | stuck | valid | to progress p50 / p95 (s) | to ack p50 / p95 (s) |"
        " to 90% of the chunk rate p50 / p95 (s) |"
        " back in the queue p50 / p95 (s) | claimed again p50 / p95 (s) |"
        " goodput vs fault-free | chunks decoded again |"
    )
    lines = [head, "|" + "---|" * 17]
    for row in rows:
        kinds = row["kinds"]
        name = "fault-free" if not kinds else kinds[0] if len(kinds) == 1 else "mixed"
        faults = sum(k["faults"] for k in row["per_kind"].values())

        def pair(key: str, pooled: dict[str, Any] = row["pooled"]) -> str:
            if pooled[f"{key}_p50"] is None:
                return "-"
            return f"{pooled[f'{key}_p50']} / {pooled[f'{key}_p95']}"

        c = row["counts"]
        ratio = row["goodput_ratio_p50"]
        lines.append(
            f"| {name} | {row['rounds_n']} | {faults} | {c['lost']} | {c['unexpected']} |"
            f" {c['acked_twice']} | {c['stale_visible']} | {c['differs']} | {c['stuck']} |"
            f" {'yes' if row['valid'] else 'NO'} | {pair('to_progress_s')} |"
            f" {pair('to_ack_s')} | {pair('to_chunk_rate_s')} | {pair('requeued_s')} |"
            f" {pair('redelivered_s')} |"
            f" {'-' if ratio is None else f'{ratio:.2f}'} |"
            f" {row['redecoded_chunks']} of {row['decoded_chunks']} |"
        )
    return "\n".join(lines)


def _q(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 2)
    return round(statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1], 2)


if __name__ == "__main__":
    sys.exit(main())
