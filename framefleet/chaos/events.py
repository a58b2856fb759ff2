"""The events of a chaos run's history, one JSON object a line.

Each line has `type` (the event's name below), `t` (wall seconds, `time.time()`), `by`
(the process or worker that wrote it) and the event's own fields. Operations: `enqueue`,
`claim`, `decoded`, `chunk_written`, `checkpoint`, `ack`, `fail`, `release`, `dead`; faults: `fault`
(a start and, for a fault that lasts, an end); the run's `header`; and what the harness
observes once the fleet is idle: `final_state` for every id the queue knows,
`final_output` for every output present, `reference` for every output of the fault-free
run. An output is keyed (id, chunk): chunk None is the item's whole output (its
detections), an index one chunk's file. A digest is of the detections in a canonical form
the harness picks, the same for `chunk_written`, `ack`, `final_output` and `reference`.
checker.py says what it makes of each event.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, ClassVar

from framefleet.queue.model import State, Verdict


class HistoryError(ValueError):
    """A history line that is not an event (a torn last line is not one: it is skipped)."""


class Phase(StrEnum):
    START = "start"
    END = "end"  # a fault that lasts (a partition, a SIGSTOP) ends; a kill has no end


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """What every event has: when (wall seconds) and who wrote it (the writer fills it)."""

    TYPE: ClassVar[str] = ""
    t: float = field(default_factory=time.time)
    by: str = ""

    def to_json(self) -> str:
        body: dict[str, Any] = {"type": self.TYPE}
        body.update((f.name, getattr(self, f.name)) for f in fields(self))
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Header(Event):
    """The run: its seed, the faults planned (each a small JSON object), a settings summary."""

    TYPE: ClassVar[str] = "header"
    seed: int | None = None
    faults: tuple[Mapping[str, Any], ...] = ()
    settings: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "faults", tuple(self.faults))


@dataclass(frozen=True, slots=True, kw_only=True)
class Enqueue(Event):
    """An enqueue call's outcome: ok=True accepted (new, or an idempotent repeat), ok=False a
    definite refusal (invalid, queue full), ok=None unknown (a timeout, a lost connection):
    such an item may or may not exist afterwards, and either is allowed."""

    TYPE: ClassVar[str] = "enqueue"
    id: str
    ok: bool | None
    reason: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Claim(Event):
    TYPE: ClassVar[str] = "claim"
    id: str
    epoch: int
    worker: str
    token: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ChunkWritten(Event):
    """A chunk's output written by the lease of `epoch` at `key`; `digest` of its detections
    in a canonical form (the same form `final_output` and `reference` use); `frames` decoded
    for it, when known (rework in frames)."""

    TYPE: ClassVar[str] = "chunk_written"
    id: str
    chunk: int
    epoch: int
    key: str
    digest: str
    frames: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Decoded(Event):
    """A chunk decoded and handed to inference by the lease of `epoch`: `frames` frames. A
    chunk decoded again by a later lease is rework, whether or not its output was written
    (a worker killed mid-chunk wrote nothing)."""

    TYPE: ClassVar[str] = "decoded"
    id: str
    chunk: int
    epoch: int
    frames: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Checkpoint(Event):
    """A progress call: the chunk indices it recorded as done, and whether it was accepted."""

    TYPE: ClassVar[str] = "checkpoint"
    id: str
    chunks: tuple[int, ...]
    epoch: int
    ok: bool

    def __post_init__(self) -> None:
        object.__setattr__(self, "chunks", tuple(self.chunks))


@dataclass(frozen=True, slots=True, kw_only=True)
class Ack(Event):
    """An ack call and the queue's verdict; `digest` of the item's whole output it
    acknowledged (its detections), when the harness computes one. Verdict None: the call
    raised (its connection cut or timed out), so its outcome is unknown: Redis may have
    applied it (Jepsen's indeterminate operation, as an enqueue's ok=None)."""

    TYPE: ClassVar[str] = "ack"
    id: str
    epoch: int
    verdict: Verdict | None
    digest: str | None = None

    def __post_init__(self) -> None:
        if self.verdict is not None:
            object.__setattr__(self, "verdict", Verdict(self.verdict))


@dataclass(frozen=True, slots=True, kw_only=True)
class Fail(Event):
    TYPE: ClassVar[str] = "fail"
    id: str
    epoch: int
    retryable: bool
    reason: str
    verdict: Verdict = Verdict.OK

    def __post_init__(self) -> None:
        object.__setattr__(self, "verdict", Verdict(self.verdict))


@dataclass(frozen=True, slots=True, kw_only=True)
class Release(Event):
    TYPE: ClassVar[str] = "release"
    id: str
    epoch: int
    reason: str
    verdict: Verdict = Verdict.OK

    def __post_init__(self) -> None:
        object.__setattr__(self, "verdict", Verdict(self.verdict))


@dataclass(frozen=True, slots=True, kw_only=True)
class Dead(Event):
    """An item dead-lettered: its class (workers/errors.py) and reason."""

    TYPE: ClassVar[str] = "dead"
    id: str
    cls: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault(Event):
    """A fault injected: what (`kill_actor`, `sigstop`, `partition`, ...) on what, its start
    or its end, and the seed that chose it, when one did."""

    TYPE: ClassVar[str] = "fault"
    kind: str
    target: str
    phase: Phase = Phase.START
    seed: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "phase", Phase(self.phase))


@dataclass(frozen=True, slots=True, kw_only=True)
class FinalState(Event):
    """At the end, with the fleet idle: an item's state as the queue has it."""

    TYPE: ClassVar[str] = "final_state"
    id: str
    state: State

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", State(self.state))


@dataclass(frozen=True, slots=True, kw_only=True)
class FinalOutput(Event):
    """At the end: an output present, the epoch that wrote it (as the file or the history
    records it; None when neither does) and its digest. `chunk` None is the item's whole
    output (its detections), an index one chunk's file."""

    TYPE: ClassVar[str] = "final_output"
    id: str
    epoch: int | None
    digest: str
    chunk: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Reference(Event):
    """An output of the fault-free run (the direct single-process run), keyed as
    `final_output` is: (id, chunk), chunk None for the whole item."""

    TYPE: ClassVar[str] = "reference"
    id: str
    digest: str
    chunk: int | None = None


_TYPES: tuple[type[Event], ...] = (
    Header, Enqueue, Claim, Decoded, ChunkWritten, Checkpoint, Ack, Fail, Release, Dead,
    Fault, FinalState, FinalOutput, Reference,
)  # fmt: skip
EVENT_TYPES: Mapping[str, type[Event]] = {cls.TYPE: cls for cls in _TYPES}


def parse(line: str) -> Event:
    """One line back into its event; HistoryError when it is none."""
    try:
        body = json.loads(line, parse_constant=_no_constant)
        cls = EVENT_TYPES[body.pop("type")]
        if "t" not in body:  # the default (now) is for new events, not for reading
            raise KeyError("t")
        event = cls(**body)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise HistoryError(f"not an event ({e}): {line[:200]!r}") from None
    if not isinstance(event.t, int | float) or not math.isfinite(event.t):
        raise HistoryError(f"t is not a time: {line[:200]!r}")
    return event


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number")
