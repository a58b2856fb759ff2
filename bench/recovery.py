"""Recovery after a head-node crash: how soon the coordinator notices, how soon processing
resumes once the head is back. Targets: noticed within 10 s, resumed within 30 s.

On a one-machine Ray cluster (tests/support/raycluster.py: `ray start` head without CPUs, a
worker node with 2 CPUs and a logical GPU, token authentication on, the worker raylets'
reconnect timeout at 5 s) with a `framefleet coordinator` subprocess and the tiny DETR
paced to 0.3 s per batch, each round:

1. enqueues fresh videos and waits until one is half-way;
2. kill -9 of every head process; `detect_s`: until the health report says the GCS is lost;
3. waits for the worker node to give up on the dead head and restart (as KubeRay restarts a
   pod), then starts the head again; `resume_s`: from the head being up to the next chunk
   checkpointed;
4. waits for every video to be done and checks the run (tests/support/fleet.py): none dead,
   none acknowledged twice, the detections equal to a direct run's.

Prints one JSON line (medians and each round). Ray Data, the peer, has no figure here: a
head crash ends its job, and a new job starts the videos over.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path; drop it (see bench/queue.py).
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

import argparse
import json
import os
import signal
import statistics
import tempfile
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support, bench

from bench import emit
from tests.support.fleet import VIDEOS, crash_head, make_fleet, wait
from tests.support.raycluster import RECONNECT_S, LocalCluster


def one_round(cluster: LocalCluster, tmp: Path) -> dict[str, Any]:
    tmp.mkdir(parents=True)
    # the coordinator's default tick (2 s): the detection figure depends on it
    fleet = make_fleet(tmp, cluster.address, cluster.auth, tick_s=2.0)
    coordinator = fleet.coordinator("coordinator")
    try:
        detect_s, resume_s = crash_head(fleet, cluster)
        wait(fleet.done, 600, "every video done")
        fleet.check()  # done, acked once, the detections of a direct run
        coordinator.send_signal(signal.SIGTERM)
        coordinator.wait(60)
    finally:
        if coordinator.poll() is None:
            coordinator.kill()
        fleet.close()
    return {"detect_s": round(detect_s, 2), "resume_s": round(resume_s, 2), "checked": True}


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ff-recovery-", dir="/tmp") as tmp_name:
        tmp = Path(tmp_name)
        cluster = LocalCluster(workers=1, cpus=2, gpus=1).start()
        cluster.supervise()
        rounds = []
        try:
            for i in range(args.rounds):
                cluster.wait_nodes()
                rounds.append(one_round(cluster, tmp / f"round{i}"))
                print(json.dumps(rounds[-1]), file=sys.stderr, flush=True)
        finally:
            cluster.stop()
    return {
        "bench": "recovery",
        "machine": {"cores": os.cpu_count(), "nodes": "head (0 CPU) + 1 worker (2 CPU, 1 GPU)"},
        "reconnect_timeout_s": RECONNECT_S,
        "rounds": rounds,
        "detect_s_median": statistics.median(r["detect_s"] for r in rounds),
        "resume_s_median": statistics.median(r["resume_s"] for r in rounds),
        "targets": {"detect_s": 10, "resume_s": 30},
        "videos_per_round": VIDEOS,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/recovery.py", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", help="also append the JSON line to this file")
    args = parser.parse_args(argv)
    emit(run(args), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
