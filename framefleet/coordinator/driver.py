"""The Ray driver: a child process of the coordinator, so that a lost GCS kills only it.

It connects to the cluster (or starts a local Ray), then every tick: checks the GCS (a TCP
connect to its port, then the node list, both with time limits, since Ray calls hang while
the GCS is down), ticks the pools (in a thread of their own, the GCS checked every tick while
they run: a head lost mid-tick hangs their Ray calls) and writes the health report. It
stops (and its pools with it) when its coordinator has died, or no longer holds the leader
lease two ticks running (it hangs, say: a standby leads now), so that two fleets never run
for long. When the GCS has been unreachable for gcs_grace_s it exits with GCS_LOST at once
(os._exit: nothing Ray does at exit can be trusted then) and the coordinator starts a new
driver, which waits for the head.

Exit codes: 0 stopped on request, GCS_LOST, NO_CLUSTER (could not connect), FATAL (the
fleet cannot run as configured: the report says why).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import socket
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import replace
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from framefleet import logs
from framefleet.queue import Queue, Supervision, connect
from framefleet.settings import Settings
from framefleet.workers.actors import FleetError
from framefleet.workers.model import ModelLoadError, pin_weights
from framefleet.workers.outputs import OutputRootError, mark_root, unmark_root
from framefleet.workers.ray_adapter import RayAdapter

from .pools import Pools

log = logging.getLogger("framefleet.coordinator.driver")  # also when run as __main__

GCS_LOST, NO_CLUSTER, FATAL = 3, 4, 5


class _GcsGone(Exception):
    """The GCS has not answered for gcs_grace_s: the driver exits with GCS_LOST."""


STOP_TIMEOUT_S = 20.0  # decode actors settle and release within this on a stop


def main(settings: Settings, redis_url: str, generation: str, leader: str) -> None:
    """The child process's entry point: `python -m framefleet.coordinator.driver`, with its
    arguments pickled on stdin by the coordinator that started it."""
    logs.configure(settings.log)
    driver = Driver(settings, redis_url, generation, leader)
    code = driver.run()
    if code != GCS_LOST and settings.coordinator.ray_address is None:
        driver.shutdown_local_ray()
    sys.stdout.flush()
    os._exit(code)


class Driver:
    def __init__(self, settings: Settings, redis_url: str, generation: str, leader: str) -> None:
        self.settings, self.redis_url = settings, redis_url
        self.generation, self.leader = generation, leader
        self.queue = Queue(connect(redis_url), settings.queue)
        self.supervision = Supervision(self.queue)
        ttl = settings.coordinator.leader_ttl_s
        # the leader lease is read on a client of its own that gives up within ttl/5
        self.leases = Supervision(
            Queue(connect(redis_url, retry_s=0, timeout_s=ttl / 5), settings.queue)
        )
        self._confirmed = time.monotonic()  # when its coordinator was last seen leading
        self.adapter = RayAdapter()
        self.stopping = threading.Event()
        self.probe = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gcs-probe")
        self.ticker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pools-tick")
        self._lost_since: float | None = None  # since when the GCS has not answered
        self.events: list[str] = []
        self.parent = os.getppid()
        self._unreported = False  # the last health report could not be written
        self.replaced = 0  # actors the pools replaced, all ticks together

    def run(self) -> int:
        address = self.settings.coordinator.ray_address
        gcs = self._connect(address)
        if gcs is None:
            return NO_CLUSTER
        for sig in (signal.SIGTERM, signal.SIGINT):  # after ray.init, which sets its own
            signal.signal(sig, lambda signum, frame: self.stopping.set())
        try:
            self.settings = _with_output_root(self.settings, address, self.generation)
            # one set of weights for the whole fleet, whatever is saved under its name later
            self.settings = replace(self.settings, model=pin_weights(self.settings.model))
        except (OutputRootError, ModelLoadError, OSError) as exc:
            log.error("the fleet cannot run: %s", exc)
            self._report(ok=False, error=str(exc), fatal=True)
            return FATAL
        pools = Pools(
            self.settings,
            self.redis_url,
            self.queue,
            self.adapter,
            self.generation,
            leader=self.leader,
        )
        tick = self.settings.coordinator.tick_s
        deposed = 0
        try:
            while not self.stopping.is_set():
                started = time.monotonic()
                if os.getppid() != self.parent:  # the coordinator died: a standby takes over
                    log.warning("the coordinator is gone: stopping", extra={"event": "leader_lost"})
                    break
                deposed = deposed + 1 if self._deposed() else 0
                if deposed >= 2:  # its coordinator no longer leads (it hangs, say): stop
                    self._event("the coordinator no longer leads: stopping", "leader_lost")
                    break
                nodes = self._gcs(gcs)
                if nodes is not None and self._watched_tick(pools, nodes, gcs) is not None:
                    return FATAL
                self.stopping.wait(max(0.0, tick - (time.monotonic() - started)))
        except _GcsGone:
            return GCS_LOST
        log.info("stopping the fleet: its decode actors release what they hold")
        pools.stop(timeout=STOP_TIMEOUT_S)
        with contextlib.suppress(OSError):
            unmark_root(self.settings.pipeline.out, self.settings.pipeline.out_marker)
        return 0

    def _connect(self, address: str | None) -> str | None:
        """ray.init, with the actors' log lines printed on this process's stderr. Returns
        the GCS's address, or None (reported) when it fails."""
        try:
            pythonpath = os.environ.get("PYTHONPATH")
            env = {"env_vars": {"PYTHONPATH": pythonpath}} if pythonpath else None
            lines = logs.Forwarder(self.settings.log)
            self.adapter.init(address, env, self.settings.coordinator.ray_temp_dir, lines)
            logs.configure(self.settings.log)  # Ray's own logger through ours, now it is set up
            return self.adapter.gcs_address()
        except Exception as exc:
            error = f"cannot connect to Ray at {address or 'local'}: {exc}"
            tokens = {"RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"} & set(os.environ)
            if address is not None and not tokens:
                error += (
                    " (if the cluster uses token authentication, Ray's default, give the"
                    " driver its token: RAY_AUTH_MODE=token and RAY_AUTH_TOKEN or"
                    " RAY_AUTH_TOKEN_PATH)"
                )
            # expected while a head is down (a new driver every few seconds): one line, no
            # traceback; the report says the GCS is lost, so the GCS alert sees the outage
            log.warning("%s", error)
            self._report(ok=False, error=error, **({"gcs": False} if address else {}))
            return None

    def _gcs(self, gcs: str) -> int | None:
        """Alive nodes; None while the GCS does not answer, which is reported at once, and
        _GcsGone once it has not answered for gcs_grace_s (a new driver waits for the head)."""
        now = time.monotonic()
        nodes = self._nodes(gcs)
        if nodes is not None:
            if self._lost_since is not None:
                self._event(f"the GCS at {gcs} answers again", "gcs_back")
                self._lost_since = None
            return nodes
        if self._lost_since is None:
            self._lost_since = now
            self._event(f"the GCS at {gcs} does not answer", "gcs_lost", quiet=True)
        lost_for = now - self._lost_since
        error = f"the GCS at {gcs} is unreachable"
        self._report(ok=False, error=error, gcs=False, gcs_lost_for=lost_for)
        if lost_for >= self.settings.coordinator.gcs_grace_s:
            self._event(
                f"the GCS at {gcs} has not answered for {lost_for:.1f} s: this driver exits,"
                " a new one waits for the head",
                "gcs_lost",
            )
            raise _GcsGone
        return None

    def _watched_tick(self, pools: Pools, nodes: int, gcs: str) -> int | None:
        """The pools' tick in a thread of its own, with the GCS checked every tick_s while it
        runs: Ray calls hang while the GCS is down (until Ray's reconnect timeout, a minute by
        default), and a head lost during a tick is reported and acted on all the same."""
        future = self.ticker.submit(self._tick, pools, nodes)
        while True:
            try:
                return future.result(timeout=self.settings.coordinator.tick_s)
            except FutureTimeout:
                self._gcs(gcs)  # a slow tick while the GCS answers: it goes on

    def _tick(self, pools: Pools, nodes: int) -> int | None:
        """One round of the pools, reported; FATAL when the fleet cannot run."""
        started = time.monotonic()
        try:
            report = pools.tick()
        except FleetError as exc:
            log.error("the fleet cannot run: %s", exc)
            self._report(ok=False, error=str(exc), fatal=True)
            pools.stop(timeout=0)
            return FATAL
        except RedisError as exc:  # Redis away: the next tick tries again
            log.warning("the pools' tick failed: Redis does not answer (%s)", exc)
            self.events = [*self.events, f"Redis does not answer: {exc}"][-10:]
            return None
        except Exception:  # a bug: logged, reported, and the next tick tries again
            log.exception("the pools' tick failed")
            self.events = [*self.events, traceback.format_exc(limit=3)][-10:]
            return None
        self.events = [*self.events, *report.events][-10:]
        self.replaced += report.replaced
        why = None
        if report.ready_inference == 0:
            why = f"no inference actor ready yet ({report.inference} starting)"
        elif report.decoders == 0:
            why = "no decode actor running"
        self._report(
            ok=why is None,
            **({"error": why} if why else {}),
            nodes=nodes,
            gcs=True,
            decoders=report.decoders,
            inference=report.inference,
            ready_inference=report.ready_inference,
            replaced=self.replaced,  # actors replaced since this driver started
            draining_nodes=report.draining_nodes,
            decoders_wanted=report.decoders_wanted,
            inference_wanted=report.inference_wanted,
            inference_room=report.inference_room,
            requested=report.requested,  # asked of Ray's autoscaler (None: not asked)
            tick_s=round(time.monotonic() - started, 4),  # this round's time, Ray and Redis
            pids=report.pids,
        )
        return None

    def _event(self, text: str, event: str, quiet: bool = False) -> None:
        """A fleet event: one WARNING line, and in the health report's events (unless
        `quiet`: the report says it already)."""
        log.warning("%s", text, extra={"event": event})
        if not quiet:
            self.events = [*self.events, text][-10:]

    def _deposed(self) -> bool:
        """Another coordinator holds the leader lease, or none does; or Redis has not said
        for longer than the lease that its coordinator leads (its lease has run out)."""
        try:
            deposed = self.leases.leader() != self.leader
        except RedisError:
            return time.monotonic() - self._confirmed > self.settings.coordinator.leader_ttl_s
        if not deposed:
            self._confirmed = time.monotonic()
        return deposed

    def shutdown_local_ray(self, timeout: float = 15.0) -> None:
        """End the local Ray this driver started, all of it: os._exit alone leaves its agent
        processes running. In a thread, with a time limit, since Ray may hang here."""
        thread = threading.Thread(target=self.adapter.shutdown, daemon=True)
        thread.start()
        thread.join(timeout)

    def _nodes(self, gcs: str) -> int | None:
        """Alive nodes, or None when the GCS does not answer in time."""
        host, _, port = gcs.rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=1.0):
                pass
            return int(self.probe.submit(self.adapter.alive_nodes).result(timeout=3.0))
        except (OSError, FutureTimeout):
            return None

    def _report(self, ok: bool, **fields: Any) -> None:
        try:
            report = {
                "ok": ok,
                "at": time.time(),
                "leader": self.leader,
                "driver_pid": os.getpid(),
                "generation": self.generation,
                "redis": True,
                # counts (every worker's age was 2.2 MB a report at 20,000: /v1/workers has it)
                "workers": self.supervision.worker_counts(self.settings.coordinator.stale_s),
                "events": self.events,
                **fields,
            }
            ttl = max(3 * self.settings.coordinator.tick_s, 10.0)
            self.supervision.write_health(report, ttl_s=ttl)
        except RedisError as exc:  # Redis away: said once, until a report gets through
            if not self._unreported:
                log.warning("the health report was not written: %s", exc)
            self._unreported = True
            return
        except Exception:  # a bug (a field that is not JSON, say): the ticks go on
            log.exception("the health report was not written")
            return
        self._unreported = False


def _with_output_root(settings: Settings, address: str | None, generation: str) -> Settings:
    """A relative local output root is this machine's directory: made absolute for a local
    Ray, refused on a cluster; a local root gets the marker every actor must see there."""
    p = settings.pipeline
    out = p.out
    if address is None and not out.startswith("s3://"):
        out = str(Path(out.removeprefix("file://")).absolute())
    marker = mark_root(out, generation)
    return replace(settings, pipeline=replace(p, out=out, out_marker=marker))


if __name__ == "__main__":
    main(*pickle.load(sys.stdin.buffer))
