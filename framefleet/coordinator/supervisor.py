"""The coordinator: stateless, so it can be killed and restarted at any time.

Coordinators compete for the leader lease in Redis; the holder acts and the others stand
by, taking over within leader_ttl_s of the leader's death. The leader, every tick:
- keeps the Ray driver (driver.py) running in a child process, starting a new one when it
  exits (after a lost GCS: it waits for the head to come back, retrying with a backoff);
- ends the fleet of a driver that exited (its actors die with it): their leases come back
  at once, no delivery counted; a new leader does the same for the fleets of the old one;
- sweeps the queue: the leases of workers whose heartbeat stopped, expired leases, due
  retries, and leases that ran out while nobody could renew (Supervision.sweep);
- renews its lease. It steps down (stops its driver and stands by) only when the lease is
  known lost (another coordinator holds it) or has run out by its own clock: a Redis outage
  shorter than the lease does not make it drop its fleet.
The lease is renewed on a client of its own, whose calls give up within a fifth of the
lease (the shared one retries for RETRY_S), and a watchdog thread ends the driver once the
lease has run out by this clock, whatever the main loop is blocked on: a leader cut off from
Redis has stopped its fleet by the time a standby can take the lease.
On SIGTERM or SIGINT it stops its driver (the decode actors release their leases) and
gives the lease up.
"""

from __future__ import annotations

import logging
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

from redis.exceptions import RedisError

from framefleet.ops.webhooks import Notifier
from framefleet.queue import Queue, Supervision, connect
from framefleet.queue.supervision import new_generation
from framefleet.settings import Settings, SettingsError

from . import driver

log = logging.getLogger(__name__)

BACKOFF_S = (0.5, 1.0, 2.0, 3.0)  # between driver restarts; the last repeats
STOP_GRACE_S = driver.STOP_TIMEOUT_S + 5.0
EXPIRED_GRACE_S = 2.0  # a driver whose leader's lease ran out: SIGTERM, then this, SIGKILL


class Coordinator:
    def __init__(self, settings: Settings, redis_url: str, name: str | None = None) -> None:
        self.settings, self.redis_url = settings, redis_url
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.queue = Queue(connect(redis_url), settings.queue)
        self.supervision = Supervision(self.queue)
        ttl = settings.coordinator.leader_ttl_s
        # the lease's own client: a renewal that cannot reach Redis gives up within ttl/5
        leases = Queue(connect(redis_url, retry_s=0, timeout_s=ttl / 5), settings.queue)
        self.leases = Supervision(leases)
        self.stopping = threading.Event()
        self.child: subprocess.Popen[bytes] | None = None
        self.generation: str | None = None  # the fleet of the driver running now
        self.restarts = 0
        self.fatal: str | None = None
        self._next_start = 0.0
        self._failures = 0
        self._held_until = 0.0  # monotonic: the lease runs out then, by this clock
        self._leading = False
        self._ended: list[tuple[str, str]] = []  # fleets to end once Redis answers
        self._others_unread = False  # leading, and the other leaders' fleets not read yet
        self.notifier = self._notifier()

    def _notifier(self) -> Notifier | None:
        """The webhook sender every coordinator runs (leader or standby: the consumer group
        gives each outcome to one), when a signing key is set; a URL without one is refused."""
        hooks = self.settings.webhook
        key = hooks.key()
        if key is None:
            if hooks.url is not None:
                raise SettingsError(
                    "FRAMEFLEET_WEBHOOK_URL needs FRAMEFLEET_WEBHOOK_SECRET (or _FILE):"
                    " webhooks are signed"
                )
            return None
        return Notifier(Queue(connect(self.redis_url), self.settings.queue), hooks, key, self.name)

    def run(self, until: Callable[[], bool] | None = None) -> int:
        """Until stopped (or `until()` is true, checked every tick). Returns 0, or 2 when the
        fleet cannot run as configured (self.fatal says why)."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda signum, frame: self.stopping.set())
        c = self.settings.coordinator
        watchdog = threading.Thread(target=self._watchdog, daemon=True, name="lease-watchdog")
        watchdog.start()
        if self.notifier is not None:
            hooks = threading.Thread(
                target=self.notifier.run, args=(self.stopping,), daemon=True, name="webhooks"
            )
            hooks.start()
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
            self._end_fleets()
            try:
                self.leases.release_leadership(self.name)
            except RedisError as exc:
                log.warning("could not give the leader lease up: %s", exc)
        return 2 if self.fatal is not None else 0

    def _watchdog(self) -> None:
        """Ends the driver once the lease has run out by this clock, even while the main
        loop waits on Redis: SIGTERM, then SIGKILL after EXPIRED_GRACE_S (stopping its pools
        cleanly needs Redis, which this leader cannot reach; its actors die with it)."""
        every = min(0.5, self.settings.coordinator.leader_ttl_s / 10)
        while not self.stopping.wait(every):
            child = self.child
            if child is None or child.poll() is not None or not self._leading:
                continue
            if time.monotonic() < self._held_until:
                continue
            log.warning(
                "the leader lease of %s ran out by its own clock (Redis does not answer):"
                " ending its Ray driver (pid %d), a standby may lead now",
                self.name,
                child.pid,
                extra={"event": "leader_lost"},
            )
            child.terminate()
            try:
                child.wait(EXPIRED_GRACE_S)
            except subprocess.TimeoutExpired:
                child.kill()

    def stop(self) -> None:
        self.stopping.set()

    def _hold(self) -> bool:
        """Whether this coordinator leads. Known lost (another holds it): no. Redis does not
        answer: yes while the lease it last renewed has not run out by this clock."""
        ttl = self.settings.coordinator.leader_ttl_s
        asked = time.monotonic()
        try:
            held = self.leases.hold_leadership(self.name, ttl)
        except RedisError as exc:
            leading = self._leading and time.monotonic() < self._held_until
            log.warning(
                "leader lease not renewed (%s); %s",
                exc,
                "still leading" if leading else "standing by",
            )
            self._leading = leading  # once run out, leading again is a take-over
            return leading
        if held:
            self._held_until = asked + ttl
            if not self._leading:
                self._take_over()
            elif self._others_unread:  # the take-over could not read them: again each tick
                self._end_others()
        elif self._leading:
            log.warning(
                "%s lost the leader lease to another coordinator: standing by",
                self.name,
                extra={"event": "leader_lost"},
            )
        self._leading = held
        return held

    def _take_over(self) -> None:
        """This coordinator has just become the leader: the fleets started by others are
        ended (their workers stop claiming when their leader is gone; their leases come
        back now instead of through their heartbeats going stale)."""
        self._others_unread = True
        before = self._end_others()
        if before:  # a leader change: the fleet event operators look for
            others = ", ".join(sorted(before))
            log.warning("%s leads now, after %s", self.name, others, extra={"event": "leader"})
        else:
            log.info("%s leads now", self.name, extra={"event": "leader"})

    def _end_others(self) -> set[str]:
        """Queue the fleets of other coordinators to be ended; their leaders' names. A
        failed read is tried again at the next tick, not forgotten."""
        before: set[str] = set()
        try:
            for generation, leader in self.supervision.fleets().items():
                if leader != self.name:
                    before.add(leader)
                    self._ended.append((generation, f"its coordinator {leader} lost the lead"))
        except RedisError as exc:
            log.warning("could not read the fleets (again at the next tick): %s", exc)
            return before
        self._others_unread = False
        return before

    def _lead(self) -> None:
        c = self.settings.coordinator
        self._watch_child()
        self._end_fleets()
        try:
            # While the driver cannot see its cluster, its actors' silence says nothing about
            # the videos they hold: if the driver gives up, its fleet is ended, uncharged.
            # Nor do the leases that run out meanwhile, one by one in different sweeps: they
            # come back uncharged (judge=False), not each charged alone.
            sound = self._fleet_sound()
            stale = c.stale_s if sound else None
            self.supervision.queue.sweep(stale_s=stale, gap_s=c.gap_s, judge=sound)
        except RedisError as exc:  # the next tick tries again
            log.warning("sweep failed: %s", exc)

    def _fleet_sound(self) -> bool:
        """The driver runs and has not reported its GCS lost."""
        if self.child is None or self.child.poll() is not None:
            return False
        report = self.supervision.health() or {}
        return not (report.get("generation") == self.generation and report.get("gcs") is False)

    def _watch_child(self) -> None:
        if self.child is not None and self.child.poll() is None:
            return
        if self.child is not None:
            code = self.child.returncode
            how = {0: "stopped", driver.GCS_LOST: "lost the GCS", driver.FATAL: "cannot run"}
            log.warning(
                "the Ray driver (pid %d) exited with code %d (%s); its fleet %s ends",
                self.child.pid,
                code,
                how.get(code, "died" if code != driver.NO_CLUSTER else "found no cluster"),
                self.generation,
                extra={"event": "driver_exited"},
            )
            self._child_gone(f"its Ray driver exited (code {code})")
            if code == driver.FATAL:
                try:
                    report = self.supervision.health() or {}
                except RedisError:
                    report = {}
                self.fatal = str(report.get("error", "the fleet cannot run as configured"))
                return
            if code not in (0, driver.GCS_LOST, driver.NO_CLUSTER):  # it could not say why
                self._report_death(code)
            self._failures = self._failures + 1 if code != 0 else 0
            delay = BACKOFF_S[min(self._failures, len(BACKOFF_S)) - 1] if self._failures else 0
            self._next_start = time.monotonic() + delay
        if time.monotonic() < self._next_start or time.monotonic() >= self._held_until:
            return  # (a lease that has run out meanwhile: no driver until it is renewed)
        generation = new_generation()
        try:
            self.supervision.add_fleet(generation, self.name)
        except RedisError as exc:
            log.warning("cannot record a new fleet (%s): not starting a driver yet", exc)
            return
        self.generation = generation
        try:
            self.child = subprocess.Popen(
                [sys.executable, "-m", "framefleet.coordinator.driver"], stdin=subprocess.PIPE
            )
            assert self.child.stdin is not None
            with self.child.stdin as stdin:  # the child's arguments, from its own parent
                stdin.write(pickle.dumps((self.settings, self.redis_url, generation, self.name)))
        except OSError as exc:  # no process (out of memory, say), or it died at once
            log.warning("could not start a Ray driver: %s", exc)
            self._ended.append((generation, f"its Ray driver did not start: {exc}"))
            self._failures += 1
            self._next_start = time.monotonic() + BACKOFF_S[-1]
            return
        self.restarts += 1
        log.info("Ray driver started (pid %d) for fleet %s", self.child.pid, generation)

    def _child_gone(self, reason: str) -> None:
        """The driver process has exited: its actors are gone with it (they fate-share with
        their owner), so its fleet is ended."""
        self.child = None
        if self.generation is not None:
            self._ended.append((self.generation, reason))
            self.generation = None
        self._end_fleets()

    def _end_fleets(self) -> None:
        """End the fleets waiting for it (kept until Redis answers)."""
        while self._ended:
            generation, reason = self._ended[0]
            try:
                released = self.supervision.end_fleet(generation, reason)
            except RedisError as exc:
                log.warning("fleet %s not ended yet: %s", generation, exc)
                return
            if released:
                log.info("fleet %s ended (%s): %d leases back", generation, reason, released)
            self._ended.pop(0)

    def _report_death(self, code: int) -> None:
        report = {
            "ok": False,
            "at": time.time(),
            "leader": self.name,
            "redis": True,
            "error": f"the Ray driver died (exit code {code}); starting a new one",
        }
        try:
            ttl = max(3 * self.settings.coordinator.tick_s, 10.0)
            self.supervision.write_health(report, ttl_s=ttl)
        except RedisError as exc:
            log.warning("could not write the health report: %s", exc)

    def _stop_child(self) -> None:
        child = self.child
        if child is None:
            return
        if child.poll() is None:
            child.terminate()  # SIGTERM: the driver stops its pools, leases are released
            try:
                child.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                log.warning("the Ray driver (pid %d) did not stop in time: killed", child.pid)
                child.kill()
                child.wait(5)
        log.info("the Ray driver (pid %d) stopped (code %s)", child.pid, child.returncode)
        self._child_gone(f"its Ray driver stopped (code {child.returncode})")
