"""The plan of a simulated fleet, and every rate of its simulated decode actors in one place.

A simulated worker does what workers/actors.py and workers/pipeline.py do, at the code's own
rates (the settings' defaults give the times):
- a heartbeat every stale_s / BEATS_PER_STALE (2.5 s), its reply naming the leader, its info
  (node, pid, host) sent with the first only (actors.Heartbeat._beat): `workers.Workers._beat`;
- each lease renewed every lease_s / RENEWALS_PER_LEASE (20 s) (pipeline.LeaseKeeper):
  `workers.Workers._renew`;
- a video every video_s in `chunks` chunks: a checkpoint a chunk (or, with checkpoint_s,
  one call for the chunks settled meanwhile), the last one again with the total, then the
  ack, the inbox ingested and the next claim (VideoJob): `workers.Workers._chunk`.
`Plan.rates` says the same as calls per second at the real periods (the Redis load at the
target), and the generator's schedule runs `Plan.beat_s`, `renew_s` and `chunk_s` (the
periods slowed). `auto_slowdown` and `redis_cores` turn the rates and the calibrated cost of
each call (costs.calibrate: the calls in ALONE one by one, a video's end as one) into the
generator's need and Redis's load. When a worker's rates change, change them here and in
`workers` (and what `costs.calibrate` times) together.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os

from framefleet.settings import QueueSettings, Settings

# The calls a simulated worker makes, as the bench counts them
CALLS = ("heartbeat", "renew", "progress", "ack", "ingest", "claim")
# Those the calibration times one by one; a video's end (ack, ingest, claim) as one, video_end
# (it also times a read of the leader lease, a plain GET: the unit of the `gets` figures)
ALONE = ("heartbeat", "renew", "progress")
BEATS_PER_STALE = 4  # actors.Heartbeat: a heartbeat every stale_s / 4
RENEWALS_PER_LEASE = 3  # pipeline.LeaseKeeper: each lease renewed every lease_s / 3


def beat_period_s(settings: Settings) -> float:
    return settings.coordinator.stale_s / BEATS_PER_STALE


def renew_period_s(settings: Settings) -> float:
    return settings.queue.lease_s / RENEWALS_PER_LEASE


@dataclasses.dataclass(frozen=True)
class Plan:
    workers: int
    leases: int  # per worker
    video_s: float
    chunks: int
    processes: int
    duration_s: float
    warmup_s: float
    slowdown: float = 1.0  # every worker's period this many times the real one
    checkpoint_s: float = 0.0  # FRAMEFLEET_CHECKPOINT_S: 0, a checkpoint a chunk
    real: Settings = dataclasses.field(
        default_factory=lambda: Settings(queue=QueueSettings(name="sim"))
    )

    @functools.cached_property
    def settings(self) -> Settings:
        """What the simulation runs with: the lease time and the stale time `slowdown` times
        the real ones (the workers' periods follow them, so nothing expires sooner)."""
        q, c = self.real.queue, self.real.coordinator
        queue = dataclasses.replace(q, lease_s=q.lease_s * self.slowdown)
        coordinator = dataclasses.replace(c, stale_s=c.stale_s * self.slowdown)
        return dataclasses.replace(self.real, queue=queue, coordinator=coordinator)

    @property
    def beat_s(self) -> float:
        return beat_period_s(self.settings)

    @property
    def renew_s(self) -> float:
        return renew_period_s(self.settings)

    @property
    def chunk_s(self) -> float:
        return self.video_s * self.slowdown / self.chunks

    @property
    def save_every(self) -> int:
        """Chunks a checkpoint call: a video's chunks come every video_s / chunks seconds,
        and those settled since the last call go together once checkpoint_s has passed
        (pipeline.VideoJob._save; the first at once)."""
        return max(1, math.ceil(self.checkpoint_s / (self.video_s / self.chunks) - 1e-9))

    @property
    def saves(self) -> int:
        """Checkpoint calls a video: chunks 0, k, 2k... and the last with the total."""
        return 1 + (self.chunks - 1) // self.save_every + 1

    def rates(self) -> dict[str, float]:
        """Each call's target rate (per second) at the real periods, the fleet together."""
        leases = self.workers * self.leases
        videos = leases / self.video_s
        beats = self.workers / beat_period_s(self.real)
        return {
            "heartbeat": beats,  # the leader comes with its reply (no read of its own)
            "renew": leases / renew_period_s(self.real),
            "progress": videos * self.saves,  # chunks together, the last with the total
            "ack": videos,
            "ingest": videos,
            "claim": videos,
        }


def auto_slowdown(plan: Plan, costs: dict[str, dict[str, float]]) -> float:
    """How many times slower than the real one the fleet must run for the generator to keep
    up: the client CPU of every call at the real rates (calibrated) over the cores left
    beside Redis and the coordinator (the machine's less 1.25), with a margin."""
    rates = plan.rates()
    need = sum(rates[k] * costs[k]["client_us"] for k in ALONE) / 1e6
    need += rates["ack"] * costs["video_end"]["client_us"] / 1e6
    cores = max(0.5, (os.cpu_count() or 1) - 1.25)
    return max(1.0, math.ceil(need / (0.7 * cores) * 2) / 2)


def redis_cores(
    rates: dict[str, float], costs: dict[str, dict[str, float]], sweep_ms: float, tick_s: float
) -> dict[str, float]:
    """The Redis CPU (cores) of each kind of call at these rates, by its calibrated cost;
    a video's end (ack, inbox, claim) as one, and the coordinator's ticks."""
    us = {k: rates[k] * costs[k]["redis_us"] for k in ALONE}
    us["video_end"] = rates["ack"] * costs["video_end"]["redis_us"]
    us["ticks"] = (costs["tick_without_sweep"]["redis_us"] + sweep_ms * 1000) / tick_s
    return {k: v / 1e6 for k, v in us.items()}
