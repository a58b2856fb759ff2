"""A worker's side of a chaos run's history: its queue calls and their outcomes, recorded
as the calls return (as Jepsen's clients record theirs), never read back from the queue's
own records (the thing under test).

`RecordingQueue` is a Queue whose claim, progress/checkpoint, ack, fail and release also
write an event each (events.py) to the process's history file, after the call: it only
observes (an event that cannot be written is logged, and the call's outcome stands). A call
that raises writes nothing, as its outcome is unknown, but for an ack: that one is written
with no verdict, since Redis may have applied it (its reply lost to a cut connection), and
an item whose ack may have succeeded may be purged by retention since, without being lost. The
decode side writes the chunk events itself (`decoded`, `chunk_written`: workers/pipeline.py),
through the same writer. Turned on by FRAMEFLEET_HISTORY (PipelineSettings.history).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from framefleet.queue import Queue
from framefleet.queue.model import ChunkWork, Lease, Verdict

from .digest import table_digest
from .events import Ack, Checkpoint, Claim, Dead, Event, Fail, Release
from .history import HistoryWriter

log = logging.getLogger(__name__)

_WRITERS: dict[Path, HistoryWriter] = {}


def writer(folder: Path | None) -> HistoryWriter | None:
    """This process's writer for a history folder (one per folder), or None (recording off)."""
    if folder is None:
        return None
    if folder not in _WRITERS:
        _WRITERS[folder] = HistoryWriter(folder)
    return _WRITERS[folder]


class RecordingQueue(Queue):
    """A Queue that records its fenced calls. `store` (an OutputStore) gives the digest of
    what an ack acknowledges: the detections its manifest names."""

    history: HistoryWriter
    store: Any

    @classmethod
    def of(cls, queue: Queue, history: HistoryWriter, store: Any = None) -> RecordingQueue:
        """The same client, settings, clock and durability as `queue`, recording."""
        recording = cls(
            queue.client,
            queue.settings,
            clock=queue._clock,
            rng=queue._rng,
            durability=queue.durability,
        )
        recording.history, recording.store = history, store
        return recording

    def claim(self, n: int, worker: str, *, block: float | None = None) -> list[Lease]:
        leases = super().claim(n, worker, block=block)
        for lease in leases:
            self._record(Claim(id=lease.id, epoch=lease.epoch, worker=worker, token=lease.token))
        return leases

    def checkpoint(
        self,
        lease: Lease,
        chunks: Sequence[tuple[int, ChunkWork | None]],
        total: int | None = None,
        expected: int | None = None,
        pin: str | None = None,
    ) -> Verdict:
        verdict = super().checkpoint(lease, chunks, total, expected, pin)
        done = tuple(sorted({c for c, _ in chunks}))
        self._record(Checkpoint(id=lease.id, chunks=done, epoch=lease.epoch, ok=verdict.ok))
        return verdict

    def ack_many(
        self, acks: Sequence[tuple[Lease, str] | tuple[Lease, str, Mapping[str, float] | None]]
    ) -> list[Verdict]:
        try:
            verdicts = super().ack_many(acks)
        except Exception:
            for lease, *_ in acks:
                self._record(Ack(id=lease.id, epoch=lease.epoch, verdict=None))
            raise
        for (lease, result, *_), verdict in zip(acks, verdicts, strict=True):
            digest = self._digest(result) if verdict is Verdict.OK else None  # after: no delay
            self._record(Ack(id=lease.id, epoch=lease.epoch, verdict=verdict, digest=digest))
        return verdicts

    def fail(
        self,
        lease: Lease,
        error: str,
        *,
        retryable: bool = True,
        cls: str = "failed",
        bug: bool = False,
    ) -> Verdict:
        verdict = super().fail(lease, error, retryable=retryable, cls=cls, bug=bug)
        self._record(
            Fail(id=lease.id, epoch=lease.epoch, retryable=retryable, reason=error, verdict=verdict)
        )
        if verdict is Verdict.OK and not retryable:  # dead at once (after its last retry
            self._record(Dead(id=lease.id, cls=cls, reason=error))  # too: final_state says so)
        return verdict

    def release(self, lease: Lease, reason: str = "released", *, delay_s: float = 0) -> Verdict:
        verdict = super().release(lease, reason, delay_s=delay_s)
        self._record(Release(id=lease.id, epoch=lease.epoch, reason=reason, verdict=verdict))
        return verdict

    def release_for(
        self, lease: Lease, reason: str, cls: str, *, delay_s: float = 0
    ) -> tuple[Verdict, str | None]:
        verdict, dead = super().release_for(lease, reason, cls, delay_s=delay_s)
        self._record(Release(id=lease.id, epoch=lease.epoch, reason=reason, verdict=verdict))
        if dead is not None:
            self._record(Dead(id=lease.id, cls=cls, reason=dead))
        return verdict, dead

    def _record(self, event: Event) -> None:
        try:
            self.history.write(event)
        except OSError as exc:  # the history's disk: the run's record is short, not the queue
            log.error("a %s event was not written to the history: %s", event.TYPE, exc)

    def _digest(self, result: str) -> str | None:
        """The digest of the detections a manifest names (None: none, or unreadable)."""
        if not result or self.store is None:
            return None
        try:
            video = self.store.video_of(result)
            return None if video is None else table_digest(self.store.read_detections(video))
        except Exception as exc:
            log.debug("the detections of %s were not read for the history: %s", result, exc)
            return None
