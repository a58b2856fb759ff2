"""The soak (issue 25): one fleet for an hour or more, videos arriving all the time, faults on
a schedule, and every process sampled: memory (RSS), file descriptors, Ray's objects,
Valkey's keys and memory. After a warm-up each must stay flat; the history of the whole run
is checked at the end like a chaos round's (nothing lost, doubled, stale, different, stuck).

    framefleet bench soak [--minutes 60] [--fault-every-s 180] [--seed N] [--out FILE]

The fleet is the chaos rig's (bench/chaoskit/rig.py): a `ray start` cluster, the embedded
Valkey (AOF always) behind a relay that can cut, two coordinators, the API. The queue is
kept --backlog items deep: whenever fewer are waiting or running, a wave of the good videos
goes in under new ids (a poison video and the one the model raises on every fifth wave).
Done and dead items are purged after --retention-s, so that Valkey's keys are bounded.

Flat means: the median over the last --window-min minutes no more than GROWTH (10%) plus
SLACK_MB (32 MB) above the median over the first window after the warm-up, for each kind
of process (its largest member, and all of them together); file descriptors within
SLACK_FDS; Valkey's keys and Ray's objects no higher late than early, beyond the same 10%
and a few. Prints the table, then one JSON line (appended to --out); the samples are kept.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path; drop it (see bench/queue.py).
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

import argparse
import contextlib
import json
import random
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import replace
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support, bench

from bench import emit
from bench.chaoskit.faults import FAULTS
from bench.chaoskit.rig import API_TOKEN, Rig, Shape, make_rig, summary
from bench.chaoskit.run import _observe, _references, _some_progress, _until, _wait
from bench.queue import machine
from framefleet.chaos import checker
from framefleet.chaos.events import Enqueue, Header, Reference
from framefleet.chaos.history import read
from framefleet.queue import NewItem
from framefleet.queue.model import default_id

# every fault of the chaos table but the two that need their own rig: a tmpfs output root
# (disk_full) and S3 (s3_*); kill_api is left out too, the API being one of the processes
# sampled (a killed one starts again small, which would hide its growth)
KINDS = (
    "kill_decoder",
    "kill_inference",
    "zombie",
    "kill_redis",
    "partition",
    "kill_leader",
    "kill_raylet",
    "drain_node",
    "kill_head",
    "restart_coordinators",
)
GROWTH = 0.10
SLACK_MB = 32.0
SLACK_FDS = 16
SLACK_COUNT = 64  # Valkey keys, Ray objects
PLASMA = re.compile(r"Plasma memory usage (\d+) MiB, (\d+) objects")


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # through the finally blocks: the rig is stopped


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="how long videos arrive")
    parser.add_argument("--warmup-min", type=float, default=10.0)
    parser.add_argument("--window-min", type=float, default=10.0)
    parser.add_argument("--fault-every-s", type=float, default=180.0)
    parser.add_argument("--sample-every-s", type=float, default=20.0)
    parser.add_argument("--backlog", type=int, default=6, help="items kept waiting or running")
    parser.add_argument("--retention-s", type=float, default=300.0)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--seed", type=int)
    parser.add_argument("--keep", type=Path, help="keep the run's folder here")
    parser.add_argument("--out", help="append the JSON line to this file")
    args = parser.parse_args(argv)
    kinds = tuple(k for k in args.kinds.split(",") if k)
    if not kinds or any(k not in FAULTS for k in kinds):
        parser.error(f"unknown fault kinds in {kinds}; known: {', '.join(FAULTS)}")
    if args.minutes < args.warmup_min + 2 * args.window_min:
        parser.error("--minutes must hold the warm-up and two windows")
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    print(f"seed {seed}", flush=True)
    root = Path(tempfile.mkdtemp(prefix="ffsoak-"))
    if args.keep:
        root = args.keep / f"soak-{seed}"
        root.mkdir(parents=True)
    shape = Shape(videos=4, frames=160, retention_s=args.retention_s)
    started = time.monotonic()
    rig = make_rig(root, shape)
    try:
        result = _soak(rig, args, kinds, seed, started)
    finally:
        rig.stop()
    result["folder"] = str(root)
    print(table(result), flush=True)
    emit(result, args.out)
    if result["valid"] and not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if result["valid"] and result["flat"] else 1


def _soak(
    rig: Rig, args: argparse.Namespace, kinds: tuple[str, ...], seed: int, started: float
) -> dict[str, Any]:
    rng = random.Random(seed)
    rig.history.write(
        Header(
            seed=seed,
            faults=tuple({"kind": k} for k in kinds),
            settings=summary(rig.settings, rig.shape),
        )
    )
    version = rig.settings.queue.config_version
    by_path: dict[str, list[Reference]] = defaultdict(list)
    paths = {default_id(str(p), version): str(p) for p in rig.good}
    for ref in _references(rig):
        by_path[paths[ref.id]].append(ref)
    rig.start_api()
    rig.keep_coordinators()
    rig.sample_drivers()
    sampler = Sampler(rig, args.sample_every_s)
    ids: list[str] = []
    pending: set[str] = set()
    wave = 0

    def refresh() -> bool:
        """Those done or dead no longer pending; True when none is."""
        waiting = sorted(pending)
        states = rig.queue.states(waiting)
        pending.difference_update(
            i for i, s in zip(waiting, states, strict=True) if s in ("done", "dead")
        )
        return not pending

    def top_up() -> None:
        nonlocal wave
        refresh()
        while len(pending) < args.backlog:
            wave += 1
            batch = [*rig.good]
            if wave % 5 == 0:
                batch += [rig.poison[wave // 5 % len(rig.poison)], rig.marked]
            items = [NewItem(str(p), id=f"w{wave:05d}-{k}") for k, p in enumerate(batch)]
            got = rig.queue.enqueue(items)
            for item, item_id in zip(items, got, strict=True):
                rig.history.write(Enqueue(id=item_id, ok=True))
                for ref in by_path.get(item.uri, []):
                    references.append(replace(ref, id=item_id))
            ids.extend(got)
            pending.update(got)

    references: list[Reference] = []
    top_up()
    _wait(lambda: _some_progress(rig), 300.0, "the first chunk checkpointed", rig)
    sampler.start()
    print(f"the fleet is working; {args.minutes:g} minutes of videos and faults", flush=True)
    end = time.monotonic() + args.minutes * 60
    next_fault = time.monotonic() + args.fault_every_s
    struck: list[str] = []
    while time.monotonic() < end:
        rig.keep_coordinators()
        with contextlib.suppress(Exception):  # Valkey restarting: next time round
            top_up()
        sampler.poke_api()
        if time.monotonic() >= next_fault:
            order = list(kinds)
            rng.shuffle(order)
            kind = next((k for k in order if FAULTS[k](rig, rng)), None)
            if kind:
                struck.append(kind)
                print(f"  {(time.monotonic() - started) / 60:5.1f} min: {kind}", flush=True)
            next_fault = time.monotonic() + args.fault_every_s
        time.sleep(1.0)
    settled = _until(refresh, 600.0, rig)
    sampler.stop()
    _observe(rig, ids)
    for ref in references:
        rig.history.write(ref)
    rig.history.close()
    report = checker.check(read(rig.root / "history").events)
    samples = sampler.samples
    flatness = flat(samples, args.warmup_min * 60, args.window_min * 60)
    counts = {a: report.counts.get(a, 0) for a in checker.ANOMALIES}
    return {
        "bench": "soak",
        "seed": seed,
        "minutes": args.minutes,
        "fault_every_s": args.fault_every_s,
        "faults": dict(sorted((k, struck.count(k)) for k in set(struck))),
        "items": len(ids),
        "settled": settled,
        "anomalies": counts,
        "valid": report.valid and settled and rig.two_drivers_max_s <= 5.0,
        "flat": all(row["flat"] for row in flatness if row.get("judged", True)),
        "flatness": flatness,
        "samples": len(samples),
        "machine": machine(),
        "seconds": round(time.monotonic() - started),
    }


class Sampler:
    """Every `every_s`: each process of the fleet (RSS, file descriptors) by kind, Valkey's
    keys and memory, Ray's objects (`ray memory --stats-only`)."""

    def __init__(self, rig: Rig, every_s: float) -> None:
        self.rig, self.every_s = rig, every_s
        self.samples: list[dict[str, Any]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="soak-sampler")
        self._t0 = time.monotonic()

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join(60)

    def poke_api(self) -> None:
        """The API answering as an operator's dashboard would ask it (so that its memory
        is the memory of an API at work)."""
        rig = self.rig
        if rig.api is None or rig.api.poll() is not None:
            return
        headers = {"Authorization": f"Bearer {API_TOKEN}"}
        base = f"http://127.0.0.1:{rig.api_port}"
        with contextlib.suppress(httpx.HTTPError):
            for path in ("/v1/queue", "/v1/workers", "/v1/items?limit=50", "/metrics"):
                httpx.get(base + path, headers=headers, timeout=10)

    def _run(self) -> None:
        """Each sample kept, and written out as it is taken (a long run can be watched)."""
        with (self.rig.root / "samples.jsonl").open("a") as out:
            while not self._done.wait(self.every_s):
                try:
                    sample = self.sample()
                except Exception as exc:  # a sample lost, the soak goes on
                    print(f"soak: a sample failed: {exc!r}", file=sys.stderr, flush=True)
                    continue
                self.samples.append(sample)
                out.write(json.dumps(sample) + "\n")
                out.flush()

    def sample(self) -> dict[str, Any]:
        rig = self.rig
        procs: list[dict[str, Any]] = []
        for kind, proc in self._processes():
            with contextlib.suppress(psutil.Error):
                procs.append(
                    {
                        "kind": kind,
                        "pid": proc.pid,
                        "rss_mb": round(proc.memory_info().rss / 2**20, 1),
                        "fds": proc.num_fds(),
                    }
                )
        out: dict[str, Any] = {"t": round(time.monotonic() - self._t0, 1), "procs": procs}
        with contextlib.suppress(Exception):
            info = rig.queue.client.info("memory")
            out["valkey_keys"] = rig.queue.client.dbsize()
            out["valkey_used_mb"] = round(int(info["used_memory"]) / 2**20, 2)
        out.update(self._ray_objects())
        return out

    def _processes(self) -> list[tuple[str, psutil.Process]]:
        rig = self.rig
        found: list[tuple[str, psutil.Process]] = [("harness", psutil.Process())]
        pid = rig.server.pid
        if pid:
            found.append(("valkey", psutil.Process(pid)))
        if rig.api is not None and rig.api.poll() is None:
            found.append(("api", psutil.Process(rig.api.pid)))
        for proc in list(rig.coordinators.values()):
            with contextlib.suppress(psutil.Error):
                coordinator = psutil.Process(proc.pid)
                found.append(("coordinator", coordinator))
                found += [("driver", c) for c in coordinator.children(recursive=True)]
        for node in [rig.cluster.head, *rig.cluster.workers]:
            for proc in node.processes():
                with contextlib.suppress(psutil.Error):
                    kind = _actor_kind(proc)
                    parent = proc.parent()
                    if kind is None and parent is not None and _actor_kind(parent) == "decoder":
                        kind = "decoder-child"  # the decode actor's decoding process
                    elif kind is None:
                        kind = f"{node.name.rstrip('0123456789')}:{_ray_name(proc)}"
                    found.append((kind, proc))
        return found

    def _ray_objects(self) -> dict[str, Any]:
        rig = self.rig
        ray = Path(sys.executable).parent / "ray"
        try:
            done = subprocess.run(
                [str(ray), "memory", "--stats-only", "--address", rig.cluster.address],
                env=rig.env,
                capture_output=True,
                text=True,
                timeout=60,
            )
        except subprocess.TimeoutExpired:
            return {}
        match = PLASMA.search(done.stdout)
        if not match:
            return {}
        return {"plasma_mib": int(match.group(1)), "ray_objects": int(match.group(2))}


def _verdict(row: dict[str, Any]) -> str:
    verdict = "yes" if row["flat"] else "NO"
    return verdict if row.get("judged", True) else f"({verdict}: not judged)"


def _actor_kind(proc: psutil.Process) -> str | None:
    """decoder or inference for framefleet's actors (by their Ray process title)."""
    name = str(proc.name())
    if name.startswith("ray::DecodeActor"):
        return "decoder"
    if name.startswith("ray::InferenceActor"):
        return "inference"
    return None


def _ray_name(proc: psutil.Process) -> str:
    """A Ray process's kind: raylet, gcs_server, ..., or its worker's title (ray::IDLE)."""
    name = str(proc.name())
    if name.startswith("ray::"):
        return name.split(".")[0]
    cmd = proc.cmdline()
    script = next((Path(c).name for c in cmd[1:3] if c.endswith(".py")), "")
    return script.removesuffix(".py") or name


def flat(samples: list[dict[str, Any]], warmup_s: float, window_s: float) -> list[dict[str, Any]]:
    """Per kind of process, the medians over the first window after the warm-up and over the
    last window: its largest member's RSS, all of them together, their file descriptors;
    then Valkey's keys and memory and Ray's objects."""
    if not samples:
        return []
    last_t = samples[-1]["t"]
    early = [s for s in samples if warmup_s <= s["t"] < warmup_s + window_s]
    late = [s for s in samples if s["t"] >= last_t - window_s]
    kinds = sorted({p["kind"] for s in samples for p in s["procs"]})
    rows: list[dict[str, Any]] = []
    for kind in kinds:

        def per(window: list[dict[str, Any]], fn: Any, field: str, kind: str = kind) -> float:
            values = [
                fn([p[field] for p in s["procs"] if p["kind"] == kind])
                for s in window
                if any(p["kind"] == kind for p in s["procs"])
            ]
            return round(statistics.median(values), 1) if values else 0.0

        top = (per(early, max, "rss_mb"), per(late, max, "rss_mb"))
        total = (per(early, sum, "rss_mb"), per(late, sum, "rss_mb"))
        fds = (per(early, sum, "fds"), per(late, sum, "fds"))
        ok = (
            top[1] <= top[0] * (1 + GROWTH) + SLACK_MB
            and total[1] <= total[0] * (1 + GROWTH) + SLACK_MB
            and fds[1] <= fds[0] * (1 + GROWTH) + SLACK_FDS
        )
        rows.append(
            {
                "what": kind,
                "largest_mb": top,
                "all_mb": total,
                "fds": fds,
                "peak_mb": max(
                    (p["rss_mb"] for s in samples for p in s["procs"] if p["kind"] == kind),
                    default=0.0,
                ),
                "flat": ok,
                # not judged: the harness's own process (it is not framefleet's), and kinds
                # not running in both windows (Ray's passing workers: setup, idle)
                "judged": kind != "harness"
                and all(
                    any(p["kind"] == kind for s in w for p in s["procs"]) for w in (early, late)
                ),
            }
        )
    for field in ("valkey_keys", "valkey_used_mb", "ray_objects", "plasma_mib"):
        a = [s[field] for s in early if field in s]
        b = [s[field] for s in late if field in s]
        if not a or not b:
            rows.append({"what": field, "flat": False, "missing": True})
            continue
        pair = (statistics.median(a), statistics.median(b))
        peak = max(s[field] for s in samples if field in s)
        rows.append(
            {
                "what": field,
                "median": pair,
                "peak": peak,
                "flat": pair[1] <= pair[0] * (1 + GROWTH) + SLACK_COUNT,
            }
        )
    return rows


def table(result: dict[str, Any]) -> str:
    lines = [
        f"soak: {result['minutes']:g} min, {result['items']} items, faults {result['faults']}",
        f"checker: {result['anomalies']}, valid {result['valid']}",
        "| what | largest MB early / late | all MB early / late | fds early / late | peak | flat |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["flatness"]:
        if "largest_mb" in row:
            lines.append(
                f"| {row['what']} | {row['largest_mb'][0]} / {row['largest_mb'][1]} | "
                f"{row['all_mb'][0]} / {row['all_mb'][1]} | {row['fds'][0]} / {row['fds'][1]} "
                f"| {row['peak_mb']} | {_verdict(row)} |"
            )
        elif row.get("missing"):
            lines.append(f"| {row['what']} | not sampled | | | | NO |")
        else:
            lines.append(
                f"| {row['what']} | {row['median'][0]} / {row['median'][1]} | | | "
                f"{row['peak']} | {'yes' if row['flat'] else 'NO'} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
