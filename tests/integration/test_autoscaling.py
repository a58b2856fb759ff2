"""Bursts grow the cluster, idle shrinks it: a `framefleet coordinator` on a Ray cluster whose
autoscaler (v2, as under KubeRay) starts and ends real worker nodes on this machine
(tests/support/raycluster.py: FakeAutoscalingCluster).

Each node holds one inference actor (a whole logical GPU) and one decode actor. The pools'
minima need one node; a burst asks for three, and the pools grow onto them as they come; a
node killed mid-video (a spot node taken back) loses nothing and charges nothing, and the
autoscaler replaces it; once the queue is idle the pools shrink to their minima and the
nodes they left end. The times from the burst to the first video done and to full pools are
printed and kept in the test's log (BENCHMARKS.md, "Scaling out").
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.fleet import Fleet, make_fleet, reaped, wait
from tests.support.raycluster import FakeAutoscalingCluster

NODE = {"resources": {"CPU": 2, "GPU": 1}, "max_workers": 3}
POOLS = {
    "decode_actors": 3,
    "inference_actors": 3,
    "items_per_decoder": 1,
    "gpus_per_inference": 1.0,
    "cpus_per_inference": 1.0,
    "cpus_per_decoder": 1.0,
}


@pytest.fixture
def cluster() -> Iterator[FakeAutoscalingCluster]:
    ray = FakeAutoscalingCluster({"gpu": NODE}, idle_timeout_s=5).start()
    try:
        yield ray
    finally:
        ray.stop()


def report(fleet: Fleet) -> dict[str, Any]:
    return fleet.supervision.health() or {}


def pools(fleet: Fleet) -> tuple[int, int]:
    """Ready inference actors and running decode actors, as the leader reports them."""
    r = report(fleet)
    return int(r.get("ready_inference") or 0), int(r.get("decoders") or 0)


def test_a_burst_grows_the_cluster_a_lost_node_costs_nothing_and_idle_shrinks_it(
    tmp_path: Path, cluster: FakeAutoscalingCluster
) -> None:
    fleet = make_fleet(
        tmp_path,
        cluster.address,
        cluster.auth,
        videos_n=6,
        items_per_decoder=1,
        enqueue=False,
        pipeline=POOLS,
        coordinator={"idle_s": 3.0},
    )
    coordinator = fleet.coordinator("coordinator")
    with reaped(coordinator, logs=fleet.logs), contextlib.closing(fleet):
        # no work: the minima (one inference and one decode actor) and the one node they need
        wait(lambda: pools(fleet) == (1, 1), 180, "the pools' minima running")
        assert report(fleet)["requested"] == {"CPU": 2.0, "GPU": 1.0}
        assert len(cluster.worker_nodes()) == 1

        burst = time.monotonic()
        fleet.enqueue()
        wait(lambda: report(fleet).get("requested") == {"CPU": 6.0, "GPU": 3.0}, 30, "asked")
        seen: dict[str, float] = {}

        def first_done_and_full_pools() -> bool:
            if "first" not in seen and fleet.queue.stats().counts["done"] > 0:
                seen["first"] = time.monotonic() - burst
            if "full" not in seen and pools(fleet) == (3, 3):
                seen["full"] = time.monotonic() - burst
            return len(seen) == 2

        wait(first_done_and_full_pools, 300, "a video done and full pools on three nodes")
        first_s, full_s = seen["first"], seen["full"]
        assert len(cluster.worker_nodes()) == 3

        # a spot node taken back mid-video: the one whose decode actor holds such a video
        wait(fleet.mid_video, 120, "a video half-way")
        node = node_of_a_busy_decoder(fleet, cluster)
        cluster.kill_node(node)
        wait(lambda: node not in cluster.worker_nodes(), 30, "the node gone")
        wait(fleet.done, 300, "every video done")
        done_s = time.monotonic() - burst

        # idle: down to the minima, and the nodes they left end
        wait(lambda: pools(fleet) == (1, 1), 60, "the pools back to their minima")
        wait(lambda: report(fleet).get("requested") == {"CPU": 2.0, "GPU": 1.0}, 30, "minima")
        # (the two actors left may run on one node or two: the others end)
        wait(lambda: set(cluster.worker_nodes()) == busy_nodes(fleet, cluster), 120, "idle ends")
        assert len(cluster.worker_nodes()) <= 2
        print(
            f"burst of 6 videos: first done {first_s:.1f} s, full pools (3 nodes) {full_s:.1f}"
            f" s, all done (one node killed on the way) {done_s:.1f} s"
        )
        (fleet.logs / "figures.txt").write_text(f"{first_s:.1f} {full_s:.1f} {done_s:.1f}\n")
        coordinator.terminate()
        coordinator.wait(60)
        fleet.check(charged=0)  # nothing lost, each done once, nothing charged for the node
        log = (fleet.logs / "coordinator.log").read_text(errors="replace")
        assert "asked the autoscaler for 3 inference and 3 decode actors" in log


def busy_nodes(fleet: Fleet, cluster: FakeAutoscalingCluster) -> set[str]:
    """The fake nodes where the pools' actors run."""
    pids = {int(pid) for pid in (report(fleet).get("pids") or {}).values() if pid}
    nodes = cluster.worker_nodes()
    return {node for node, procs in nodes.items() if pids & {p.pid for p in procs}}


def node_of_a_busy_decoder(fleet: Fleet, cluster: FakeAutoscalingCluster) -> str:
    """The fake node where a decode actor holding a half-done video runs."""
    busy = {i.owner for i in fleet.queue.items(fleet.ids) if i.state == "leased" and i.chunks_done}
    pids = {int(pid) for name, pid in (report(fleet).get("pids") or {}).items() if name in busy}
    for node, procs in cluster.worker_nodes().items():
        if pids & {p.pid for p in procs}:
            return node
    raise AssertionError(f"no node runs the decode actors {busy} (pids {pids})")
