"""A real multi-process Ray cluster on one machine, for the coordinator's fault tests.

Each node is one `ray start --block` in a session of its own (start_new_session), so every
process it starts (GCS, raylet, agents, the actors' workers) shares that session id and can be
found and killed even after `ray start` itself has gone: the tests never `ray stop`, which
would kill every Ray process on the machine. The head has no CPUs (nothing runs there); each
worker node has CPUs and a logical GPU (Ray never checks that it exists).

Token authentication (on by default in Ray 2.60) stays on: one token is made per cluster and
handed to every node and to the drivers through RAY_AUTH_MODE=token and RAY_AUTH_TOKEN.

`supervise()` plays the part of the cluster manager (KubeRay restarting a pod): a worker node
whose `ray start` exited is started again. Worker raylets give up on a lost GCS after
RECONNECT_S (RAY_gcs_rpc_server_reconnect_timeout_s, 60 s by default), so that after a
head-node crash they exit and come back into the new cluster soon.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from tests.support.servers import free_port

RAY = str(Path(sys.executable).with_name("ray"))
RECONNECT_S = 5
STARTED = "Ray runtime started"


def head_args(port: int, *more: str) -> list[str]:
    """`ray start` options of a test cluster's head: no CPUs (nothing runs there), no
    dashboard, its own ports."""
    return [
        "--head",
        f"--port={port}",
        "--num-cpus=0",
        "--include-dashboard=false",
        f"--ray-client-server-port={free_port()}",
        *more,
    ]


class RayNode:
    def __init__(self, name: str, args: list[str], env: dict[str, str], logs: Path) -> None:
        self.name, self.args, self.env, self.logs = name, args, env, logs
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._log: Path | None = None

    def start(self) -> None:
        self.starts += 1
        self._log = self.logs / f"{self.name}-{self.starts}.log"
        # A temp dir per start: on one machine, the worker raylets of a killed head still
        # carry its address for RECONNECT_S, and `ray start --head` would take them for a
        # running cluster at that address if the temp dir named it as the last one started.
        temp_dir = self.logs / f"{self.name}{self.starts}"
        with self._log.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    RAY,
                    "start",
                    "--block",
                    "--disable-usage-stats",
                    f"--temp-dir={temp_dir}",
                    *self.args,
                ],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_started(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        assert self.proc is not None and self._log is not None
        while time.monotonic() < deadline:
            if STARTED in self._log.read_text(errors="replace"):
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray node {self.name} exited: {self.tail()}")
            time.sleep(0.2)
        raise RuntimeError(f"ray node {self.name} did not start: {self.tail()}")

    def started(self) -> bool:
        log = self._log
        return self.running() and log is not None and STARTED in log.read_text(errors="replace")

    def tail(self, lines: int = 20) -> str:
        if self._log is None or not self._log.exists():
            return ""
        return "\n".join(self._log.read_text(errors="replace").splitlines()[-lines:])

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def processes(self) -> list[psutil.Process]:
        """Every process of this node: those in its `ray start`'s session."""
        if self.proc is None:
            return []
        found = []
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error, OSError):
                if os.getsid(proc.pid) == self.proc.pid and proc.status() != "zombie":
                    found.append(proc)
        return found

    def kill(self) -> None:
        """kill -9 of every process of the node; returns when they are all gone."""
        procs = self.processes()
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        if self.proc is not None:
            self.proc.wait(10)
        _, alive = psutil.wait_procs(procs, timeout=20)
        if alive:
            raise RuntimeError(f"ray node {self.name}: processes survived kill -9: {alive}")

    def terminate(self) -> None:
        """SIGTERM to `ray start`, as a pod being drained or preempted gets."""
        if self.running():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)


class LocalCluster:
    def __init__(self, workers: int = 1, cpus: float = 2, gpus: float = 1) -> None:
        # A short path of its own: Ray's unix sockets live under it (108-byte limit).
        root = Path(tempfile.mkdtemp(prefix="ffray-"))
        self.root, self.port = root, free_port()
        self.address = f"127.0.0.1:{self.port}"
        token = secrets.token_hex(32)
        self.auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
        env = {**os.environ, **self.auth}
        env["RAY_gcs_rpc_server_reconnect_timeout_s"] = str(RECONNECT_S)
        env.pop("RAY_ADDRESS", None)
        common = ["--node-ip-address=127.0.0.1"]
        self.head = RayNode(
            "head",
            head_args(self.port, *common),
            env,
            root,
        )
        self.workers = [
            RayNode(
                f"worker{i}",
                [f"--address={self.address}", f"--num-cpus={cpus}", f"--num-gpus={gpus}", *common],
                env,
                root,
            )
            for i in range(workers)
        ]
        self._supervising = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> LocalCluster:
        self.head.start()
        self.head.wait_started()
        for node in self.workers:
            node.start()
        for node in self.workers:
            node.wait_started()
        return self

    def wait_nodes(self, timeout: float = 120.0) -> None:
        """Until the head and every worker node run (after a restart, say)."""
        deadline = time.monotonic() + timeout
        for node in [self.head, *self.workers]:
            while not node.started():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"ray node {node.name} is not up: {node.tail()}")
                time.sleep(0.2)

    def supervise(self) -> None:
        """From now on, restart worker nodes whose `ray start` exited (a pod restarting)."""
        self._supervising.set()
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, daemon=True, name="ray-nodes")
            self._thread.start()

    def _watch(self) -> None:
        while not self._stopped.wait(0.5):
            if not self._supervising.is_set():
                continue
            for node in self.workers:
                if not node.running():
                    node.kill()  # what is left of it
                    node.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(5)
        for node in [*self.workers, self.head]:
            node.kill()
        shutil.rmtree(self.root, ignore_errors=True)


# Ray's fake multi-node provider, loaded as an "external" one: the wheel leaves out the
# example.yaml that Ray reads its defaults from for the "fake_multinode" type (and so
# ray.cluster_utils.AutoscalingCluster cannot start), and it would also `ray stop --force`
# every Ray process on the machine and take port 6379.
_FAKE_PROVIDER = "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider"


class FakeAutoscalingCluster:
    """A Ray cluster on one machine whose autoscaler (v2 by default, KubeRay's since Ray
    2.48; v1 with `v2=False`) starts and ends worker nodes, each a real raylet and its
    processes: a head with no CPUs, and `node_types` as a cluster config gives them
    ({"gpu": {"resources": {"CPU": 2, "GPU": 1}, "max_workers": 3}}). The fake nodes are
    children of the head's autoscaler, in the head's session: `stop()` kills them all."""

    def __init__(
        self,
        node_types: dict[str, dict[str, object]],
        idle_timeout_s: float = 5.0,
        v2: bool = True,
        object_store_mb: int = 80,
    ) -> None:
        from ray._private.services import get_node_ip_address
        from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID

        root = Path(tempfile.mkdtemp(prefix="ffas-"))
        # the fake nodes take this machine's address (they are given none): so does the head
        ip = get_node_ip_address()
        self.root, self.port, self.v2 = root, free_port(), v2
        self.address = f"{ip}:{self.port}"
        self.auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
        types: dict[str, object] = {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0}
        }
        for name, spec in node_types.items():
            resources = {**spec["resources"], "object_store_memory": object_store_mb << 20}  # type: ignore[dict-item]
            types[name] = {"node_config": {}, "min_workers": 0, **spec, "resources": resources}
        provider: dict[str, object] = {
            "type": "external",
            "module": _FAKE_PROVIDER,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": self.address,
        }
        env = {**os.environ, **self.auth, "RAY_FAKE_CLUSTER": "1"}
        env["AUTOSCALER_UPDATE_INTERVAL_S"] = "1"
        env.pop("RAY_ADDRESS", None)
        if v2:
            provider.update(launch_multiple=True, head_node_id=FAKE_HEAD_NODE_ID)
            env["RAY_enable_autoscaler_v2"] = "1"
            env["RAY_CLOUD_INSTANCE_ID"] = env["RAY_OVERRIDE_NODE_ID_FOR_TESTING"] = (
                FAKE_HEAD_NODE_ID
            )
        else:
            env["RAY_enable_autoscaler_v2"] = "0"
        config = {
            "cluster_name": root.name,
            "max_workers": sum(int(s.get("max_workers", 0)) for s in node_types.values()),  # type: ignore[call-overload]
            "upscaling_speed": 1.0,
            "idle_timeout_minutes": idle_timeout_s / 60,
            "provider": provider,
            "auth": {},
            "docker": {},
            "head_node_type": "ray.head.default",
            "available_node_types": types,
            "file_mounts": {},
            "cluster_synced_files": [],
            "file_mounts_sync_continuously": False,
            "rsync_exclude": [],
            "rsync_filter": [],
            "initialization_commands": [],
            "setup_commands": [],
            "head_setup_commands": [],
            "worker_setup_commands": [],
            "head_start_ray_commands": [],
            "worker_start_ray_commands": [],
        }
        path = root / "autoscaler.json"
        path.write_text(json.dumps(config))
        self.head = RayNode(
            "head",
            head_args(self.port, f"--autoscaling-config={path}", f"--node-ip-address={ip}"),
            env,
            root,
        )

    def start(self) -> FakeAutoscalingCluster:
        self.head.start()
        self.head.wait_started()
        return self

    def worker_nodes(self) -> dict[str, list[psutil.Process]]:
        """The fake worker nodes running now: their ids and processes (raylet, agents,
        actors' workers), by the node id each was started with."""
        from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID

        nodes: dict[str, list[psutil.Process]] = {}
        for proc in self.head.processes():
            with contextlib.suppress(psutil.Error, OSError):
                node = proc.environ().get("RAY_OVERRIDE_NODE_ID_FOR_TESTING")
                if node and node != FAKE_HEAD_NODE_ID:
                    nodes.setdefault(node, []).append(proc)
        return nodes

    def kill_node(self, node: str) -> None:
        """kill -9 of every process of one fake worker node (a spot node taken back)."""
        procs = self.worker_nodes().get(node, [])
        assert procs, f"no fake node {node}"
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(procs, timeout=20)

    def log(self, name: str = "monitor.log") -> str:
        path = self.root / "head1" / "session_latest" / "logs" / name
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        self.head.kill()
        shutil.rmtree(self.root, ignore_errors=True)
