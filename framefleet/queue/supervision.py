"""What the coordinator and the workers keep in Redis besides the items: worker heartbeats,
the leader lease and the health report (keys `workers`, `leader`, `health`; see keys.py).

- Workers send a heartbeat every few seconds. When a worker's heartbeat is older than the
  stale time, `expire_orphans` makes the leases it still holds expire now, so that the next
  reap hands its videos out again at once instead of after the lease time.
- Coordinators compete for one leader lease (a key with a TTL holding the leader's id);
  the holder renews it, the others stand by and take it when it runs out.
- The leader writes a health report (JSON, with a TTL) for the dashboard and the CLI.
"""

from __future__ import annotations

import json
from typing import Any, cast

from .model import check_worker
from .queue import Queue


class Supervision:
    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self.client, self.keys = queue.client, queue.keys

    # -- workers -----------------------------------------------------------------------

    def heartbeat(self, worker: str) -> None:
        self.queue._run("heartbeat", check_worker(worker), "beat")

    def leave(self, worker: str) -> None:
        """The worker stopped cleanly: forget it (its leases were released or settled)."""
        self.queue._run("heartbeat", check_worker(worker), "leave")

    def workers(self) -> dict[str, float]:
        """Each worker's seconds since its last heartbeat."""
        now = self.queue._now()
        now_ms = int(now) if now else _server_ms(self.client.time())
        rows = cast(
            list[tuple[str, float]], self.client.zrange(self.keys.workers, 0, -1, withscores=True)
        )
        return {str(name): max(0.0, (now_ms - score) / 1000) for name, score in rows}

    def mark_gone(self, worker: str) -> None:
        """The worker is known dead (Ray said so): the next expire_orphans treats it as
        silent for ever, whatever its last heartbeat."""
        self.client.zadd(self.keys.workers, {check_worker(worker): 0}, xx=True)

    def expire_orphans(self, stale_s: float) -> tuple[int, int]:
        """Expire now the leases of workers silent for stale_s; (workers, leases)."""
        gone, expired = self.queue._run("expire_orphans", int(stale_s * 1000))
        return int(gone), int(expired)

    # -- the leader lease --------------------------------------------------------------

    def hold_leadership(self, candidate: str, ttl_s: float) -> bool:
        """Take the leader lease or extend it; True while `candidate` is the leader."""
        return bool(self.queue._run("leader_hold", candidate, int(ttl_s * 1000)))

    def release_leadership(self, candidate: str) -> bool:
        return bool(self.queue._run("leader_release", candidate))

    def leader(self) -> str | None:
        value = self.client.get(self.keys.leader)
        return None if value is None else str(value)

    # -- health ------------------------------------------------------------------------

    def write_health(self, report: dict[str, Any], ttl_s: float) -> None:
        self.client.set(self.keys.health, json.dumps(report, sort_keys=True), px=int(ttl_s * 1000))

    def health(self) -> dict[str, Any] | None:
        raw = self.client.get(self.keys.health)
        return None if raw is None else dict(json.loads(raw))


def _server_ms(reply: tuple[int, int]) -> int:
    seconds, micros = reply
    return int(seconds) * 1000 + int(micros) // 1000
