"""One chaos run, end to end: the rig up, the videos enqueued in two waves, faults on a
seeded schedule while the fleet works, then the fleet left to finish, what is left
observed, and the history checked.

The history (framefleet/chaos) holds the workers' own records of their queue calls and
chunk writes (FRAMEFLEET_HISTORY), the harness's enqueues and faults, and at the end, with
every item done or dead (or the time up): each item's final state, each output present
(the merged detections with the epoch its manifest names; each chunk file with the epoch of
the write that made it, as the history has it, 0 when no recorded write made it), and the
fault-free reference: the same model in this process on the same chunks of each good video.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from framefleet.chaos import checker, figures
from framefleet.chaos.digest import digest, record_rows, table_digest
from framefleet.chaos.events import (
    ChunkWritten,
    Enqueue,
    FinalOutput,
    FinalState,
    Header,
    Reference,
)
from framefleet.chaos.history import read
from framefleet.queue import Item, Queue
from framefleet.queue.model import default_id
from framefleet.workers.decode import Sampling, chunks, open_decoder
from framefleet.workers.model import load_model
from framefleet.workers.outputs import MANIFEST, OutputStore, chunk_name, item_dir

from .faults import FAULTS
from .rig import Rig, Shape, make_rig, reference_model, summary

BACK = ("given back", "lease lost", "released")  # an item's queue events: back in the queue
ENDED = ("done", "dead")
START_TIMEOUT_S = 300.0  # the cluster, the model loaded, the first chunk checkpointed
RECOVER_WAIT_S = 120.0
# A leader whose lease ran out by its own clock ends its driver: SIGTERM, 2 s, SIGKILL
# (coordinator/supervisor.py EXPIRED_GRACE_S); the standby may start its own meanwhile, a
# tick later, and the rig samples every 0.2 s: on a loaded machine, up to this in all
TWO_DRIVERS_S = 5.0


@dataclass(frozen=True, slots=True)
class Schedule:
    seed: int
    kinds: tuple[str, ...]  # drawn from at random, each fault on its own
    faults: int
    # after a fault, the fleet makes progress again (a chunk checkpointed, up to
    # RECOVER_WAIT_S), then this long at random before the next: each fault strikes a
    # working fleet, and its recovery is its own
    gap_s: tuple[float, float] = (2.0, 6.0)
    settle_s: float = 600.0  # after the last fault, for every item to be done or dead


@dataclass
class Outcome:
    report: checker.Report
    history: Path
    faults: list[str] = field(default_factory=list)  # those struck, in order
    good_dead: list[str] = field(default_factory=list)  # good videos dead: none expected
    settled: bool = False
    seconds: float = 0.0
    two_drivers_max_s: float = 0.0  # two coordinators running drivers at once, at most
    # for each fault that struck a worker holding videos (by its start, t): seconds until
    # every one of them was back in the queue (given back or its lease taken back)
    requeued_s: dict[float, float | None] = field(default_factory=dict)
    partial_batches: int = 0  # API batches neither whole nor absent after a kill

    @property
    def valid(self) -> bool:
        """The checker's verdict, and the rig's own: every item settled, no good video
        dead, never two leaders (beyond the old driver's grace to end: TWO_DRIVERS_S), no
        API batch in part."""
        return (
            self.report.valid
            and self.settled
            and not self.good_dead
            and self.two_drivers_max_s <= TWO_DRIVERS_S
            and not self.partial_batches
        )


def run(
    root: Path,
    shape: Shape,
    schedule: Schedule,
    fault_free: checker.Report | None = None,
    log: Any = print,
) -> Outcome:
    """One run. `fault_free`: the report of a fault-free run of the same shape, whose ack
    rate and goodput recovery and the goodput ratio are measured against."""
    started = time.monotonic()
    rig = make_rig(root, shape)
    try:
        return _run(rig, schedule, fault_free, log, started)
    finally:
        rig.stop()


def _run(
    rig: Rig, schedule: Schedule, fault_free: checker.Report | None, log: Any, started: float
) -> Outcome:
    rng = random.Random(schedule.seed)
    rig.history.write(
        Header(
            seed=schedule.seed,
            faults=tuple({"kind": k} for k in schedule.kinds),
            settings=summary(rig.settings, rig.shape),
        )
    )
    references = _references(rig)
    half = len(rig.good) // 2
    first = [*rig.good[:half], *rig.poison, rig.marked]
    ids = _enqueue(rig, first)
    rig.keep_coordinators()
    rig.sample_drivers()
    _wait(lambda: _some_progress(rig), START_TIMEOUT_S, "the first chunk checkpointed", rig)
    log(f"seed {schedule.seed}: the fleet is working; {schedule.faults} faults follow")
    struck: list[str] = []
    for n in range(schedule.faults):
        if n == schedule.faults // 2:
            ids += _enqueue(rig, rig.good[half:])  # a second wave, mid-run
        kinds = list(schedule.kinds)
        rng.shuffle(kinds)
        before = _progress(rig, ids)
        kind = next((k for k in [rng.choice(kinds), *kinds] if FAULTS[k](rig, rng)), None)
        if kind is not None:
            struck.append(kind)
            log(f"  fault {n + 1}: {kind}")
        _until(lambda i=ids, b=before: _moved_on(rig, i, b), RECOVER_WAIT_S, rig)
        _pause(rig, rng.uniform(*schedule.gap_s))
    if schedule.faults == 0:
        ids += _enqueue(rig, rig.good[half:])
    ids += rig.extra_ids  # those the API's batches left (whole ones)
    settled = _until(lambda: rig.ids_settled(ids), schedule.settle_s, rig)
    requeued = _requeued(rig)
    _observe(rig, ids)
    for ref in references:
        rig.history.write(ref)
    rig.history.close()
    history = read(rig.root / "history")
    report = checker.check(
        history.events,
        fault_free_rate=fault_free.baseline_rate if fault_free else None,
        fault_free_goodput=fault_free.goodput.per_s if fault_free else None,
        fault_free_chunk_rate=fault_free.baseline_chunk_rate if fault_free else None,
    )
    version = rig.settings.queue.config_version
    good_ids = {default_id(str(path), version) for path in rig.good}
    dead = {i.id for i in rig.queue.items(ids) if i.state == "dead"}
    return Outcome(
        report=report,
        history=rig.root / "history",
        faults=struck,
        good_dead=sorted(dead & good_ids),
        settled=settled,
        seconds=time.monotonic() - started,
        two_drivers_max_s=rig.two_drivers_max_s,
        requeued_s=requeued,
        partial_batches=rig.partial_batches,
    )


def _enqueue(rig: Rig, paths: Sequence[Path]) -> list[str]:
    try:
        ids = rig.queue.enqueue([str(p) for p in paths])
    except Exception as exc:
        version = rig.settings.queue.config_version
        for p in paths:  # the outcome unknown: each may or may not exist
            rig.history.write(Enqueue(id=default_id(str(p), version), ok=None, reason=str(exc)))
        raise
    for i in ids:
        rig.history.write(Enqueue(id=i, ok=True))
    return ids


def _references(rig: Rig) -> list[Reference]:
    """The fault-free outputs of the good videos: the model in this process, on the
    pipeline's chunks. Keyed by the ids enqueue will give them (a path's id)."""
    model = load_model(reference_model(rig.settings))
    chunk_frames = rig.settings.pipeline.chunk_frames
    version = rig.settings.queue.config_version
    out: list[Reference] = []
    for path in rig.good:
        item_id = default_id(str(path), version)  # the id its enqueue gives it
        decoder = open_decoder(path, Sampling())
        rows = []
        for chunk in chunks(decoder, Sampling(), chunk_frames):
            got = record_rows(
                model.predict(chunk.images, chunk.source_size), chunk.frame_indices, chunk.pts_s
            )
            out.append(Reference(id=item_id, chunk=chunk.index, digest=digest(got)))
            rows += got
        decoder.close()
        out.append(Reference(id=item_id, digest=digest(sorted(rows))))
    return out


def _progress(rig: Rig, ids: list[str]) -> tuple[int, int]:
    """(items done or dead, chunks checkpointed): what changes as the fleet works."""
    items = rig.queue.items(ids)
    settled = sum(1 for i in items if i.state in ("done", "dead"))
    return settled, sum(i.chunks_done for i in items)


def _moved_on(rig: Rig, ids: list[str], before: tuple[int, int]) -> bool:
    """Progress since `before`, or nothing left to do."""
    return _progress(rig, ids) != before or rig.ids_settled(ids + rig.extra_ids)


def _some_progress(rig: Rig) -> bool:
    return any(i.chunks_done for i in rig.queue.items_in("leased")) or bool(
        rig.queue.items_in("done", limit=1)
    )


def _requeued(rig: Rig) -> dict[float, float | None]:
    """For each fault on a worker that held videos: until all were back in the queue, from
    the queue's own item events (given back, lease lost), the first after the fault. A
    figure, not a verdict: the checker judges from the workers' records alone."""
    events = read(rig.root / "history").events
    out: dict[float, float | None] = {}
    for fault in figures.fault_starts(events):
        back: list[float | None] = []
        for item_id in figures.held(events, fault):
            told = [e for e in rig.queue.events(item_id) if e["at"] / 1000 >= fault.t]
            first = next((e for e in told if e["what"] in (*BACK, *ENDED)), None)
            if first is None:
                back.append(None)
            elif first["what"] in BACK:
                back.append(first["at"] / 1000 - fault.t)
            # else finished by its holder before it could go back: nothing to redeliver
        if back:
            out[fault.t] = None if None in back else max(b for b in back if b is not None)
    return out


def _observe(rig: Rig, ids: list[str]) -> None:
    """The final state of every item the queue holds (the run's, and any other: none is
    expected), and every output present (outputs_present)."""
    written: dict[str, int] = {}  # chunk key -> the epoch whose recorded write made it
    for e in read(rig.root / "history").events:
        if isinstance(e, ChunkWritten):
            written.setdefault(e.key, e.epoch)
    store = OutputStore(rig.settings.pipeline.out, rig.settings.source)
    held, videos = outputs_present(rig.queue, store, ids)
    for item in held:
        rig.history.write(FinalState(id=item.id, state=item.state))
    for item_id, video in videos:
        manifest = store.read_manifest(video)
        epoch = int(manifest.get("epoch", 0))
        rig.history.write(
            FinalOutput(id=item_id, epoch=epoch, digest=table_digest(store.read_detections(video)))
        )
        present = set(store.keys_under(video + "/"))
        for index in range(int(manifest.get("chunks", 0))):
            key = f"{video}/{chunk_name(index)}"
            if key not in present:
                continue
            table = store.read_chunk(video, index)
            rig.history.write(
                FinalOutput(
                    id=item_id, chunk=index, epoch=written.get(key), digest=table_digest(table)
                )
            )


def outputs_present(
    queue: Queue, store: OutputStore, ids: Sequence[str]
) -> tuple[list[Item], list[tuple[str, str]]]:
    """The items the queue holds (the run's `ids` and any other), and the outputs present,
    as (id, the prefix of one version): of those items, by their results, and of the run's
    items that retention has purged from the queue since (a soak's), found under the item's
    folder by their manifests (the checker still compares them)."""
    every = dict.fromkeys(ids)
    for state in ("queued", "delayed", "leased", "done", "dead"):
        offset = 0
        while page := queue.items_in(state, offset, 1000):
            every.update(dict.fromkeys(item.id for item in page))
            offset += len(page)
    held = queue.items(list(every))
    videos: list[tuple[str, str]] = []
    for item in held:
        video = store.video_of(item.result) if item.result else None
        if video is not None:
            videos.append((item.id, video))
    purged = set(every) - {item.id for item in held}
    for item_id in sorted(purged):
        for key in store.keys_under(item_dir(item_id) + "/"):
            if key.endswith("/" + MANIFEST):
                videos.append((item_id, key[: -len(MANIFEST) - 1]))
    return held, videos


def _pause(rig: Rig, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        rig.keep_coordinators()
        time.sleep(min(0.5, max(0.0, end - time.monotonic())))


def _until(predicate: Any, timeout: float, rig: Rig) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        rig.keep_coordinators()
        try:
            if predicate():
                return True
        except Exception:  # Valkey restarting (a fault may still be ending)
            pass
        time.sleep(0.5)
    return False


def _wait(predicate: Any, timeout: float, what: str, rig: Rig) -> None:
    if not _until(predicate, timeout, rig):
        logs = sorted((rig.root / "logs").glob("coordinator*.log"))
        tail = logs[-1].read_text(errors="replace")[-3000:] if logs else ""
        raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}\n{tail}")
