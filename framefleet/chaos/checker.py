"""Is a chaos run valid? A history (history.py) in, the anomalies and figures out.

As Jepsen's total-queue checker, and more. Words used below: an id is *enqueued* when some
enqueue of it returned ok=True (an id enqueued twice is one id); *known* when some enqueue
returned ok=True or ok=None (unknown outcome: it may exist); *acknowledged* when some ack
of it had the verdict ok or duplicate (a duplicate is the retry of an ack that succeeded,
its first reply lost); *finished* when acknowledged or its final state is done. The final
states and outputs are observed once the fleet is idle: the harness's duty.

The anomalies, each a sorted tuple of the offending ids; the run is valid only when all
are empty:

- lost: enqueued, and the queue no longer knows it (no final_state), unless it was
  acknowledged, or an ack of it had an unknown outcome (verdict None: it may have
  succeeded), or dead, and retention may have purged it since: when the header's settings
  name the retention (`retention_s`, the shorter of the done and dead items') and the run
  was shorter than that, nothing was purged, and every enqueued id must still be there. An
  item the queue still holds (queued, delayed, leased) is stuck, not lost: it would be done
  if the fleet went on (Jepsen drains the queue at the end for the same reason).
- unexpected: an id that some claim, chunk_written, checkpoint, ack, fail, release, dead,
  final_state or final_output names but that is not known: output or work for something
  nobody enqueued, or an item the queue holds after refusing it (ok=False).
- acked_twice: successful acks of one id under two or more epochs, or two with the verdict
  ok (two leases both paid for). A duplicate verdict is the retry of a success: under the
  same epoch as an ok one it is no second success, under another epoch it is one (that
  lease's own ok reply was lost); a stale verdict is no success at all.
- stale_visible: a final_output whose epoch is older than the item's acked epoch (the
  epoch of its ok ack, the highest if several) and whose digest differs from what the
  acked epoch wrote for the same output: for a chunk, its chunk_written digest under the
  acked epoch; for the whole item (chunk None), the ok ack's digest. When the acked epoch
  wrote no such output (it resumed from a checkpoint, adopting the older chunk) there is
  nothing to differ from, and `differs` judges it against the reference. Epochs compare as
  numbers; the queue may repeat an epoch after Redis lost writes (see `Lease`), and a
  repeated epoch is not older.
- differs: a finished id with a reference (an output of the fault-free run, keyed (id,
  chunk)) whose final_output for that key is missing or has another digest. A stale
  visible output usually differs too: stale_visible names the cause, differs the effect,
  and only stale_visible can see it where the run has no reference.
- stuck: known, and its final state is queued, delayed or leased.

A run whose header says `appendfsync: everysec` had a Redis that may lose its last second
of writes when killed (a kill_redis fault): there the promise is that what is lost is done
again, never twice over. So, in such a run only, two things are figures, not anomalies:

- redone: an id acknowledged again after a successful ack that came within FSYNC_WINDOW_S
  before a kill_redis (Redis lost that ack, the item went back, and was done again); every
  success but the last must be so explained, or the id is acked_twice.
- unsynced: an id that would be lost, whose last ok enqueue came within FSYNC_WINDOW_S
  before a kill_redis (Redis lost the item itself).

The figures (figures.py) need no verdict: recovery per fault, rework, goodput.

    python -m framefleet.chaos.checker HISTORY [--rate R] [--goodput G] [--window S]
        [--chunk-rate C]

prints a short table and exits 1 when the run is invalid (2 on a bad history or usage).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from framefleet.queue.model import State, Verdict

from . import figures
from .events import (
    Ack,
    ChunkWritten,
    Dead,
    Enqueue,
    Event,
    Fault,
    FinalOutput,
    FinalState,
    Header,
    HistoryError,
    Phase,
    Reference,
)
from .history import read

ANOMALIES = ("lost", "unexpected", "acked_twice", "stale_visible", "differs", "stuck")
FSYNC_WINDOW_S = 2.0  # everysec: a write this long before a kill may be gone (1 s, and slack)
RECORD_SLACK_S = 0.5  # a call's event is written once its reply is in: up to this after
LIVE = frozenset({State.QUEUED, State.DELAYED, State.LEASED})
NO_ID = (Enqueue, Reference)  # events about an id that do not make it exist


@dataclass(frozen=True, slots=True)
class Report:
    enqueued: int
    finished: int
    dead: int
    lost: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    acked_twice: tuple[str, ...] = ()
    stale_visible: tuple[str, ...] = ()
    differs: tuple[str, ...] = ()
    stuck: tuple[str, ...] = ()
    redone: tuple[str, ...] = ()  # everysec only: see above
    unsynced: tuple[str, ...] = ()
    started: float | None = None  # the run's start (figures.run_start)
    baseline_rate: float | None = None
    baseline_chunk_rate: float | None = None  # chunks made durable a second
    recoveries: tuple[figures.Recovery, ...] = ()
    rework: figures.Rework = field(default_factory=figures.Rework)
    goodput: figures.Goodput = field(default_factory=lambda: figures.Goodput(0, None, None, None))

    @property
    def counts(self) -> dict[str, int]:
        return {name: len(getattr(self, name)) for name in ANOMALIES}

    @property
    def valid(self) -> bool:
        return not any(self.counts.values())


@dataclass
class _Facts:
    """One pass over the history, per id."""

    enqueued: set[str] = field(default_factory=set)
    known: set[str] = field(default_factory=set)
    acknowledged: set[str] = field(default_factory=set)
    maybe_acked: set[str] = field(default_factory=set)  # an ack of unknown outcome
    ok_acks: defaultdict[str, list[Ack]] = field(default_factory=lambda: defaultdict(list))
    wins: defaultdict[str, list[Ack]] = field(default_factory=lambda: defaultdict(list))
    dead: set[str] = field(default_factory=set)
    states: dict[str, State] = field(default_factory=dict)
    enqueued_at: dict[str, float] = field(default_factory=dict)  # the last ok enqueue
    lossy: bool = False  # appendfsync everysec: a kill_redis may lose writes
    retention_s: float | None = None  # done and dead items are kept at least this long
    redis_kills: list[float] = field(default_factory=list)
    outputs: list[FinalOutput] = field(default_factory=list)
    references: dict[tuple[str, int | None], str] = field(default_factory=dict)
    written: dict[tuple[str, int, int], str] = field(default_factory=dict)  # last digest
    named: set[str] = field(default_factory=set)

    def add(self, e: Event) -> None:
        item = getattr(e, "id", None)
        if isinstance(item, str) and not isinstance(e, NO_ID):
            self.named.add(item)
        if isinstance(e, Header | Fault | Enqueue):
            self._run_fact(e)
        elif isinstance(e, Ack):
            if e.verdict is None:
                self.maybe_acked.add(e.id)
            if e.verdict in (Verdict.OK, Verdict.DUPLICATE):
                self.acknowledged.add(e.id)
                if all(w.epoch != e.epoch for w in self.wins[e.id]):  # a first success
                    self.wins[e.id].append(e)
            if e.verdict is Verdict.OK:
                self.ok_acks[e.id].append(e)
        elif isinstance(e, Dead):
            self.dead.add(e.id)
        elif isinstance(e, FinalState):
            self.states[e.id] = e.state
        elif isinstance(e, FinalOutput):
            self.outputs.append(e)
        elif isinstance(e, Reference):
            self.references[(e.id, e.chunk)] = e.digest
        elif isinstance(e, ChunkWritten):
            self.written[(e.id, e.chunk, e.epoch)] = e.digest

    def _run_fact(self, e: Header | Fault | Enqueue) -> None:
        """What the harness did: the run's settings, its faults, its enqueues."""
        if isinstance(e, Header):
            self.lossy = e.settings.get("appendfsync") == "everysec"
            retention = e.settings.get("retention_s")
            self.retention_s = None if retention is None else float(retention)
        elif isinstance(e, Fault):
            if e.kind == "kill_redis" and e.phase is Phase.START:
                self.redis_kills.append(e.t)
        else:
            if e.ok is not False:
                self.known.add(e.id)
            if e.ok:
                self.enqueued.add(e.id)
                self.enqueued_at[e.id] = e.t

    @property
    def finished(self) -> set[str]:
        return self.acknowledged | {i for i, s in self.states.items() if s is State.DONE}

    def unsynced_before(self, t: float, until: float = float("inf")) -> bool:
        """A write recorded at t that a kill_redis (before `until`) may have lost: everysec
        only. The record comes after the reply, so a kill just before it counts too."""
        return self.lossy and any(
            t - RECORD_SLACK_S <= k < min(t + FSYNC_WINDOW_S, until) for k in self.redis_kills
        )


def check(
    events: Sequence[Event],
    *,
    fault_free_rate: float | None = None,
    fault_free_goodput: float | None = None,
    window_s: float | None = None,
    fault_free_chunk_rate: float | None = None,
) -> Report:
    """The anomalies and figures of one run's history (in any order: sorted by t here).
    `fault_free_rate`: the steady ok-ack rate of a fault-free run, for recovery (default:
    this run's, before its first fault); `fault_free_goodput`: a fault-free run's goodput,
    for the ratio; `window_s`: recovery's window (figures.py); `fault_free_chunk_rate`: the
    steady rate of chunks made durable, for recovery at a chunk's grain (default: this
    run's, before its first fault)."""
    events = sorted(events, key=lambda e: e.t)
    facts = _Facts()
    for e in events:
        facts.add(e)
    dead = facts.dead | {i for i, state in facts.states.items() if state is State.DEAD}
    started, ended = figures.run_start(events), events[-1].t if events else None
    purged = facts.retention_s is None or (
        started is not None and ended is not None and ended - started >= facts.retention_s
    )  # may retention have deleted a finished item during the run?
    ended_ids = facts.acknowledged | facts.maybe_acked | dead if purged else set()
    gone = [i for i in facts.enqueued - ended_ids if i not in facts.states]
    twice = {
        i: wins
        for i, wins in facts.wins.items()
        if len(wins) > 1 or len(facts.ok_acks.get(i, ())) > 1
    }
    redone = [
        i
        for i, wins in twice.items()
        if len(facts.ok_acks.get(i, ())) <= len(wins)  # no two ok acks under one epoch
        and all(facts.unsynced_before(a.t, b.t) for a, b in itertools.pairwise(wins))
    ]
    rate = fault_free_rate
    if rate is None:
        rate = figures.baseline_rate(figures.ok_ack_times(events), figures.fault_starts(events))
    chunk_rate = fault_free_chunk_rate
    if chunk_rate is None:
        chunk_rate = figures.baseline_rate(
            figures.saved_chunk_times(events), figures.fault_starts(events)
        )
    return Report(
        enqueued=len(facts.enqueued),
        finished=len(facts.finished & facts.enqueued),
        dead=len(dead & facts.enqueued),
        lost=_ids(i for i in gone if not facts.unsynced_before(facts.enqueued_at[i])),
        unexpected=_ids(facts.named - facts.known),
        acked_twice=_ids(set(twice) - set(redone)),
        redone=_ids(redone),
        unsynced=_ids(i for i in gone if facts.unsynced_before(facts.enqueued_at[i])),
        stale_visible=_stale_visible(facts),
        differs=_differs(facts),
        stuck=_ids(i for i in facts.known if facts.states.get(i) in LIVE),
        started=started,
        baseline_rate=rate,
        baseline_chunk_rate=chunk_rate,
        recoveries=figures.recoveries(events, rate, window_s, chunk_rate),
        rework=figures.rework(events),
        goodput=figures.goodput(events, fault_free_goodput),
    )


def _ids(ids: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(ids)))


def _stale_visible(facts: _Facts) -> tuple[str, ...]:
    bad = set()
    for out in facts.outputs:
        acks = facts.ok_acks.get(out.id)
        if not acks:
            continue
        acked = max(acks, key=lambda a: a.epoch)
        if out.epoch is None or out.epoch >= acked.epoch:  # None: no recorded write made it
            continue
        if out.chunk is None:
            want = acked.digest
        else:
            want = facts.written.get((out.id, out.chunk, acked.epoch))
        if want is not None and out.digest != want:
            bad.add(out.id)
    return _ids(bad)


def _differs(facts: _Facts) -> tuple[str, ...]:
    present: defaultdict[tuple[str, int | None], set[str]] = defaultdict(set)
    for out in facts.outputs:
        present[(out.id, out.chunk)].add(out.digest)
    finished = facts.finished
    return _ids(
        item
        for (item, chunk), digest in facts.references.items()
        if item in finished and present[(item, chunk)] != {digest}
    )


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def render(report: Report, torn: int = 0) -> str:
    """The short table `main` prints."""
    lines = [f"{'anomaly':<14} {'count':>5}  ids"]
    for name, n in report.counts.items():
        ids = getattr(report, name)
        shown = ", ".join(ids[:5]) + (f", ... (+{len(ids) - 5})" if len(ids) > 5 else "")
        lines.append(f"{name:<14} {n:>5}  {shown}".rstrip())
    lines.append(
        f"valid: {'yes' if report.valid else 'NO'}  (enqueued {report.enqueued}, finished "
        f"{report.finished}, dead {report.dead}, torn lines {torn})"
    )
    if report.redone or report.unsynced:
        lines.append(
            f"lost by Redis (everysec): {len(report.redone)} acks, done again;"
            f" {len(report.unsynced)} enqueues"
        )
    g, r = report.goodput, report.rework
    lines.append(
        f"goodput: {g.acked} acked in {_s(g.seconds)} s = {_s(g.per_s)}/s, ratio "
        f"{_s(g.ratio)}; baseline {_s(report.baseline_rate)} acks/s,"
        f" {_s(report.baseline_chunk_rate)} chunks/s"
    )
    lines.append(
        f"rework: {r.writes} chunk writes, {r.rewrites} rewrites ({r.frames_rewritten} "
        f"frames), {r.multi_epoch} chunks under several epochs; {r.decodes} chunk decodes,"
        f" {r.redecodes} again ({r.frames_redecoded} frames)"
    )
    for f in report.recoveries:
        at = f.at - (report.started or 0.0)
        lines.append(
            f"fault {f.kind} {f.target} at +{at:.2f} s: lasted {_s(f.lasted_s)} s, "
            f"to progress {_s(f.to_progress_s)} s, to ack {_s(f.to_ack_s)} s, to 90%"
            f" {_s(f.to_rate_s)} s (acks) {_s(f.to_chunk_rate_s)} s (chunks), redelivered"
            f" {_s(f.redelivered_s)} s"
        )
    return "\n".join(lines)


def main(
    argv: Sequence[str] | None = None, prog: str = "python -m framefleet.chaos.checker"
) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    parser.add_argument("history", help="a history folder, or one .jsonl file")
    parser.add_argument("--rate", type=float, help="fault-free ok acks per second")
    parser.add_argument("--goodput", type=float, help="a fault-free run's goodput")
    parser.add_argument("--window", type=float, help="recovery's window, seconds")
    parser.add_argument("--chunk-rate", type=float, help="fault-free chunks per second")
    args = parser.parse_args(argv)
    try:
        history = read(args.history)
    except (OSError, HistoryError) as e:
        print(f"cannot read the history: {e}", file=sys.stderr)
        return 2
    report = check(
        history.events,
        fault_free_rate=args.rate,
        fault_free_goodput=args.goodput,
        window_s=args.window,
        fault_free_chunk_rate=args.chunk_rate,
    )
    print(render(report, len(history.torn)))
    return 0 if report.valid else 1


if __name__ == "__main__":
    sys.exit(main())
