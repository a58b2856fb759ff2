"""What a run's faults cost, from its history alone: recovery, rework, goodput.

All of them count ok acks only (`Ack.verdict == ok`): a duplicate verdict is a retried call
for work already counted, a stale or lost one did no work the queue kept. Times are the
events' `t` (wall seconds).

- Baseline rate: the fault-free ack rate, acks per second. Given (a fault-free run's steady
  rate), or else from this run's fault-free stretch: the n ok acks before the first fault's
  start, (n - 1) / (last - first) (so the start-up before the first ack does not count);
  None with fewer than two such acks. The chunk rate likewise, from accepted checkpoints.
- Recovery, for each fault start:
  `to_ack_s`: from the fault's start to the first ok ack after it (t > start); None if none.
  `to_progress_s`: from the fault's start to the first accepted checkpoint after it (a
  chunk's output made durable and recorded): processing again, at a chunk's grain, where
  an ack waits for a whole video to end.
  `to_rate_s`: how long throughput stayed below 90% of the baseline's, to about W:
  the windows (s, s + W] (s >= the fault's start, and ending by the last ack: the drained
  tail is no dip) are scanned for the first whose ok acks fall below 0.9 * baseline * W
  (the dip the fault caused, at once or later: a node's actors end seconds after its head
  does), then for the first from there that holds that many again: its start, from the
  fault's. W defaults to 10 / baseline (the time of ten acks at the baseline rate). 0 when
  the fault never cost that much; None without a baseline, or when throughput did not come
  back before the run drained.
  `to_chunk_rate_s`: the same at a chunk's grain, for runs too short for ten acks in a
  window: against the fault-free rate of chunks made durable (accepted checkpoints, a chunk
  each), W the time of WINDOW_CHUNKS chunks at that rate (chunks come in bursts: a
  shorter window sees a dip in every gap between two batches): the throughput back, where
  an ack waits for a whole video. A dip as short as the window's gaps can end the scan
  early: the figure is the end of the first dip, to about W.
  `lasted_s`: to the same fault's end (the next end event of the same kind and target),
  None for a fault with no end (a kill).
  `redelivered_s`: for a fault whose target is a worker (a name some claim was made by):
  from the fault's start until every item that worker held then (claimed by it, with no
  ack, fail or release of that claim before the fault) was claimed again by another worker
  or finished (an ok or duplicate ack); None when it held nothing, or one of them never
  was. A fault that strikes a whole node or the head names no worker: None.
- Rework: `writes` chunk_written events; `chunks` distinct (id, chunk) written; `rewrites`
  writes beyond the first of each (id, chunk), `frames_rewritten` their frames (where the
  event says); `multi_epoch` the (id, chunk) written under more than one epoch. A chunk
  decoded and never written (its worker killed first) is invisible there, but not in
  `decodes` (decoded events), `redecodes` (those beyond the first of each (id, chunk)) and
  `frames_redecoded` (their frames): the frames decoded more than once.
- Goodput: distinct ids with an ok ack per second, from the run's start (the header's t, or
  the first event's) to the last ok ack; `ratio` against a fault-free run's goodput, the
  same figure from its own history, when given.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from framefleet.queue.model import Verdict

from .events import (
    Ack,
    Checkpoint,
    ChunkWritten,
    Claim,
    Decoded,
    Event,
    Fail,
    Fault,
    Header,
    Phase,
    Release,
)

RATE_SHARE = 0.9  # "recovered": this share of the baseline's ack rate
WINDOW_ACKS = 10  # the default window: the time of this many acks at the baseline rate
WINDOW_CHUNKS = 40  # the chunk rate's: chunks come in bursts (a batch, two actors)


@dataclass(frozen=True, slots=True)
class Recovery:
    kind: str
    target: str
    at: float  # the fault's start (t)
    lasted_s: float | None
    to_ack_s: float | None
    to_rate_s: float | None
    redelivered_s: float | None = None
    to_progress_s: float | None = None
    to_chunk_rate_s: float | None = None


@dataclass(frozen=True, slots=True)
class Rework:
    writes: int = 0
    chunks: int = 0
    rewrites: int = 0
    frames_rewritten: int = 0
    multi_epoch: int = 0
    decodes: int = 0
    redecodes: int = 0
    frames_redecoded: int = 0


@dataclass(frozen=True, slots=True)
class Goodput:
    acked: int  # distinct ids with an ok ack
    seconds: float | None  # run start to the last ok ack
    per_s: float | None
    ratio: float | None  # per_s / the fault-free run's, when given


def ok_ack_times(events: Sequence[Event]) -> list[float]:
    return sorted(e.t for e in events if isinstance(e, Ack) and e.verdict is Verdict.OK)


def saved_chunk_times(events: Sequence[Event]) -> list[float]:
    """The time of each chunk an accepted checkpoint made durable (one entry a chunk)."""
    return sorted(
        e.t for e in events if isinstance(e, Checkpoint) and e.ok for _ in range(len(e.chunks))
    )


def fault_starts(events: Sequence[Event]) -> list[Fault]:
    return sorted(
        (e for e in events if isinstance(e, Fault) and e.phase is Phase.START),
        key=lambda f: f.t,
    )


def baseline_rate(acks: Sequence[float], faults: Sequence[Fault]) -> float | None:
    """Ok acks per second before the first fault (all of them in a fault-free run)."""
    before = [t for t in acks if not faults or t < faults[0].t]
    if len(before) < 2 or before[-1] <= before[0]:
        return None
    return (len(before) - 1) / (before[-1] - before[0])


def recoveries(
    events: Sequence[Event],
    rate: float | None,
    window_s: float | None = None,
    chunk_rate: float | None = None,
) -> tuple[Recovery, ...]:
    acks = ok_ack_times(events)
    chunks = saved_chunk_times(events)  # also the accepted checkpoints' times
    ends = [e for e in events if isinstance(e, Fault) and e.phase is Phase.END]
    out: list[Recovery] = []
    for f in fault_starts(events):
        same = (e.t for e in ends if (e.kind, e.target) == (f.kind, f.target) and e.t >= f.t)
        end = min(same, default=None)
        i = bisect.bisect_right(acks, f.t)
        k = bisect.bisect_right(chunks, f.t)
        out.append(
            Recovery(
                kind=f.kind,
                target=f.target,
                at=f.t,
                lasted_s=None if end is None else end - f.t,
                to_ack_s=acks[i] - f.t if i < len(acks) else None,
                to_rate_s=_to_rate(acks, f.t, rate, window_s, WINDOW_ACKS),
                redelivered_s=_redelivered(events, f),
                to_progress_s=chunks[k] - f.t if k < len(chunks) else None,
                to_chunk_rate_s=_to_rate(chunks, f.t, chunk_rate, None, WINDOW_CHUNKS),
            )
        )
    return tuple(out)


# Faults that end every worker at once: the worker node's (kill -9 of its raylet, a drain),
# the head's (the worker node gives up on it, and its actors end), the leader's driver's
# (Ray ends a dead driver's actors). The chaos rig has one worker node: a node's fault is
# every worker's.
EVERY_WORKER = frozenset(
    {"kill_raylet", "drain_node", "kill_head", "kill_leader", "restart_coordinators"}
)


def held(events: Sequence[Event], fault: Fault) -> dict[str, int]:
    """What the fault's target held when it struck: id -> the epoch of its claim (claimed by
    it, not ended by its own ack, fail or release before the fault). A fault of
    EVERY_WORKER struck every worker. Events sorted by t."""
    found: dict[str, tuple[int, str]] = {}  # id -> (epoch, worker)
    for e in events:
        if e.t >= fault.t:
            break
        if isinstance(e, Claim):
            found[e.id] = (e.epoch, e.worker)
        elif isinstance(e, Ack | Fail | Release) and found.get(e.id, (None,))[0] == e.epoch:
            del found[e.id]
        elif isinstance(e, Fault) and e.phase is Phase.START:
            # an earlier fault ended what its workers held (the queue took their leases
            # back; their workers never say so): not held by anyone at this one
            struck = e.kind in EVERY_WORKER
            found = {i: h for i, h in found.items() if not (struck or h[1] == e.target)}
    every = fault.kind in EVERY_WORKER
    return {i: epoch for i, (epoch, worker) in found.items() if every or worker == fault.target}


def _redelivered(events: Sequence[Event], fault: Fault) -> float | None:
    held_ = held(events, fault)
    if not held_:
        return None
    until: dict[str, float] = {}
    for e in events:
        item = getattr(e, "id", None)
        if e.t <= fault.t or item not in held_ or item in until:
            continue
        again = isinstance(e, Claim) and e.worker != fault.target
        finished = isinstance(e, Ack) and e.verdict in (Verdict.OK, Verdict.DUPLICATE)
        if again or finished:
            until[str(item)] = e.t
    if len(until) < len(held_):
        return None
    return max(until.values()) - fault.t


def _to_rate(
    times: Sequence[float], start: float, rate: float | None, window_s: float | None, count: int
) -> float | None:
    """to_rate_s over sorted event times (acks, or chunks made durable) against `rate` of
    them a second; the window `window_s`, else the time of `count` of them at that rate."""
    if rate is None or rate <= 0 or not times:
        return None
    w = window_s if window_s is not None else count / rate
    need = max(math.ceil(RATE_SHARE * rate * w - 1e-9), 1)
    last = times[-1] - w  # the last window's start: it ends with the last event
    if start > last:  # no whole window after the fault
        return None

    def held(s: float) -> int:
        return bisect.bisect_right(times, s + w) - bisect.bisect_right(times, s)

    # The count in (s, s + w] only falls where s passes an event, and only rises where s + w
    # reaches one: the dip starts at the fault or at an event, the recovery at (one - w).
    falls = [start] + [t for t in times if start < t <= last]
    dip = next((s for s in falls if held(s) < need), None)
    if dip is None:
        return 0.0
    rises = [dip] + [t - w for t in times if t - w > dip]
    return next((s - start for s in rises if held(s) >= need), None)


def rework(events: Sequence[Event]) -> Rework:
    writes = [e for e in events if isinstance(e, ChunkWritten)]
    seen: Counter[tuple[str, int]] = Counter()
    epochs: defaultdict[tuple[str, int], set[int]] = defaultdict(set)
    frames = 0
    for w in writes:
        key = (w.id, w.chunk)
        if seen[key]:
            frames += w.frames or 0
        seen[key] += 1
        epochs[key].add(w.epoch)
    decodes = [e for e in events if isinstance(e, Decoded)]
    once: set[tuple[str, int]] = set()
    redecoded = []
    for d in decodes:
        if (d.id, d.chunk) in once:
            redecoded.append(d)
        once.add((d.id, d.chunk))
    return Rework(
        writes=len(writes),
        chunks=len(seen),
        rewrites=len(writes) - len(seen),
        frames_rewritten=frames,
        multi_epoch=sum(1 for e in epochs.values() if len(e) > 1),
        decodes=len(decodes),
        redecodes=len(redecoded),
        frames_redecoded=sum(d.frames for d in redecoded),
    )


def run_start(events: Sequence[Event]) -> float | None:
    """The header's t, or the first event's."""
    if not events:
        return None
    return next((e.t for e in events if isinstance(e, Header)), min(e.t for e in events))


def goodput(events: Sequence[Event], fault_free: float | None = None) -> Goodput:
    acked = {e.id: e.t for e in events if isinstance(e, Ack) and e.verdict is Verdict.OK}
    start = run_start(events)
    if start is None or not acked:
        return Goodput(len(acked), None, None, None)
    seconds = max(acked.values()) - start
    if seconds <= 0:
        return Goodput(len(acked), seconds, None, None)
    per_s = len(acked) / seconds
    ratio = per_s / fault_free if fault_free else None
    return Goodput(len(acked), seconds, per_s, ratio)
