"""Optional durability for the two writes a failover must not undo: enqueue and ack.

Redis replicates asynchronously: a primary answers a write before any replica has it, so a
failover (Sentinel promoting a replica after the primary died) may lose the writes of its
last moments, already answered. With FRAMEFLEET_REDIS_MIN_REPLICAS=n, enqueue and ack send
`WAIT n timeout` after their script, on the same connection (WAIT counts the replicas that
have this connection's writes); with FRAMEFLEET_REDIS_WAITAOF, `WAITAOF 1 n timeout`
instead, which also waits for the primary's append-only file and those replicas' to be
fsynced (a crash of every machine then loses nothing answered). Claims, progress, renewals
and the rest do not wait: a lost one is repaired by the fencing tokens and the sweep (a lost
claim's lease is refused as stale; a lost checkpoint is a chunk done again).

The contract: a call that returns had its writes confirmed; one that raises NotDurable made
them on the primary, unconfirmed (a large enqueue is confirmed every few batches, and stops
at the first confirmation that fails: the error carries the ids written so far). This also
covers Sentinel's plain SENTINEL FAILOVER, after which the old primary, alive, takes writes
for seconds with no replica left (all lost when it is made a replica): each says NotDurable,
and is made again on the new primary once the client has followed. Costs (Valkey 9.1,
loopback): WAIT adds one round trip; WAITAOF with replicas waits for their fsync, which a
replica on appendfsync everysec reports about once a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError

from framefleet.settings import RedisSettings

from .model import QueueError


class NotDurable(QueueError, RedisConnectionError):
    """The write was made on the primary, but fewer replicas (or append-only files) than
    asked confirmed it within the timeout: it stands unless the primary fails before they
    catch up, and then it may be lost. `result` is what the call would have returned (the
    ids enqueued, the ack verdicts). Calling again is safe (enqueue and ack are idempotent)
    and returns once the replicas confirm; a repeat that finds its work done already writes
    nothing, and then confirms what its connection wrote last (the first call's writes when
    it is the same connection, as it is for a client used by one thread). A ConnectionError
    too, so that callers that wait out a Redis that does not answer wait this out as well."""

    def __init__(self, message: str, result: Any) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True, slots=True)
class Durability:
    """What enqueue and ack wait for before they return (module docstring)."""

    replicas: int = 0  # replicas that must have the writes; 0 with aof: the primary's file
    aof: bool = False  # WAITAOF: fsynced to the append-only files, not only received
    timeout_s: float = 2.0

    @classmethod
    def from_settings(cls, settings: RedisSettings) -> Durability:
        return cls(settings.min_replicas, settings.waitaof, settings.wait_timeout_s)

    @property
    def on(self) -> bool:
        return self.replicas > 0 or self.aof

    def queue_wait(self, pipe: Pipeline) -> None:
        """Add the WAIT (or WAITAOF) to `pipe`, after the writes it confirms. WAITAOF with
        replicas comes after a WAIT: a replica reports its fsynced offset when the primary
        asks (GETACK) and once a second, and the first ask comes with the writes, before
        the replica has fsynced them, so WAITAOF alone takes about a second (Valkey 9.1);
        the WAIT's ask lets it fsync, and WAITAOF's ask then finds them fsynced (two round
        trips with appendfsync always; up to twice the timeout when both wait in vain)."""
        ms = max(1, round(self.timeout_s * 1000))  # 0 would be: wait for ever
        if not self.aof or self.replicas:
            pipe.wait(self.replicas, ms)
        if self.aof:
            pipe.waitaof(1, self.replicas, ms)

    def check(self, reply: Any, what: str, result: Any) -> None:
        """NotDurable unless `reply` (WAIT's count, WAITAOF's [local, replicas]) is enough."""
        local, replicas = (int(reply[0]), int(reply[1])) if self.aof else (1, int(reply))
        if local >= 1 and replicas >= self.replicas:
            return
        if not local:
            short = "the primary's append-only file was not fsynced"
        else:
            kind = "fsynced" if self.aof else "received"
            short = f"{replicas} of the {self.replicas} replicas asked {kind} it"
        raise NotDurable(
            f"{what} was written on the primary, but not confirmed durable: {short} within"
            f" {self.timeout_s:g} s (FRAMEFLEET_REDIS_MIN_REPLICAS/_WAITAOF); a failover now"
            " may lose it. Calling again is safe.",
            result,
        )
