"""The coordinator: stateless, so it can be killed and restarted at any time.

Coordinators compete for the leader lease in Redis; the holder acts and the others stand
by, taking over within leader_ttl_s of the leader's death. The leader, every tick:
- keeps the Ray driver (driver.py) running in a child process, starting a new one when it
  exits (after a lost GCS: it waits for the head to come back, retrying with a backoff);
- expires the leases of workers whose heartbeat stopped and reaps expired leases;
- renews its lease; if renewal fails (another took over) it stops its driver and stands by.
On SIGTERM or SIGINT it stops its driver (the decode actors release their leases) and
gives the lease up.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable

from framefleet.queue import Queue, Supervision, connect
from framefleet.settings import Settings

from . import driver

BACKOFF_S = (0.5, 1.0, 2.0, 3.0)  # between driver restarts; the last repeats
STOP_GRACE_S = driver.STOP_TIMEOUT_S + 5.0


class Coordinator:
    def __init__(self, settings: Settings, redis_url: str, name: str | None = None) -> None:
        self.settings, self.redis_url = settings, redis_url
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.queue = Queue(connect(redis_url), settings.queue)
        self.supervision = Supervision(self.queue)
        self.stopping = threading.Event()
        self.child: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.fatal: str | None = None
        self._next_start = 0.0
        self._failures = 0

    def run(self, until: Callable[[], bool] | None = None) -> int:
        """Until stopped (or `until()` is true, checked every tick). Returns 0, or 2 when the
        fleet cannot run as configured (self.fatal says why)."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda signum, frame: self.stopping.set())
        c = self.settings.coordinator
        try:
            while not self.stopping.is_set():
                started = time.monotonic()
                if self._hold():
                    self._lead()
                elif self.child is not None:  # lost the lease: another coordinator acts
                    self._stop_child()
                if self.fatal is not None or (until is not None and until()):
                    break
                self.stopping.wait(max(0.0, c.tick_s - (time.monotonic() - started)))
        finally:
            self._stop_child()
            with contextlib.suppress(Exception):
                self.supervision.release_leadership(self.name)
        return 2 if self.fatal is not None else 0

    def stop(self) -> None:
        self.stopping.set()

    def _hold(self) -> bool:
        try:
            ttl = self.settings.coordinator.leader_ttl_s
            return self.supervision.hold_leadership(self.name, ttl)
        except Exception:
            return False

    def _lead(self) -> None:
        c = self.settings.coordinator
        self._watch_child()
        with contextlib.suppress(Exception):  # Redis away: the next tick tries again
            self.supervision.expire_orphans(c.stale_s)
            self.queue.reap()

    def _watch_child(self) -> None:
        if self.child is not None and self.child.poll() is None:
            return
        if self.child is not None:
            code = self.child.returncode
            self.child = None
            if code == driver.FATAL:
                report = self.supervision.health() or {}
                self.fatal = str(report.get("error", "the fleet cannot run as configured"))
                return
            if code not in (0, driver.GCS_LOST, driver.NO_CLUSTER):  # it could not say why
                self._report_death(code)
            self._failures = self._failures + 1 if code != 0 else 0
            delay = BACKOFF_S[min(self._failures, len(BACKOFF_S)) - 1] if self._failures else 0
            self._next_start = time.monotonic() + delay
        if time.monotonic() < self._next_start:
            return
        generation = uuid.uuid4().hex[:6]
        self.child = subprocess.Popen(
            [sys.executable, "-m", "framefleet.coordinator.driver"], stdin=subprocess.PIPE
        )
        assert self.child.stdin is not None
        with self.child.stdin as stdin:  # the child's arguments, from its own parent
            stdin.write(pickle.dumps((self.settings, self.redis_url, generation, self.name)))
        self.restarts += 1

    def _report_death(self, code: int) -> None:
        with contextlib.suppress(Exception):
            report = {
                "ok": False,
                "at": time.time(),
                "leader": self.name,
                "redis": True,
                "error": f"the Ray driver died (exit code {code}); starting a new one",
            }
            ttl = max(3 * self.settings.coordinator.tick_s, 10.0)
            self.supervision.write_health(report, ttl_s=ttl)

    def _stop_child(self) -> None:
        child, self.child = self.child, None
        if child is None or child.poll() is not None:
            return
        child.terminate()  # SIGTERM: the driver stops its pools, leases are released
        try:
            child.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(5)
