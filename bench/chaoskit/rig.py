"""What a chaos run acts on: a real fleet on one machine, every part of which a fault can
strike.

- a Ray cluster of `ray start` processes (tests/support/raycluster.py): a head without CPUs
  and a worker node, restarted when its `ray start` exits, as KubeRay restarts a pod;
- the embedded Valkey, appendfsync as asked (`always` by default), killed and restarted on
  its port from its append-only file; with `power_cut`, its data on LazyFS
  (tests/support/lazyfs.py), so that a kill also drops what Valkey had not fsynced, as a
  power cut would (a kill -9 alone leaves its writes in the kernel's page cache: under
  `everysec` it loses nothing);
- a TCP relay between the fleet (coordinators, actors) and Valkey that can be cut like a
  network partition (tests/support/servers.py Blackhole); the harness's own client goes
  straight to Valkey;
- two `framefleet coordinator` processes (a leader and a standby), each replaced by a new
  one when it dies, as a Deployment would;
- the tiny DETR, paced to 0.3 s a batch so that faults land mid-video, raising on one
  marked video (tests/support/plugin_model.py ChaosDetection);
- every worker recording its queue calls in the run's history (FRAMEFLEET_HISTORY).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import psutil
from redis import Redis

from framefleet.chaos.history import HistoryWriter
from framefleet.queue import EmbeddedServer, Queue, Supervision
from framefleet.settings import (
    CoordinatorSettings,
    ModelSettings,
    PipelineSettings,
    QueueSettings,
    RedisSettings,
    Settings,
    SourceSettings,
)
from framefleet.workers.sources import s3_client
from tests.support import crafted
from tests.support.lazyfs import LazyFS, lazyfs_binary
from tests.support.models import write_tiny_detr
from tests.support.plugin_model import marked_frame
from tests.support.raycluster import LocalCluster
from tests.support.servers import Blackhole, FaultyProxy, free_port, moto_s3_server
from tests.support.videos import write_corrupt, write_truncated, write_video

ROOT = Path(__file__).resolve().parents[2]
POISON_KINDS = ("corrupt", "truncated", "index_bomb")
API_TOKEN = "chaos-write-token-0123456789"
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
API_QUEUE_BATCH = 100  # the API's queue batch_size (FRAMEFLEET_BATCH_SIZE) in a chaos run


@dataclass(frozen=True, slots=True)
class Shape:
    """A run's size and rhythm."""

    # good ones; 5% more are poison (one of each kind at least), one more is marked
    videos: int = 12
    frames: int = 160  # per video, 20 chunks of 8
    lease_s: float = 8.0
    stale_s: float = 4.0
    tick_s: float = 0.5
    leader_ttl_s: float = 3.0
    appendfsync: str = "always"
    decode_actors: int = 2
    inference_actors: int = 2
    # the output root on a tmpfs of this many MiB (a disk that can fill: the disk_full
    # fault; mounting needs root); 0: a folder on the machine's disk
    out_tmpfs_mib: int = 0
    # the outputs in S3 instead: moto's server, behind a proxy that can answer 500 or 503
    # (the s3_errors fault) and a relay that can stall (s3_stall)
    s3: bool = False
    # done and dead items purged after this long (the soak's bounded keys); 0: the default
    retention_s: float = 0.0
    # Valkey's data on LazyFS: kill_redis cuts the power too (root, FUSE, scripts/lazyfs)
    power_cut: bool = False


@dataclass
class Rig:
    root: Path
    shape: Shape
    settings: Settings  # the fleet's: Redis through the relay, the history on
    cluster: LocalCluster
    server: EmbeddedServer
    relay: Blackhole
    queue: Queue  # the harness's own, straight to Valkey
    supervision: Supervision
    history: HistoryWriter  # the harness's (enqueues, faults, the final state)
    good: list[Path]
    poison: list[Path]
    marked: Path
    coordinators: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    _names: int = 0
    # the longest time two coordinators each ran a Ray driver at once (two leaders), sampled
    two_drivers_max_s: float = 0.0
    api: subprocess.Popen[bytes] | None = None  # `framefleet api`, started by the API fault
    api_port: int = 0
    extra_ids: list[str] = field(default_factory=list)  # enqueued by faults (the API's)
    partial_batches: int = 0  # API batches found neither whole nor absent: none allowed
    s3_proxy: FaultyProxy | None = None  # the S3 store's way in, when the outputs are in S3
    s3_relay: Blackhole | None = None
    closing: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    stopped: set[int] = field(default_factory=set)  # pids under SIGSTOP now (the zombie fault)
    disk: LazyFS | None = None  # under Valkey's data, with shape.power_cut
    _sampling: threading.Event = field(default_factory=threading.Event)

    def sample_drivers(self, every_s: float = 0.2) -> None:
        """From now until stop(), watch for two coordinators running drivers at once."""
        threading.Thread(target=self._sample, args=(every_s,), daemon=True).start()

    def _sample(self, every_s: float) -> None:
        since: float | None = None
        while not self._sampling.wait(every_s):
            leading = 0
            for proc in list(self.coordinators.values()):
                with contextlib.suppress(psutil.Error):
                    alive = [c for c in psutil.Process(proc.pid).children() if c.is_running()]
                    leading += bool([c for c in alive if c.status() != psutil.STATUS_ZOMBIE])
            now = time.monotonic()
            if leading >= 2:
                since = now if since is None else since
                self.two_drivers_max_s = max(self.two_drivers_max_s, now - since)
            else:
                since = None

    # -- the fleet's processes -------------------------------------------------------

    def start_coordinator(self) -> str:
        self._names += 1
        name = f"coordinator{self._names}"
        with (self.root / "logs" / f"{name}.log").open("ab") as log:
            self.coordinators[name] = subprocess.Popen(
                [sys.executable, "-m", "framefleet.cli", "coordinator"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a kill of its group takes its Ray driver too
            )
        return name

    def start_api(self) -> None:
        """`framefleet api` on a free port, on the fleet's queue (through the relay)."""
        self.api_port = free_port()
        with (self.root / "logs" / "api.log").open("ab") as log:
            self.api = subprocess.Popen(
                [sys.executable, "-m", "framefleet.cli", "api", "--port", str(self.api_port)],
                env={
                    **self.env,
                    "FRAMEFLEET_API_TOKEN": API_TOKEN,
                    "FRAMEFLEET_BATCH_SIZE": str(API_QUEUE_BATCH),
                },
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{self.api_port}/healthz", timeout=2).is_success:
                    return
            if self.api.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"the API did not start: {(self.root / 'logs' / 'api.log').read_text()}")

    def keep_coordinators(self, n: int = 2) -> None:
        """n coordinators running: the dead replaced (a Deployment's restart)."""
        for name, proc in list(self.coordinators.items()):
            if proc.poll() is not None:
                del self.coordinators[name]
        while len(self.coordinators) < n:
            self.start_coordinator()

    def leader_process(self) -> tuple[str, subprocess.Popen[bytes]] | None:
        """The coordinator that holds the leader lease now (its name holds its pid)."""
        leader = self.supervision.leader() or ""
        for name, proc in self.coordinators.items():
            if f"-{proc.pid}-" in leader and proc.poll() is None:
                return name, proc
        return None

    def actor_pids(self, kind: str) -> dict[str, int]:
        """The live actors of a kind (decoder, inference) by name, from the health report."""
        pids = (self.supervision.health() or {}).get("pids") or {}
        return {
            name: int(pid)
            for name, pid in pids.items()
            if name.startswith(kind + "-") and pid and psutil.pid_exists(int(pid))
        }

    def restart_redis(self, down_s: float) -> None:
        self.server.kill()
        if self.disk is not None:
            self.disk.cut_power()
        time.sleep(down_s)
        self.server = EmbeddedServer(
            self.server.data_dir, appendfsync=self.shape.appendfsync, port=self.server.port
        ).start()

    def raylet(self) -> psutil.Process | None:
        node = self.cluster.workers[0]
        return next((p for p in node.processes() if p.name() == "raylet"), None)

    # -- the run's state -------------------------------------------------------------

    def ids_settled(self, ids: list[str]) -> bool:
        """Every id done or dead, or unknown to the queue: nothing more will happen to it
        (purged by retention, or lost: an enqueue Valkey lost in a power cut under
        `everysec`, which the checker then judges, as unsynced or lost)."""
        states = self.queue.states(ids)
        return all(state in ("done", "dead", None) for state in states)

    def stop(self) -> None:
        """Everything stopped, each step whatever the others did (a run may end mid-fault:
        the network is healed and stopped actors continued first, so that the coordinators
        can stop their fleets). A second SIGTERM meanwhile is ignored."""
        previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            self._sampling.set()
            steps = [
                self.relay.heal,
                self._unfail_s3,
                self._continue_stopped,
                self._stop_api,
                self._stop_coordinators,
                self.cluster.stop,
                self.relay.close,
                self.queue.client.close,
                self.server.stop,
                self.history.close,
                self.closing.close,
                self._unmount,
            ]
            for step in steps:
                try:
                    step()
                except Exception as exc:  # the rest still runs
                    print(f"chaos rig: stopping: {step.__name__}: {exc!r}", file=sys.stderr)
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _unfail_s3(self) -> None:
        if self.s3_proxy is not None:
            self.s3_proxy.failures = 0
        if self.s3_relay is not None:
            self.s3_relay.heal()

    def _continue_stopped(self) -> None:
        for pid in self.stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def _stop_api(self) -> None:
        if self.api is not None and self.api.poll() is None:
            self.api.kill()
            self.api.wait(10)

    def _stop_coordinators(self) -> None:
        for proc in self.coordinators.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.coordinators.values():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)

    def _unmount(self) -> None:
        if self.shape.out_tmpfs_mib:
            subprocess.run(["umount", "--lazy", str(self.root / "out")], check=False)


def make_rig(root: Path, shape: Shape) -> Rig:
    """Videos, model, Valkey, relay and Ray cluster; no coordinator yet. What was started
    is stopped again should a later part fail."""
    with contextlib.ExitStack() as undo:
        rig = _make_rig(root, shape, undo)
        undo.pop_all()
    return rig


def _make_rig(root: Path, shape: Shape, undo: contextlib.ExitStack) -> Rig:
    videos = root / "videos"
    videos.mkdir(parents=True)
    (root / "logs").mkdir()
    good = [
        write_video(videos / f"good{i:03d}.mp4", frames=shape.frames) for i in range(shape.videos)
    ]
    poison = []
    for k in range(max(len(POISON_KINDS), round(shape.videos * 0.05))):
        kind = POISON_KINDS[k % len(POISON_KINDS)]
        path = videos / f"poison{k:03d}-{kind}.mp4"
        if kind == "corrupt":
            poison.append(write_corrupt(path, good[0]))
        elif kind == "truncated":
            poison.append(write_truncated(path, good[0]))
        else:
            poison.append(crafted.index_bomb(path, 89_000_000))
    marked = write_video(videos / "marked.mp4", frames=shape.frames // 4, image=marked_frame)
    if shape.out_tmpfs_mib:
        (root / "out").mkdir()
        size = f"size={shape.out_tmpfs_mib}m"
        subprocess.run(["mount", "-t", "tmpfs", "-o", size, "tmpfs", str(root / "out")], check=True)
        undo.callback(subprocess.run, ["umount", "--lazy", str(root / "out")], check=False)
    closing = undo.enter_context(contextlib.ExitStack())
    out, s3 = str(root / "out"), SourceSettings(allowed_roots=(videos,))
    s3_proxy = s3_relay = None
    if shape.s3:  # moto <- the proxy that fails <- the relay that stalls <- the fleet
        os.environ.update(S3_ENV)  # this process's clients (the end's reads) too
        moto = closing.enter_context(moto_s3_server())
        s3_proxy = closing.enter_context(FaultyProxy(moto, failures=0))
        s3_relay = closing.enter_context(Blackhole(int(s3_proxy.url.rsplit(":", 1)[1])))
        s3 = replace(s3, s3_endpoint_url=f"http://127.0.0.1:{s3_relay.port}")
        s3_client(replace(s3, s3_endpoint_url=moto)).create_bucket(Bucket="chaos")
        out = "s3://chaos/out"
    disk = None
    if shape.power_cut:  # in `closing`: unmounted after the server has stopped
        binary = lazyfs_binary(600.0, build=True)
        disk = closing.enter_context(LazyFS(root / "disk", root / "mnt", binary=binary))
    data = root / "redis" if disk is None else disk.mount / "redis"
    server = EmbeddedServer(data, appendfsync=shape.appendfsync).start()
    undo.callback(server.stop)
    relay = undo.enter_context(Blackhole(server.port))
    cluster = LocalCluster(workers=1, cpus=2, gpus=1)
    undo.callback(cluster.stop)
    cluster.start()
    cluster.supervise()
    settings = Settings(
        redis=RedisSettings(url=relay.url(server.url)),
        queue=_retention(QueueSettings(name="chaos", lease_s=shape.lease_s), shape),
        source=s3,
        model=ModelSettings(
            model=str(write_tiny_detr(root / "detr")),
            plugin="tests.support.plugin_model:load_chaos_detection",
            score_threshold=0.0,
            torch_threads=1,
            device="cpu",  # as the reference, in this process: the same bits
        ),
        pipeline=PipelineSettings(
            out=out,
            chunk_frames=8,
            max_inflight_chunks=2,
            decode_actors=shape.decode_actors,
            items_per_decoder=2,
            inference_actors=shape.inference_actors,
            gpus_per_inference=0.25,
            cpus_per_decoder=0.5,
            cpus_per_inference=0.5,
            history=root / "history",
        ),
        coordinator=CoordinatorSettings(
            ray_address=cluster.address,
            tick_s=shape.tick_s,
            leader_ttl_s=shape.leader_ttl_s,
            stale_s=shape.stale_s,
        ),
    )
    queue = Queue(Redis.from_url(server.url, decode_responses=True), settings.queue)
    env = {**os.environ, **settings.to_env(), **cluster.auth, "PYTHONPATH": str(ROOT)}
    history = HistoryWriter(root / "history", by="harness")
    return Rig(
        root, shape, settings, cluster, server, relay, queue, Supervision(queue), history,
        good, poison, marked, env=env, s3_proxy=s3_proxy, s3_relay=s3_relay, closing=closing,
        disk=disk,
    )  # fmt: skip


def _retention(queue: QueueSettings, shape: Shape) -> QueueSettings:
    if not shape.retention_s:
        return queue
    return replace(queue, done_ttl_s=shape.retention_s, dead_ttl_s=shape.retention_s)


def reference_model(settings: Settings) -> ModelSettings:
    """The fault-free reference's model: the same weights, without the pacing plugin (it
    changes no output, only the time)."""
    return replace(settings.model, plugin=None)


def summary(settings: Settings, shape: Shape) -> dict[str, Any]:
    p = settings.pipeline
    return {
        "videos": shape.videos,
        "frames": shape.frames,
        "chunk_frames": p.chunk_frames,
        "lease_s": shape.lease_s,
        "stale_s": shape.stale_s,
        "appendfsync": shape.appendfsync,
        "decode_actors": p.decode_actors,
        "inference_actors": p.inference_actors,
        "out_tmpfs_mib": shape.out_tmpfs_mib,
        "s3": shape.s3,
        "power_cut": shape.power_cut,
        # nothing done or dead is purged sooner: an enqueued id gone before is lost
        "retention_s": min(settings.queue.done_ttl_s, settings.queue.dead_ttl_s),
    }
