"""The chaos suite's history and checker on hand-made histories (framefleet/chaos)."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import threading
from collections.abc import Iterable
from pathlib import Path

import pytest

from framefleet.chaos import checker, figures
from framefleet.chaos.checker import check
from framefleet.chaos.events import (
    EVENT_TYPES,
    Ack,
    Checkpoint,
    ChunkWritten,
    Claim,
    Dead,
    Decoded,
    Enqueue,
    Event,
    Fail,
    Fault,
    FinalOutput,
    FinalState,
    Header,
    HistoryError,
    Phase,
    Reference,
    Release,
)
from framefleet.chaos.history import HistoryWriter, dump, read
from framefleet.queue.model import State, Verdict

IDS = ("v0", "v1", "v2")


def processed(item: str, epoch: int, t: float, *, chunk_digest: str = "") -> list[Event]:
    """One lease of an item, from its claim to its ok ack: one chunk, whole output D<id>."""
    return [
        Claim(t=t, id=item, epoch=epoch, worker="w1", token=f"tok{epoch}"),
        ChunkWritten(
            t=t + 0.1,
            id=item,
            chunk=0,
            epoch=epoch,
            key=f"{item}/c0",
            digest=chunk_digest or f"d{item}",
            frames=8,
        ),
        Checkpoint(t=t + 0.2, id=item, chunks=(0,), epoch=epoch, ok=True),
        Ack(t=t + 0.3, id=item, epoch=epoch, verdict=Verdict.OK, digest=f"D{item}"),
    ]


def ending(item: str, epoch: int, state: State = State.DONE) -> list[Event]:
    """What the harness observes at the end of a good run for one item, and the references."""
    return [
        FinalState(t=100.0, id=item, state=state),
        FinalOutput(t=100.0, id=item, epoch=epoch, digest=f"D{item}"),
        FinalOutput(t=100.0, id=item, epoch=epoch, digest=f"d{item}", chunk=0),
        Reference(t=100.0, id=item, digest=f"D{item}"),
        Reference(t=100.0, id=item, digest=f"d{item}", chunk=0),
    ]


def clean_run() -> list[Event]:
    events: list[Event] = [Header(t=0.0, seed=7, faults=({"kind": "kill", "at": 3.0},))]
    for k, item in enumerate(IDS):
        events.append(Enqueue(t=1.0 + k / 10, id=item, ok=True))
        events += processed(item, 10 * (k + 1), 2.0 + k)  # epochs 10, 20, 30
        events += ending(item, 10 * (k + 1))
    return events


def without(events: Iterable[Event], item: str, *types: type[Event]) -> list[Event]:
    return [e for e in events if not (getattr(e, "id", None) == item and isinstance(e, types))]


def only(report: checker.Report, anomaly: str, ids: tuple[str, ...]) -> None:
    """The report holds exactly this anomaly, for exactly these ids."""
    want = {name: 0 for name in checker.ANOMALIES} | {anomaly: len(ids)}
    assert report.counts == want, report
    assert getattr(report, anomaly) == ids
    assert not report.valid


def test_a_clean_run_is_valid() -> None:
    report = check(clean_run())
    assert report.valid, report
    assert (report.enqueued, report.finished, report.dead) == (3, 3, 0)


def test_an_item_the_queue_forgot_before_it_was_done_is_lost() -> None:
    events = without(clean_run(), "v1", Ack, FinalState, FinalOutput)
    only(check(events), "lost", ("v1",))


def test_work_on_an_id_never_enqueued_is_unexpected() -> None:
    events = [*clean_run(), *processed("ghost", 9, 5.0)]
    only(check(events), "unexpected", ("ghost",))


def test_an_item_the_queue_holds_after_refusing_it_is_unexpected() -> None:
    events = [
        *clean_run(),
        Enqueue(t=1.5, id="refused", ok=False, reason="queue full"),
        FinalState(t=100.0, id="refused", state=State.QUEUED),
    ]
    only(check(events), "unexpected", ("refused",))


def test_two_ok_acks_for_one_id_is_acked_twice() -> None:
    events = [*clean_run(), *processed("v1", 90, 10.0)]  # a later lease, paid for again
    only(check(events), "acked_twice", ("v1",))


def test_a_chunk_left_by_an_older_epoch_that_differs_is_a_stale_write_visible() -> None:
    # v1's lease 15 wrote chunk 0, lease 20 wrote it again and was acked; the file left is
    # lease 15's, and its detections differ. No reference, so only the stale check sees it.
    events = without(clean_run(), "v1", Reference, FinalOutput)
    events += processed("v1", 15, 1.5, chunk_digest="dv1-zombie")[:2]  # claim, write
    events.append(FinalOutput(t=100.0, id="v1", epoch=20, digest="Dv1"))
    events.append(FinalOutput(t=100.0, id="v1", epoch=15, digest="dv1-zombie", chunk=0))
    only(check(events), "stale_visible", ("v1",))


def test_a_whole_output_from_an_older_epoch_unlike_the_acked_one_is_stale_visible() -> None:
    events = without(clean_run(), "v2", Reference, FinalOutput)
    events.append(FinalOutput(t=100.0, id="v2", epoch=25, digest="Dv2-old"))
    only(check(events), "stale_visible", ("v2",))


def test_an_older_epochs_output_equal_to_the_acked_one_is_not_stale() -> None:
    events = clean_run()
    events.append(FinalOutput(t=100.0, id="v2", epoch=25, digest="Dv2"))
    events.append(FinalOutput(t=100.0, id="v2", epoch=25, digest="dv2", chunk=0))
    assert check(events).valid


def test_a_chunk_adopted_from_an_older_epoch_is_not_stale() -> None:
    # lease 30 resumed from lease 25's checkpoint: it never wrote chunk 0 itself
    events = without(clean_run(), "v2", ChunkWritten, FinalOutput)
    events.append(FinalOutput(t=100.0, id="v2", epoch=30, digest="Dv2"))
    events.append(FinalOutput(t=100.0, id="v2", epoch=25, digest="dv2", chunk=0))
    assert check(events).valid


def test_an_output_unlike_the_fault_free_runs_differs() -> None:
    events = without(clean_run(), "v0", FinalOutput)
    events.append(FinalOutput(t=100.0, id="v0", epoch=10, digest="Dv0-other"))
    events.append(FinalOutput(t=100.0, id="v0", epoch=10, digest="dv0", chunk=0))
    only(check(events), "differs", ("v0",))


def test_a_finished_items_missing_output_differs() -> None:
    events = [
        e for e in clean_run() if not (isinstance(e, FinalOutput) and e.id == "v2" and e.chunk == 0)
    ]
    only(check(events), "differs", ("v2",))


def test_an_item_still_queued_at_the_end_is_stuck() -> None:
    events = without(clean_run(), "v0", Ack, FinalState, FinalOutput)
    events.append(FinalState(t=100.0, id="v0", state=State.QUEUED))
    only(check(events), "stuck", ("v0",))


def test_an_acked_item_the_queue_still_leases_is_stuck() -> None:
    events = without(clean_run(), "v0", FinalState)
    events.append(FinalState(t=100.0, id="v0", state=State.LEASED))
    only(check(events), "stuck", ("v0",))


def test_a_duplicate_ack_verdict_is_not_a_second_success() -> None:
    events = [*clean_run(), Ack(t=2.4, id="v0", epoch=10, verdict=Verdict.DUPLICATE)]
    assert check(events).valid


def test_a_duplicate_verdict_alone_is_acknowledged() -> None:
    # the first ack succeeded but its reply was lost; the retry says duplicate
    events = [
        Ack(t=e.t, id=e.id, epoch=e.epoch, verdict=Verdict.DUPLICATE)
        if isinstance(e, Ack) and e.id == "v0"
        else e
        for e in without(clean_run(), "v0", FinalState)
    ]
    report = check(events)
    assert report.valid, report
    assert report.finished == 3


@pytest.mark.parametrize("verdict", [Verdict.STALE, Verdict.LOST, Verdict.MISSING])
def test_a_refused_ack_is_not_a_success(verdict: Verdict) -> None:
    events = without(clean_run(), "v1", Ack, FinalState, FinalOutput)
    events.append(Ack(t=3.3, id="v1", epoch=20, verdict=verdict, digest="Dv1"))
    only(check(events), "lost", ("v1",))
    # nor a second success beside an ok one
    assert check([*clean_run(), Ack(t=9.0, id="v1", epoch=15, verdict=verdict)]).valid


def test_an_id_enqueued_twice_is_one_id() -> None:
    events = [*clean_run(), Enqueue(t=1.9, id="v0", ok=True, reason="exists")]
    report = check(events)
    assert report.valid, report
    assert report.enqueued == 3


def test_a_refused_enqueue_never_done_is_not_lost() -> None:
    events = [*clean_run(), Enqueue(t=1.5, id="bad", ok=False, reason="invalid uri")]
    report = check(events)
    assert report.valid, report
    assert report.enqueued == 3


def test_an_enqueue_of_unknown_outcome_may_or_may_not_exist() -> None:
    gone = [*clean_run(), Enqueue(t=1.5, id="maybe", ok=None, reason="timeout")]
    assert check(gone).valid
    done = [*gone, *processed("maybe", 8, 6.0), FinalState(t=100.0, id="maybe", state=State.DONE)]
    assert check(done).valid


def test_a_dead_item_is_neither_lost_nor_stuck() -> None:
    dead = [
        *without(clean_run(), "v1", Ack, FinalState, FinalOutput),
        Fail(t=3.3, id="v1", epoch=20, retryable=False, reason="not a video"),
        Dead(t=3.4, id="v1", cls="not_a_video", reason="no video stream"),
    ]
    report = check([*dead, FinalState(t=100.0, id="v1", state=State.DEAD)])
    assert report.valid, report
    assert report.dead == 1
    assert check(dead).valid  # purged by retention afterwards: still not lost


def test_events_out_of_order_are_judged_in_time_order() -> None:
    assert check(list(reversed(clean_run()))).valid


def test_a_fault_with_no_ack_after_it_has_no_recovery() -> None:
    events = [*clean_run(), Fault(t=50.0, kind="kill_actor", target="decode-0")]
    (recovery,) = check(events).recoveries
    assert (recovery.to_ack_s, recovery.to_rate_s, recovery.lasted_s) == (None, None, None)


def steady_acks(start: float, stop: float, tag: str) -> list[Event]:
    """An enqueued item acked every second from start to stop (both included)."""
    out: list[Event] = []
    for k in range(int(stop - start) + 1):
        item = f"{tag}{k}"
        out += [
            Enqueue(t=1.0, id=item, ok=True),
            Ack(t=start + k, id=item, epoch=1, verdict=Verdict.OK),
            FinalState(t=100.0, id=item, state=State.DONE),
        ]
    return out


def test_recovery_to_the_next_ack_and_to_90_percent_of_the_fault_free_rate() -> None:
    events: list[Event] = [Header(t=0.0), *steady_acks(10.0, 29.0, "a")]
    events += [
        Fault(t=30.0, kind="partition", target="redis"),
        Fault(t=33.0, kind="partition", target="redis", phase=Phase.END),
        *steady_acks(40.0, 60.0, "b"),
    ]
    report = check(events)
    assert report.valid
    assert report.baseline_rate == pytest.approx(1.0)  # 19 gaps in 19 s before the fault
    (r,) = report.recoveries
    assert (r.kind, r.target, r.at, r.lasted_s, r.to_ack_s) == ("partition", "redis", 30, 3, 10)
    # window 10 s, 9 acks needed: (38, 48] is the first to hold them
    assert r.to_rate_s == pytest.approx(8.0)
    # a given fault-free rate twice as fast is never reached again
    (r2,) = check(events, fault_free_rate=2.0).recoveries
    assert r2.to_rate_s is None and r2.to_ack_s == 10
    # a short window: (39, 40] holds the one ack it needs
    (r3,) = check(events, window_s=1.0).recoveries
    assert r3.to_rate_s == pytest.approx(9.0)
    assert r.to_progress_s is None  # no checkpoint in this history
    saved = [
        Checkpoint(t=31.0, id="b0", chunks=(0,), epoch=1, ok=False),  # refused: not progress
        Checkpoint(t=34.5, id="b0", chunks=(1,), epoch=1, ok=True),
    ]
    (r4,) = check([*events, *saved]).recoveries
    assert r4.to_progress_s == pytest.approx(4.5)


def test_recovery_to_90_percent_of_the_fault_free_chunk_rate() -> None:
    """A run too short for ten acks in a window (one video here) still says when its
    throughput came back: by the chunks made durable, each chunk of a checkpoint counted."""
    events: list[Event] = [Header(t=0.0), Enqueue(t=1.0, id="v", ok=True)]
    events += [  # one chunk every 0.25 s: 4 a second
        Checkpoint(t=10.0 + k * 0.25, id="v", chunks=(k,), epoch=1, ok=True) for k in range(80)
    ]
    events += [
        Fault(t=30.0, kind="kill_inference", target="inference-1"),
        Checkpoint(t=31.0, id="v", chunks=(80, 81), epoch=1, ok=False),  # refused
    ]
    events += [  # two a second from 36, then four (in checkpoints of two) from 40
        Checkpoint(t=36.0 + k, id="v", chunks=(82 + 2 * k, 83 + 2 * k), epoch=1, ok=True)
        for k in range(4)
    ]
    events += [
        Checkpoint(t=40.0 + k * 0.5, id="v", chunks=(90 + 2 * k, 91 + 2 * k), epoch=1, ok=True)
        for k in range(20)
    ]
    events += [
        Ack(t=50.0, id="v", epoch=1, verdict=Verdict.OK),
        FinalState(t=60.0, id="v", state=State.DONE),
    ]
    report = check(events)
    assert report.valid
    assert report.baseline_chunk_rate == pytest.approx(4.0)  # 79 gaps in 19.75 s
    (r,) = report.recoveries
    assert r.to_rate_s is None  # one ack: no window of ten
    # window 10 s (40 chunks at 4 a second), 36 needed: (37, 47] holds 34, (37.5, 47.5] 36
    assert r.to_chunk_rate_s == pytest.approx(7.5)
    assert r.to_progress_s == pytest.approx(6.0)
    # a given fault-free chunk rate twice as fast is never reached again
    (r2,) = check(events, fault_free_chunk_rate=8.0).recoveries
    assert r2.to_chunk_rate_s is None
    assert "to 90% - s (acks) 7.50 s (chunks)" in checker.render(report, 0)


def test_a_dip_that_comes_later_than_the_window_is_still_the_faults() -> None:
    """A head killed: its worker node's actors go on for seconds, then end. With a short
    window the first one after the fault is full; the recovery is from the dip after it,
    not 0."""
    steady = [10.0 + k * 0.25 for k in range(80)]  # 4 a second: the baseline
    after = [30.0 + k * 0.25 for k in range(20)]  # going on until 34.75
    back = [40.0 + k * 0.25 for k in range(80)]  # then nothing until 40
    events: list[Event] = [
        Ack(t=t, id=f"v{k}", epoch=1, verdict=Verdict.OK)
        for k, t in enumerate([*steady, *after, *back])
    ]
    events.append(Fault(t=30.0, kind="kill_head", target="head"))
    (r,) = check(events, window_s=1.0).recoveries
    # (30, 31] holds its 4; (34, 35] only 3: the dip; (39.75, 40.75] holds 4 again
    assert r.to_rate_s == pytest.approx(9.75)
    slow = [40.0 + k * 0.5 for k in range(40)]  # back at half the rate only
    events = [
        Ack(t=t, id=f"v{k}", epoch=1, verdict=Verdict.OK)
        for k, t in enumerate([*steady, *after, *slow])
    ]
    report = check([*events, Fault(t=30.0, kind="kill_head", target="head")], window_s=1.0)
    assert report.recoveries[0].to_rate_s is None


def test_a_fault_that_cost_nothing_recovers_at_once() -> None:
    events = [*steady_acks(10.0, 60.0, "a"), Fault(t=30.5, kind="sigstop", target="w")]
    (r,) = check(events).recoveries
    assert r.to_ack_s == pytest.approx(0.5)
    assert r.to_rate_s == 0


def test_rework_counts_chunks_written_again_and_under_several_epochs() -> None:
    def write(chunk: int, epoch: int, frames: int | None = 8) -> ChunkWritten:
        return ChunkWritten(
            t=2.0 + epoch, id="v0", chunk=chunk, epoch=epoch, key="k", digest="d", frames=frames
        )

    events = [*clean_run(), write(1, 1), write(1, 1), write(1, 2), write(2, 2, None)]
    rework = check(events).rework
    # clean_run wrote (v0..v2, 0) once each; (v0, 1) three times under epochs 1 and 2
    assert (rework.writes, rework.chunks, rework.rewrites) == (7, 5, 2)
    assert (rework.frames_rewritten, rework.multi_epoch) == (16, 1)
    assert check(clean_run()).rework.rewrites == 0


def test_redelivery_is_until_every_item_the_struck_workers_held_is_claimed_again() -> None:
    def claim(t: float, item: str, epoch: int, worker: str) -> Claim:
        return Claim(t=t, id=item, epoch=epoch, worker=worker, token=f"{item}{epoch}")

    kill = Fault(t=10.0, kind="kill_decoder", target="decoder-g-1")
    events = [
        claim(1.0, "a", 1, "decoder-g-1"),
        claim(2.0, "b", 1, "decoder-g-1"),
        claim(3.0, "c", 1, "decoder-g-1"),
        Ack(t=4.0, id="c", epoch=1, verdict=Verdict.OK),  # ended before the fault: not held
        kill,
        claim(12.5, "a", 2, "decoder-g-2"),
        claim(13.0, "a", 3, "decoder-g-1"),  # its own name again counts for nothing
        claim(16.0, "b", 2, "decoder-g-2"),
    ]
    (r,) = check(events).recoveries
    assert r.redelivered_s == pytest.approx(6.0)
    (r,) = check(events[:-1]).recoveries  # b never claimed again
    assert r.redelivered_s is None
    # A fault of the head, the worker node or the leader's driver ends every worker: what
    # each held counts (a and b here, each claimed again after it).
    for kind, target in [("kill_head", "head"), ("kill_raylet", "worker0")]:
        node = Fault(t=10.0, kind=kind, target=target)
        (r,) = check([*events[:4], node, *events[5:]]).recoveries
        assert r.redelivered_s == pytest.approx(6.0)
    # What an earlier fault struck is no longer held at the next one (the queue took it
    # back, which no worker records): a second kill of the node finds a and b held again
    # only once claimed again, by the workers that came after.
    first, second = (Fault(t=t, kind="kill_raylet", target="worker0") for t in (10.0, 14.0))
    again = sorted([*events[:4], first, *events[5:], second], key=lambda e: e.t)
    held_at = {r.at: r.redelivered_s for r in check(again).recoveries}
    assert held_at[14.0] is None  # a, claimed again at 13.0, never claimed after 14.0
    assert figures.held(again, second) == {"a": 3}
    assert figures.held(again, first) == {"a": 1, "b": 1}
    other = Fault(t=10.0, kind="partition", target="fleet-redis")
    (r,) = check([*events[:4], other, *events[5:]]).recoveries
    assert r.redelivered_s is None  # no worker named: nothing held


def test_rework_counts_the_frames_decoded_again_written_or_not() -> None:
    def decoded(chunk: int, epoch: int, frames: int = 8) -> Decoded:
        return Decoded(t=2.0 + epoch, id="v0", chunk=chunk, epoch=epoch, frames=frames)

    # chunk 1 decoded under epoch 1 (its worker killed before the write), then again under
    # epoch 2 with chunk 2 (5 frames, the last), and chunk 2 a third time by a zombie
    events = [*clean_run(), decoded(1, 1), decoded(1, 2), decoded(2, 2, 5), decoded(2, 1, 5)]
    rework = check(events).rework
    assert (rework.decodes, rework.redecodes, rework.frames_redecoded) == (4, 2, 13)
    assert check(clean_run()).rework.redecodes == 0


def test_goodput_is_distinct_items_acked_per_second_of_the_run() -> None:
    events = [*clean_run(), *processed("v0", 9, 3.0)[3:]]  # v0 acked twice: counted once
    g = check(events, fault_free_goodput=0.5).goodput
    assert g.acked == 3
    assert g.seconds == pytest.approx(4.3)  # from the header at 0 to the last ack at 4.3
    assert g.per_s == pytest.approx(3 / 4.3)
    assert g.ratio == pytest.approx(3 / 4.3 / 0.5)


def every_event() -> list[Event]:
    return [
        *clean_run(),
        Enqueue(t=1.0, id="x", ok=None, reason="timeout"),
        Decoded(t=4.2, id="x", chunk=0, epoch=3, frames=8),
        Fail(t=5.0, id="x", epoch=3, retryable=True, reason="oom", verdict=Verdict.STALE),
        Release(t=5.5, id="x", epoch=3, reason="shutdown"),
        Dead(t=6.0, id="x", cls="poison", reason="crashed 3 workers"),
        Fault(t=4.0, kind="kill_actor", target="infer-1", seed=11),
        Fault(t=4.5, kind="kill_actor", target="infer-1", phase=Phase.END),
    ]


def test_a_history_reads_back_as_written_sorted_by_time(tmp_path: Path) -> None:
    events = every_event()
    with HistoryWriter(tmp_path / "h", by="harness") as writer:
        written = [writer.write(e) for e in events]
    history = read(tmp_path / "h")
    assert history.torn == []
    assert history.events == sorted(written, key=lambda e: e.t)
    assert {e.by for e in history.events} == {"harness"}
    assert {type(e) for e in events} == set(EVENT_TYPES.values())  # every kind of event
    assert {json.loads(e.to_json())["type"] for e in events} == set(EVENT_TYPES)
    dump(history.events, tmp_path / "one.jsonl")
    assert read(tmp_path / "one.jsonl").events == history.events


def test_the_writer_clips_long_reasons(tmp_path: Path) -> None:
    writer = HistoryWriter(tmp_path)
    event = writer.write(Fail(id="x", epoch=1, retryable=False, reason="e" * 10_000))
    writer.close()
    assert isinstance(event, Fail) and len(event.reason) == 500
    assert event.by == f"{socket.gethostname()}:{os.getpid()}"
    assert read(tmp_path).events == [event]


def test_a_torn_last_line_is_skipped_and_a_bad_line_anywhere_else_is_an_error(
    tmp_path: Path,
) -> None:
    line = Enqueue(t=1.0, id="a", ok=True).to_json()
    (tmp_path / "p1.jsonl").write_text(line + "\n" + line[:20])
    history = read(tmp_path)
    assert (len(history.events), history.torn) == (1, ["p1.jsonl:2"])
    (tmp_path / "p2.jsonl").write_text(line[:20] + "\n" + line + "\n")
    with pytest.raises(HistoryError, match=r"p2\.jsonl:1"):
        read(tmp_path)
    for bad in ('{"type": "nope", "t": 1}', '{"type": "enqueue", "id": "a", "ok": true}'):
        (tmp_path / "p2.jsonl").write_text(bad + "\n")
        with pytest.raises(HistoryError):
            read(tmp_path)
    # a kill that cut a line inside a character: still a torn last line, skipped
    (tmp_path / "p2.jsonl").unlink()
    wide = Enqueue(t=2.0, id="b", ok=None, reason="caméra ½").to_json().encode()
    cut = wide[: wide.index("½".encode()) + 1]
    (tmp_path / "p3.jsonl").write_bytes(line.encode() + b"\n" + cut)
    assert read(tmp_path).torn == ["p1.jsonl:2", "p3.jsonl:2"]


def append_many(folder: str, tag: str, threads: int, each: int) -> None:
    """Appends threads x each events to one writer of its own."""
    writer = HistoryWriter(folder, by=tag)

    def run(n: int) -> None:
        for k in range(each):
            writer.write(Enqueue(id=f"{tag}-{n}-{k}", ok=True, reason="x" * (k % 300)))

    pool = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    writer.close()


def assert_all_there(folder: Path, tags: Iterable[str], threads: int, each: int) -> None:
    history = read(folder)
    assert history.torn == []
    got = sorted(e.id for e in history.events if isinstance(e, Enqueue))
    want = sorted(f"{tag}-{n}-{k}" for tag in tags for n in range(threads) for k in range(each))
    assert got == want


def test_the_writer_keeps_every_line_whole_from_many_threads(tmp_path: Path) -> None:
    append_many(str(tmp_path), "p", threads=8, each=250)
    assert_all_there(tmp_path, ["p"], threads=8, each=250)
    assert len(list(tmp_path.glob("*.jsonl"))) == 1


def test_the_writer_keeps_every_line_whole_from_many_processes(tmp_path: Path) -> None:
    # fork: a spawned child imports framefleet again, minutes on a loaded machine
    ctx = multiprocessing.get_context("fork")
    tags = [f"p{n}" for n in range(4)]
    procs = [ctx.Process(target=append_many, args=(str(tmp_path), t, 3, 150)) for t in tags]
    for p in procs:
        p.start()
    for p in procs:
        p.join()  # within the test's timeout
        assert p.exitcode == 0
    assert_all_there(tmp_path, tags, threads=3, each=150)
    assert len(list(tmp_path.glob("*.jsonl"))) == 4  # one file a process


def test_a_forked_child_writes_its_own_file(tmp_path: Path) -> None:
    writer = HistoryWriter(tmp_path)
    writer.write(Enqueue(id="parent-1", ok=True))
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=lambda: writer.write(Enqueue(id="child", ok=True)))
    child.start()
    child.join()
    assert child.exitcode == 0
    writer.write(Enqueue(id="parent-2", ok=True))
    writer.close()
    files = {p.read_text().count("\n"): p for p in tmp_path.glob("*.jsonl")}
    assert sorted(files) == [1, 2]
    assert "child" in files[1].read_text() and "child" not in files[2].read_text()
    by = {e.id: e.by for e in read(tmp_path).events if isinstance(e, Enqueue)}
    assert by["child"] != by["parent-1"] == by["parent-2"]


def test_main_prints_a_table_and_exits_1_when_invalid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dump(clean_run(), tmp_path / "good.jsonl")
    assert checker.main([str(tmp_path / "good.jsonl")]) == 0
    assert "valid: yes" in capsys.readouterr().out
    dump([*clean_run(), *processed("ghost", 9, 5.0)], tmp_path / "bad.jsonl")
    assert checker.main([str(tmp_path / "bad.jsonl"), "--rate", "1"]) == 1
    out = capsys.readouterr().out
    assert "valid: NO" in out and "unexpected" in out and "ghost" in out
    (tmp_path / "broken.jsonl").write_text("{\n{\n")
    assert checker.main([str(tmp_path / "broken.jsonl")]) == 2


def lossy(events: list[Event], fsync: str = "everysec") -> list[Event]:
    """The same run, its header saying Redis fsyncs its AOF `fsync`."""
    header = Header(t=0.0, settings={"appendfsync": fsync})
    return [header, *(e for e in events if not isinstance(e, Header))]


def test_under_everysec_an_ack_redis_lost_and_done_again_is_redone_not_acked_twice() -> None:
    kill = Fault(t=2.8, kind="kill_redis", target="valkey")  # 0.5 s after v0's ack at 2.3
    again = processed("v0", 11, 20.0)  # the item back from the lost ack: done again
    events = [*clean_run(), kill, *again]
    report = check(lossy(events))
    assert report.valid and report.redone == ("v0",) and report.acked_twice == ()
    # with appendfsync always, nothing acknowledged may be lost: the same history is invalid
    only(check(lossy(events, "always")), "acked_twice", ("v0",))
    # a kill long after the first ack explains nothing
    late = Fault(t=9.0, kind="kill_redis", target="valkey")
    only(check(lossy([*clean_run(), late, *again])), "acked_twice", ("v0",))
    # nor does a kill after the second ack
    only(check(lossy([*clean_run(), *again, Fault(t=20.5, kind="kill_redis", target="r")])),
         "acked_twice", ("v0",))  # fmt: skip


def test_under_everysec_an_enqueue_redis_lost_is_unsynced_not_lost() -> None:
    events = without(clean_run(), "v1", Claim, ChunkWritten, Checkpoint, Ack, FinalState)
    events = without(events, "v1", FinalOutput, Reference)
    kill = Fault(t=1.5, kind="kill_redis", target="valkey")  # v1 enqueued at 1.1
    report = check(lossy([*events, kill]))
    assert report.valid and report.unsynced == ("v1",) and report.lost == ()
    only(check(lossy([*events, kill], "always")), "lost", ("v1",))
    only(check(lossy(events)), "lost", ("v1",))  # no kill: lost


def test_a_duplicate_under_another_epoch_is_a_second_success() -> None:
    """Epoch 11's own ok reply was lost and its retry said duplicate: two leases paid."""
    late = Ack(t=9.0, id="v0", epoch=11, verdict=Verdict.DUPLICATE)
    only(check([*clean_run(), late]), "acked_twice", ("v0",))
    same = Ack(t=9.0, id="v0", epoch=10, verdict=Verdict.DUPLICATE)  # a retry of the ok one
    assert check([*clean_run(), same]).valid


def test_an_item_dead_in_the_queue_counts_dead_without_a_dead_event() -> None:
    events = without(clean_run(), "v2", Ack, FinalOutput, Reference)
    events = [e for e in events if not (isinstance(e, FinalState) and e.id == "v2")]
    events.append(FinalState(t=100.0, id="v2", state=State.DEAD))  # poisoned by the sweep
    report = check(events)
    assert report.valid and report.dead == 1


def test_a_finished_item_gone_within_its_retention_is_lost() -> None:
    """Acknowledged, then no longer in the queue: purged by retention only if the run lasted
    longer than the retention its header names; otherwise the queue lost it."""
    events = [e for e in clean_run() if not (isinstance(e, FinalState) and e.id == "v1")]
    events = without(events, "v1", FinalOutput, Reference)
    assert check(events).valid  # no retention named: it may have been purged
    header = Header(t=0.0, settings={"retention_s": 3600.0})
    kept = [header, *(e for e in events if not isinstance(e, Header))]
    only(check(kept), "lost", ("v1",))
    short = Header(t=0.0, settings={"retention_s": 5.0})  # the run lasted 100 s
    assert check([short, *(e for e in events if not isinstance(e, Header))]).valid


def test_an_item_whose_ack_had_an_unknown_outcome_may_have_been_purged() -> None:
    """The soak's one false 'lost': an ack sent as the network was cut raised in its worker
    (no verdict), yet reached Redis when the cut healed; the item was done, and retention
    purged it. A purged item whose ack may have succeeded is not lost; one whose every ack
    was refused is."""
    short = Header(t=0.0, settings={"retention_s": 5.0})  # the run lasted 100 s
    events = [short, *(e for e in clean_run() if not isinstance(e, Header))]
    events = [e for e in events if not (isinstance(e, FinalState) and e.id == "v1")]
    events = without(events, "v1", Ack, FinalOutput, Reference)
    unknown = Ack(t=2.3, id="v1", epoch=20, verdict=None)
    assert check([*events, unknown]).valid
    refused = Ack(t=2.3, id="v1", epoch=20, verdict=Verdict.LOST)
    only(check([*events, refused]), "lost", ("v1",))
    only(check(events), "lost", ("v1",))
    assert check([*events, unknown]).finished == 2  # possibly done is not done


def test_an_item_of_unknown_enqueue_left_in_the_queue_is_stuck() -> None:
    events = [
        *clean_run(),
        Enqueue(t=1.0, id="x", ok=None),
        FinalState(t=100.0, id="x", state=State.QUEUED),
    ]
    only(check(events), "stuck", ("x",))


def test_an_output_no_recorded_write_made_is_not_judged_stale() -> None:
    events = [*clean_run(), FinalOutput(t=100.0, id="v0", epoch=None, digest="other", chunk=3)]
    assert check(events).stale_visible == ()
