"""The faults a chaos run injects, each a function of the rig and the run's random source.

Each records a `fault` event when it strikes (and one with phase end when a fault that
lasts is over) and returns True, or returns False when it found nothing to strike (no
decode actor alive yet, say): the schedule then draws again. A fault never waits for the
fleet to recover: that is what the run measures.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections.abc import Callable

import httpx

from framefleet.chaos.events import Enqueue, Fault, Phase
from framefleet.queue.model import default_id

from .rig import API_TOKEN, Rig

FaultFn = Callable[[Rig, random.Random], bool]


def _mark(rig: Rig, kind: str, target: str, phase: Phase = Phase.START) -> None:
    rig.history.write(Fault(kind=kind, target=target, phase=phase))


def _kill_actor(kind: str, label: str) -> FaultFn:
    def fault(rig: Rig, rng: random.Random) -> bool:
        pids = rig.actor_pids(kind)
        if not pids:
            return False
        name = rng.choice(sorted(pids))
        _mark(rig, label, name)
        with contextlib.suppress(ProcessLookupError):  # died meanwhile: a fault all the same
            os.kill(pids[name], signal.SIGKILL)
        return True

    fault.__name__ = label
    return fault


kill_decoder = _kill_actor("decoder", "kill_decoder")
kill_inference = _kill_actor("inference", "kill_inference")


def zombie(rig: Rig, rng: random.Random) -> bool:
    """SIGSTOP of a decode actor past its lease and stale time, then SIGCONT: its late
    writes and acks must be fenced."""
    pids = rig.actor_pids("decoder")
    if not pids:
        return False
    name = rng.choice(sorted(pids))
    stopped_s = rig.shape.lease_s + rig.shape.stale_s + 2.0
    _mark(rig, "zombie", name)
    pid = pids[name]
    rig.stopped.add(pid)
    try:
        with contextlib.suppress(ProcessLookupError):  # the coordinator may kill it meanwhile
            os.kill(pid, signal.SIGSTOP)
            time.sleep(stopped_s)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        rig.stopped.discard(pid)
    _mark(rig, "zombie", name, Phase.END)
    return True


def kill_redis(rig: Rig, rng: random.Random) -> bool:
    """kill -9 of Valkey, down 1-3 s, restarted from its append-only file on its port."""
    _mark(rig, "kill_redis", "valkey")
    rig.restart_redis(rng.uniform(1.0, 3.0))
    _mark(rig, "kill_redis", "valkey", Phase.END)
    return True


def partition(rig: Rig, rng: random.Random) -> bool:
    """The network between the fleet and Valkey cut for longer than a lease."""
    _mark(rig, "partition", "fleet-redis")
    rig.relay.cut()
    try:
        time.sleep(rig.shape.lease_s + rng.uniform(1.0, 4.0))
    finally:
        rig.relay.heal()
    _mark(rig, "partition", "fleet-redis", Phase.END)
    return True


def kill_leader(rig: Rig, rng: random.Random) -> bool:
    """kill -9 of the leader coordinator (its Ray driver is orphaned and ends itself); a new
    standby is started, as its Deployment would."""
    found = rig.leader_process()
    if found is None:
        return False
    name, proc = found
    _mark(rig, "kill_leader", name)
    proc.kill()
    proc.wait(10)
    rig.keep_coordinators()
    return True


def kill_raylet(rig: Rig, rng: random.Random) -> bool:
    """kill -9 of the worker node's raylet: every actor on it dies; the node restarts."""
    raylet = rig.raylet()
    if raylet is None:
        return False
    _mark(rig, "kill_raylet", "worker0")
    raylet.kill()
    return True


def drain_node(rig: Rig, rng: random.Random) -> bool:
    """SIGTERM to the worker node (a preemption notice): it restarts."""
    node = rig.cluster.workers[0]
    if not node.running():
        return False
    _mark(rig, "drain_node", node.name)
    node.terminate()
    return True


def kill_head(rig: Rig, rng: random.Random) -> bool:
    """kill -9 of every head process; once the worker node has given up on it (and
    restarted), the head starts again."""
    starts = rig.cluster.workers[0].starts
    _mark(rig, "kill_head", "head")
    rig.cluster.head.kill()
    deadline = time.monotonic() + 120
    while rig.cluster.workers[0].starts == starts and time.monotonic() < deadline:
        time.sleep(0.2)
    rig.cluster.head.start()
    rig.cluster.head.wait_started()
    _mark(rig, "kill_head", "head", Phase.END)
    return True


def restart_coordinators(rig: Rig, rng: random.Random) -> bool:
    """kill -9 of every coordinator with its Ray driver (their pods deleted), then two
    started at once: one leads, never two (the rig samples their drivers)."""
    _mark(rig, "restart_coordinators", ",".join(sorted(rig.coordinators)))
    for proc in list(rig.coordinators.values()):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    rig.keep_coordinators()
    return True


def disk_full(rig: Rig, rng: random.Random) -> bool:
    """The output root's disk (a tmpfs) filled up for 4-10 s, then freed: writes fail with
    ENOSPC meanwhile."""
    out = rig.root / "out"
    if not rig.shape.out_tmpfs_mib:
        return False
    filler = out / ".filler"
    free = os.statvfs(out)
    _mark(rig, "disk_full", str(out))
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with contextlib.suppress(OSError):  # ENOSPC: the workers took some meanwhile
            os.posix_fallocate(fd, 0, free.f_bavail * free.f_frsize)
        block = b"\0" * 4096
        with contextlib.suppress(OSError):  # what fallocate left, to the last block
            while os.write(fd, block):
                pass
        time.sleep(rng.uniform(4.0, 10.0))
    finally:
        os.close(fd)
        filler.unlink()
    _mark(rig, "disk_full", str(out), Phase.END)
    return True


def s3_errors(rig: Rig, rng: random.Random) -> bool:
    """The output store (S3, moto behind a proxy) answers every request with 500 or 503
    for 5-12 s."""
    proxy = rig.s3_proxy
    if proxy is None:
        return False
    proxy.status = rng.choice((500, 503))
    _mark(rig, "s3_errors", f"http {proxy.status}")
    proxy.failures = 1 << 60
    try:
        time.sleep(rng.uniform(5.0, 12.0))
    finally:
        proxy.failures = 0
    _mark(rig, "s3_errors", f"http {proxy.status}", Phase.END)
    return True


def s3_stall(rig: Rig, rng: random.Random) -> bool:
    """The output store's network black-holed for 5-12 s: requests hang (then go on)."""
    relay = rig.s3_relay
    if relay is None:
        return False
    _mark(rig, "s3_stall", "s3")
    relay.cut()
    try:
        time.sleep(rng.uniform(5.0, 12.0))
    finally:
        relay.heal()
    _mark(rig, "s3_stall", "s3", Phase.END)
    return True


API_BATCH = 300  # items a batch: three of the API's queue batches (rig.API_QUEUE_BATCH)


def kill_api(rig: Rig, rng: random.Random) -> bool:
    """kill -9 of `framefleet api` while it takes a batch of API_BATCH items (videos that do
    not exist: each dies at once, not_found), at a random point of the request; then it is
    started again. The batch must be there whole or not at all (rig.partial_batches): its
    queue's batch_size is a third of it, so that a batch written a part at a time would be
    seen in part."""
    if rig.api is None or rig.api.poll() is not None:
        rig.start_api()
    assert rig.api is not None
    n = rng.randrange(1 << 30)  # names of videos no batch has used
    uris = [str(rig.root / "videos" / f"api{n}-{k:05d}.mp4") for k in range(API_BATCH)]
    version = rig.settings.queue.config_version
    ids = [default_id(uri, version) for uri in uris]
    for item_id in ids:  # the request's outcome is not known: each may or may not exist
        rig.history.write(Enqueue(id=item_id, ok=None, reason="the API killed mid-request"))
    body = {"items": [{"uri": uri} for uri in uris]}
    url = f"http://127.0.0.1:{rig.api_port}/v1/items"
    headers = {"Authorization": f"Bearer {API_TOKEN}"}

    def post() -> None:
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(url, json=body, headers=headers, timeout=60)

    sender = threading.Thread(target=post, daemon=True)
    sender.start()
    time.sleep(rng.uniform(0.02, 0.15))  # parsing, checking and writing take about that long
    _mark(rig, "kill_api", "api")
    rig.api.kill()
    rig.api.wait(10)
    sender.join(60)
    present = sum(1 for state in rig.queue.states(ids) if state is not None)
    if 0 < present < len(ids):
        rig.partial_batches += 1
    if present:
        rig.extra_ids += ids
        for item_id in ids:  # known to be there now: each must end done or dead
            rig.history.write(Enqueue(id=item_id, ok=True))
    rig.start_api()
    return True


FAULTS: dict[str, FaultFn] = {
    "kill_decoder": kill_decoder,
    "kill_inference": kill_inference,
    "zombie": zombie,
    "kill_redis": kill_redis,
    "partition": partition,
    "kill_leader": kill_leader,
    "kill_raylet": kill_raylet,
    "drain_node": drain_node,
    "kill_head": kill_head,
    "restart_coordinators": restart_coordinators,
    "disk_full": disk_full,
    "kill_api": kill_api,
    "s3_errors": s3_errors,
    "s3_stall": s3_stall,
}
# the faults of a run whose outputs are on a local disk (the s3 ones need them in S3)
LOCAL_KINDS = tuple(k for k in FAULTS if not k.startswith("s3_"))
