"""What a running fleet costs, for bench/scale.py: the CPU time of every process of a Ray
cluster on this machine and of the fleet around it, by kind; the inference actors' predict()
calls (bench/paced_model.py's trace); the driver's tick times (bench/tickprobe); Ray's object
store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

OBJECT_STORE = """
import json, sys
from ray._private.internal_api import get_memory_info_reply, get_state_from_address
s = get_memory_info_reply(get_state_from_address(sys.argv[1])).store_stats
mb = 1 << 20
print(json.dumps({"used_mb": round(s.object_store_bytes_used / mb, 1),
    "capacity_mb": round(s.object_store_bytes_avail / mb, 1), "objects": s.num_local_objects,
    "fallback_mb": round(s.object_store_bytes_fallback / mb, 1),
    "spilled_mb": round(s.spilled_bytes_total / mb, 1)}))
"""


# -- processes and their CPU time ---------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    kind: str
    cpu: float  # its own user + system seconds
    children: float  # its waited-for children's (a decode actor's: the decoders it ran)
    rss: int
    name: str  # what it runs: a worker's title, a script's or a binary's name


def name_of(argv: list[str]) -> str:
    script = next((a for a in argv[1:3] if a.endswith(".py") or a.startswith("framefleet")), "")
    return Path(script or (argv[0] if argv else "?")).name[:40]


def kind_of(argv: list[str]) -> str:
    """A process of the Ray cluster, by its command line (a worker's is its title)."""
    first = argv[0] if argv else ""
    if "framefleet.workers.decode_process" in argv:
        return "decode_children"
    if first.startswith("ray::InferenceActor"):
        return "inference_actors"
    if first.startswith("ray::DecodeActor"):
        return "decode_actors"
    if first.startswith("ray::IDLE"):
        return "idle_workers"
    if first.startswith("ray::") and first.endswith("Agent"):  # a node's dashboard, runtime env
        return "ray_agents"
    if first.endswith("gcs_server"):
        return "gcs"
    if first.endswith("raylet"):
        return "raylets"
    if any(a.endswith(("log_monitor.py", "agent.py", "agent/main.py")) for a in argv):
        return "ray_agents"
    if any(a.endswith("monitor.py") for a in argv):
        return "autoscaler"
    return "other_ray"


def processes(session: int, roles: dict[int, str]) -> dict[int, Proc]:
    """Every process of the fleet: the Ray cluster's (those in the head's session: the fake
    nodes and their workers too) and those in `roles` (pid -> kind)."""
    found: dict[int, Proc] = {}
    for pid in psutil.pids():
        try:
            if pid not in roles and os.getsid(pid) != session:
                continue
            proc = psutil.Process(pid)
            with proc.oneshot():
                t = proc.cpu_times()
                rss = proc.memory_info().rss
                argv = proc.cmdline()
        except (psutil.Error, OSError):  # gone, or a zombie: its time is its parent's now
            continue
        kind = roles.get(pid) or kind_of(argv)
        own, children = t.user + t.system, t.children_user + t.children_system
        found[pid] = Proc(kind, own, children, rss, name_of(argv))
    return found


def cpu_by_kind(a: dict[int, Proc], b: dict[int, Proc]) -> dict[str, float]:
    """CPU seconds of each kind between two snapshots. The decoders' child processes are
    counted exactly: those reaped meanwhile through their decode actor's children time, less
    what the live ones had at the start, plus what the live ones have at the end."""
    used: defaultdict[str, float] = defaultdict(float)
    for pid, p in b.items():
        before = a.get(pid)
        used[p.kind] += p.cpu - (before.cpu if before else 0.0)
        if p.kind == "decode_actors" and before:
            used["decode_children"] += p.children - before.children
    for pid, p in a.items():
        if pid not in b and p.kind == "decode_children":
            used["decode_children"] -= p.cpu
    return {k: max(0.0, v) for k, v in used.items()}


# -- the inference actors' trace and the driver's ticks ----------------------------------------


def predicts(trace: Path) -> dict[str, list[tuple[float, float]]]:
    """Each inference actor's predict() calls: (start, end), by its pid."""
    calls: dict[str, list[tuple[float, float]]] = {}
    for path in trace.glob("*.txt"):
        rows = (line.split() for line in path.read_text().splitlines())
        calls[path.stem] = [(float(s), float(e)) for s, e in rows]
    return calls


def chunk_rate(calls: dict[str, list[tuple[float, float]]], t0: float, t1: float) -> float:
    """Chunks a second through the model in [t0, t1], each predict() counted by the share
    of it inside: a short window of a slow pace has no rounding to whole chunks."""
    inside = sum(
        max(0.0, min(e, t1) - max(s, t0)) / (e - s) for c in calls.values() for s, e in c if e > s
    )
    return inside / (t1 - t0)


def busy_shares(calls: dict[str, list[tuple[float, float]]], t0: float, t1: float) -> list[float]:
    """Each inference actor's share of [t0, t1] in predict(), the pace (sorted)."""
    return sorted(
        sum(max(0.0, min(e, t1) - max(s, t0)) for s, e in c) / (t1 - t0) for c in calls.values()
    )


def object_store(address: str, env: dict[str, str]) -> dict[str, Any]:
    """Ray's object store, summed over the nodes (a raylet's memory summary), asked from a
    process of its own after the windows."""
    try:
        proc = subprocess.run(
            [sys.executable, "-c", OBJECT_STORE, address],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return dict(json.loads(proc.stdout.strip().splitlines()[-1]))
    except (subprocess.SubprocessError, ValueError, IndexError) as exc:
        return {"error": f"{type(exc).__name__}: {str(exc)[-300:]}"}
