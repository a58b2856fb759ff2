"""A zero-resource Ray node beside a coordinator that runs in a container or pod of its own.

A Ray driver needs a raylet on its own machine: `ray.init(address=HEAD)` from a machine
that is not a Ray node fails. `framefleet coordinator --join HEAD` therefore keeps
`ray start --address HEAD --num-cpus 0 --num-gpus 0 --block` running here: nothing is
scheduled on this node, it only carries the driver. When the head is lost the raylet gives
up (after `RAY_gcs_rpc_server_reconnect_timeout_s`) and `ray start` exits; the keeper starts
it again, with a backoff, until the head is back, while the coordinator starts new drivers
as it always does after a lost GCS. So a coordinator container survives a head crash and
resumes by itself, and two such containers are a leader and a standby.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path

log = logging.getLogger(__name__)

BACKOFF_S = (1.0, 2.0, 5.0, 10.0)  # between starts of a node that exited; the last repeats
STOP_TIMEOUT_S = 15.0


def node_command(address: str, ray_bin: str = "ray") -> list[str]:
    """The `ray start` of a node that only carries a driver: no CPUs, no GPUs, and so no
    actor of the fleet is ever placed on it."""
    return [
        ray_bin,
        "start",
        f"--address={address}",
        "--num-cpus=0",
        "--num-gpus=0",
        "--disable-usage-stats",
        "--block",
    ]


class RayNodeKeeper:
    """Keeps one `ray start --block` joined to `address` running until stop()."""

    def __init__(self, address: str, log_path: Path | None = None) -> None:
        ray_bin = shutil.which("ray")
        if ray_bin is None:
            raise FileNotFoundError("the `ray` command is missing (pip install 'ray[default]')")
        self.command = node_command(address, ray_bin)
        self.address = address
        self.log_path = log_path
        self.starts = 0
        self._stopping = threading.Event()
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()  # no node is started once stop() began
        self._thread = threading.Thread(target=self._keep, name="ray-node", daemon=True)

    def start(self) -> RayNodeKeeper:
        self._thread.start()
        return self

    def _keep(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            self.starts += 1
            log.info("joining the Ray cluster at %s as a zero-CPU node", self.address)
            out = self.log_path.open("ab") if self.log_path else subprocess.DEVNULL
            try:
                with self._lock:
                    if self._stopping.is_set():
                        return
                    # a session of its own: stop() ends `ray start` and the raylet it started
                    process = self._process = subprocess.Popen(
                        self.command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                    )
            finally:
                if not isinstance(out, int):
                    out.close()
            code = process.wait()
            if self._stopping.is_set():
                return
            failures += 1
            delay = BACKOFF_S[min(failures, len(BACKOFF_S)) - 1]
            log.warning(
                "the Ray node joined to %s exited (code %s; the head lost?): starting it"
                " again in %.0f s",
                self.address,
                code,
                delay,
            )
            if self._stopping.wait(delay):
                return

    def stop(self) -> None:
        """SIGTERM to the node's session (Ray's raylet and agents go with it), then kill."""
        with self._lock:
            self._stopping.set()
            process = self._process
        if process is not None and process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            except ProcessLookupError:
                pass
        self._thread.join(timeout=STOP_TIMEOUT_S)
