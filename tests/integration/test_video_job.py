"""One video from lease to ack (the decode actor's state machine), with in-process inference,
against the real queue, real videos, a tiny real DETR and a real output directory."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from redis import Redis

from framefleet.queue import Queue, State
from framefleet.settings import (
    QueueSettings,
    SourceSettings,
)
from framefleet.workers.decode import Chunk, Sampling
from framefleet.workers.errors import TransientError
from framefleet.workers.model import FrameModel
from framefleet.workers.outputs import OutputStore, output_version
from framefleet.workers.pipeline import ChunkDone, LocalInference, Pending, VideoJob
from framefleet.workers.results import shard
from framefleet.workers.sources import local_pin
from tests.conftest import ManualClock
from tests.support.detections import assert_same, direct_run, pipeline_rows
from tests.support.jobs import job_env
from tests.support.videos import write_corrupt, write_video


@pytest.fixture
def env(tmp_path: Path, valkey_client: Redis, model: FrameModel) -> dict[str, Any]:
    return job_env(tmp_path, valkey_client, model)


def test_a_video_is_processed_checkpointed_and_acked(
    env: dict[str, Any], model: FrameModel
) -> None:
    video = write_video(env["videos"] / "a.mp4", frames=30)
    q, store = env["queue"], env["store"]
    [item_id] = q.enqueue([str(video)])
    [lease] = q.claim(1, "decoder-1")
    out = VideoJob(q, store, env["inference"], env["settings"]).run(lease)
    assert (out.status, out.chunks, out.frames) == ("acked", 4, 30)
    item = q.get(item_id)
    assert item is not None and item.state is State.DONE and item.result == out.result
    assert item.chunks_total == 4 and item.chunks_done == 4
    assert item.chunks_expected == 4  # the container's promise, sent with the first chunk
    manifest = store.read_result(item.result or "")
    assert manifest["frames"] == 30 and manifest["chunks"] == 4 and manifest["model"] == model.name
    assert len(pipeline_rows(store, q, item_id)) > 0
    # the configuration it ran with: the hash the output version starts with, which another
    # model or sampling changes
    settings = env["settings"]
    config = settings.pipeline.config_hash(settings.model)
    assert manifest["etag"].startswith("file:")  # the local file's pin: size, mtime, inode
    assert manifest["config_hash"] == config and manifest["version"] == output_version(
        config, manifest["etag"], 0
    )
    assert config != settings.pipeline.config_hash(replace(settings.model, score_threshold=0.5))
    assert manifest["decoder"] == "pyav" and manifest["source_size"] == [96, 64]
    # where the time went: the laps add up to the whole (the rest is the last checkpoint)
    laps = manifest["timings_s"]
    assert set(laps) == {"fetch", "open", "decode_wait", "decode", "submit", "wait", "total"}
    assert all(v >= 0 for v in laps.values()) and laps["decode"] > 0
    parts = sum(v for k, v in laps.items() if k != "total")
    assert parts - 0.01 <= laps["total"] <= parts + 0.25, laps
    # the model's and the writes' own time, at the inference actors (within the laps)
    assert set(manifest["inference_s"]) == {"infer", "write"}
    assert 0 < sum(manifest["inference_s"].values()) <= laps["total"]
    assert_same(pipeline_rows(store, q, item_id), direct_run(model, video, Sampling()))


class Counting:
    """Wraps an Inference: counts submissions, can stop the job after n, can hold results."""

    def __init__(
        self,
        inner: LocalInference,
        stop_after: int | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.inner, self.stop_after, self.stop = inner, stop_after, stop
        self.schema, self.model_name = inner.schema, inner.model_name
        self.submitted: list[int] = []

    def submit(self, item_id: str, video: str, chunk: Chunk) -> Pending:
        self.submitted.append(chunk.index)
        handle = self.inner.submit(item_id, video, chunk)
        if self.stop is not None and len(self.submitted) == self.stop_after:
            self.stop.set()
        return handle


def test_a_stopped_worker_releases_and_the_next_one_resumes(
    env: dict[str, Any], model: FrameModel
) -> None:
    video = write_video(env["videos"] / "b.mp4", frames=40)
    q, store, settings = env["queue"], env["store"], env["settings"]
    [item_id] = q.enqueue([str(video)])
    stop = threading.Event()
    first = Counting(env["inference"], stop_after=2, stop=stop)
    [lease] = q.claim(1, "decoder-1")
    out = VideoJob(q, store, first, settings, stop=stop).run(lease)
    assert out.status == "released"
    item = q.get(item_id)
    assert item is not None and item.state is State.QUEUED and item.attempts == 0
    done_before = q.chunks(item_id)
    # Both chunks it had out were settled and checkpointed, not only the one left in the list.
    assert first.submitted == [0, 1] and done_before == {0, 1}
    pin = local_pin(video)  # what the chunks were made from: the file's size, mtime, inode
    version = output_version(settings.pipeline.config_hash(settings.model), pin, 0)
    assert store.chunks_present(store.video(item_id, version), range(5)) == {0, 1}
    second = Counting(env["inference"])
    [again] = q.claim(1, "decoder-2")
    assert again.chunks_done == frozenset(done_before) and again.pin == pin
    assert VideoJob(q, store, second, settings).run(again).status == "acked"
    assert set(second.submitted) == set(range(5)) - done_before  # checkpointed chunks skipped
    assert_same(pipeline_rows(store, q, item_id), direct_run(model, video, Sampling()))


def test_an_item_trimmed_after_its_retention_is_acked_again_without_rework(
    env: dict[str, Any], valkey_client: Redis
) -> None:
    """Its output manifest is the proof that it is done: enqueued again after the queue
    deleted it, it is acked as already-done, nothing decoded or inferred. An enqueue with
    force, by contrast, makes a new revision that is processed again (its own version)."""
    video = write_video(env["videos"] / "c.mp4", frames=10)
    store, settings = env["store"], env["settings"]
    q = Queue(valkey_client, replace(settings.queue, done_ttl_s=0.001))
    [item_id] = q.enqueue([str(video)])
    [lease] = q.claim(1, "decoder-1")
    first = VideoJob(q, store, env["inference"], settings).run(lease)
    time.sleep(0.01)
    q.sweep()
    assert q.get(item_id) is None  # trimmed
    assert q.enqueue([str(video)]) == [item_id]
    [again] = q.claim(1, "decoder-2")
    counting = Counting(env["inference"])
    out = VideoJob(q, store, counting, settings).run(again)
    assert out.status == "already-done" and counting.submitted == []
    assert out.result == first.result and q.get(item_id).state is State.DONE  # type: ignore[union-attr]
    assert q.enqueue([str(video)], force=True) == [item_id]
    [forced] = q.claim(1, "decoder-3")
    out = VideoJob(q, store, counting, settings).run(forced)
    assert out.status == "acked" and counting.submitted == [0, 1]
    assert out.result != first.result and out.result.endswith("-r1/_manifest.json")


def test_a_revision_outlives_the_items_retention_and_purge(
    env: dict[str, Any], valkey_client: Redis
) -> None:
    """The revision lived only in the item's hash: after retention (or a purge) the next
    enqueue was revision 0 again, and the worker's already-done check answered it with the
    outputs an enqueue with force had superseded. The newest revision outlives the hash."""
    video = write_video(env["videos"] / "r.mp4", frames=10)
    store, settings = env["store"], env["settings"]
    q = Queue(valkey_client, replace(settings.queue, done_ttl_s=0.001))
    counting = Counting(env["inference"])

    def run(worker: str) -> Any:
        [lease] = q.claim(1, worker)
        return VideoJob(q, store, counting, settings).run(lease)

    def trim() -> None:
        time.sleep(0.01)
        q.sweep()

    [item_id] = q.enqueue([str(video)])
    old = run("decoder-1")
    q.enqueue([str(video)], force=True)  # the video is to be done again: revision 1
    forced = run("decoder-2")
    assert forced.status == "acked" and forced.result.endswith("-r1/_manifest.json")
    trim()
    assert q.get(item_id) is None
    q.enqueue([str(video)])  # revision 1 still: its outputs are the answer, not revision 0's
    again = run("decoder-3")
    assert again.status == "already-done" and again.result == forced.result != old.result
    trim()
    q.enqueue([str(video)], force=True)  # forced after retention: a new revision, done anew
    before = len(counting.submitted)
    fresh = run("decoder-4")
    assert fresh.status == "acked" and len(counting.submitted) > before
    assert fresh.result.endswith("-r2/_manifest.json")


def test_bad_videos_go_dead_with_their_reason(env: dict[str, Any], tmp_path: Path) -> None:
    good = write_video(tmp_path / "src.mp4", frames=60, width=160, height=120)
    corrupt = write_corrupt(env["videos"] / "corrupt.mp4", good)
    (env["videos"] / "notes.mp4").write_text("not a video at all\n" * 100)
    q, store, settings = env["queue"], env["store"], env["settings"]
    ids = q.enqueue(
        [
            str(corrupt),
            str(env["videos"] / "notes.mp4"),
            str(env["videos"] / "missing.mp4"),
            str(tmp_path / "src.mp4"),
        ]
    )
    job = VideoJob(q, store, env["inference"], settings)
    outcomes = [job.run(lease) for lease in q.claim(4, "decoder-1")]
    assert [o.status for o in outcomes] == ["dead"] * 4
    reasons = {d.id: d.dead_reason for d in q.dead()}
    assert "corrupt video" in reasons[ids[0]]
    assert "not a readable video" in reasons[ids[1]]
    assert "no such file" in reasons[ids[2]]
    assert "outside the allowed roots" in reasons[ids[3]]
    assert not any(item.result for item in q.items(ids))


def test_a_transient_inference_error_is_retried_later(env: dict[str, Any]) -> None:
    class Failing(Counting):
        def submit(self, item_id: str, video: str, chunk: Chunk) -> Pending:
            raise TransientError("CUDA out of memory")

    video = write_video(env["videos"] / "d.mp4", frames=10)
    q = env["queue"]
    [item_id] = q.enqueue([str(video)])
    [lease] = q.claim(1, "decoder-1")
    out = VideoJob(q, env["store"], Failing(env["inference"]), env["settings"]).run(lease)
    assert out.status == "failed"
    item = q.get(item_id)
    assert (
        item is not None and item.state is State.DELAYED and item.last_error == "CUDA out of memory"
    )


def test_a_lost_lease_stops_the_item_and_never_acks(env: dict[str, Any]) -> None:
    video = write_video(env["videos"] / "e.mp4", frames=40)
    q, settings = env["queue"], env["settings"]
    [item_id] = q.enqueue([str(video)])
    [lease] = q.claim(1, "decoder-1")

    class Stealing(Counting):
        def submit(self, item_id: str, video: str, chunk: Chunk) -> Pending:
            if len(self.submitted) == 1:  # meanwhile the lease moves to another worker
                q.release(lease, "test")
                self.thief = q.claim(1, "decoder-2")[0]
            return super().submit(item_id, video, chunk)

    stealing = Stealing(env["inference"])
    out = VideoJob(q, env["store"], stealing, settings).run(lease)
    assert out.status == "lost"
    item = q.get(item_id)
    assert item is not None and item.state is State.LEASED and item.owner == "decoder-2"
    assert len(stealing.submitted) <= 1 + settings.pipeline.max_inflight_chunks


def test_renewals_keep_a_slow_item_alive_past_its_lease(
    env: dict[str, Any], valkey_client: Redis, clock: ManualClock
) -> None:
    """The queue on a manual clock, a 0.9 s lease. Before each chunk, once the keeper has
    renewed the lease at the queue's present time, the clock moves 0.6 of a lease and the
    queue is reaped. Five chunks take the queue's time past three lease lengths; the
    renewals keep the item, so it is acked, never reaped. (A load that delays a renewal
    makes the test slower, not wrong.)"""
    settings = replace(env["settings"], queue=QueueSettings(lease_s=0.9))
    lease_ms = int(settings.queue.lease_s * 1000)
    q = Queue(valkey_client, settings.queue, clock=clock)
    reaped: list[int] = []

    class Slow(Counting):
        def submit(self, item_id: str, video: str, chunk: Chunk) -> Pending:
            deadline = time.monotonic() + 30
            while q.get(item_id).lease_until_ms != clock() + lease_ms:  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "no renewal within 30 s"
                time.sleep(0.02)
            clock.advance(0.6 * lease_ms)
            reaped.append(q.reap().requeued)
            return super().submit(item_id, video, chunk)

    video = write_video(env["videos"] / "f.mp4", frames=40)
    [item_id] = q.enqueue([str(video)])
    [lease] = q.claim(1, "decoder-1")
    slow = Slow(env["inference"])
    out = VideoJob(q, env["store"], slow, settings).run(lease)
    assert out.status == "acked" and slow.submitted == [0, 1, 2, 3, 4]
    assert reaped == [0] * 5  # 5 x 0.6: the queue's time went past three leases
    assert q.get(item_id).deliveries == 0  # type: ignore[union-attr]
    assert q.stats().counters.get("reaped_total", 0) == 0


def test_in_flight_chunks_are_bounded(env: dict[str, Any]) -> None:
    class Held:
        def __init__(self, log: list[int]) -> None:
            self.log = log

        def result(self, timeout: float | None = None) -> ChunkDone:
            self.log.append(-1)
            return ChunkDone(0)

    class Tracking(Counting):
        def __init__(self, inner: LocalInference) -> None:
            super().__init__(inner)
            self.log: list[int] = []

        def submit(self, item_id: str, video: str, chunk: Chunk) -> Pending:
            super().submit(item_id, video, chunk)
            self.log.append(+1)
            return Held(self.log)

    video = write_video(env["videos"] / "g.mp4", frames=80)
    q = env["queue"]
    q.enqueue([str(video)])
    [lease] = q.claim(1, "decoder-1")
    tracking = Tracking(env["inference"])
    VideoJob(q, env["store"], tracking, env["settings"]).run(lease)
    outstanding = np.cumsum(tracking.log)
    assert outstanding.max() == env["settings"].pipeline.max_inflight_chunks == 2


def _room(job: VideoJob) -> int:
    """How many chunks the job's shared budget would let out now."""
    taken = 0
    while job.budget.acquire(blocking=False):
        taken += 1
    for _ in range(taken):
        job.budget.release()
    return taken


def test_decoded_comes_when_the_last_chunk_is_out_and_before_the_ack(
    env: dict[str, Any],
) -> None:
    video = write_video(env["videos"] / "h.mp4", frames=30)  # 4 chunks of 8
    q = env["queue"]
    [item_id] = q.enqueue([str(video)])
    [lease] = q.claim(1, "decoder-1")
    counting = Counting(env["inference"])
    seen: list[tuple[list[int], str, int]] = []

    def decoded() -> None:
        item = q.get(item_id)
        assert item is not None
        seen.append((list(counting.submitted), item.state.value, item.chunks_done))

    out = VideoJob(q, env["store"], counting, env["settings"]).run(lease, decoded=decoded)
    assert out.status == "acked"
    # Called once, with every chunk out, while the last ones still await their checkpoint.
    assert seen == [([0, 1, 2, 3], "leased", 3)]


def test_items_at_once_share_one_budget_of_chunks_out(env: dict[str, Any]) -> None:
    """items_per_decoder=1 and max_inflight_chunks=2: a budget of 2 chunks out for the job.
    Three items run at once in threads (more than the places: a decode actor's items in
    their last chunks count too); results take 30 ms. At no time are more than 2 chunks out,
    nobody waits forever, and all the budget is back at the end."""
    settings = replace(
        env["settings"], pipeline=replace(env["settings"].pipeline, items_per_decoder=1)
    )
    lock = threading.Lock()
    log: list[int] = []

    class Late:
        def __init__(self, done: ChunkDone) -> None:
            self.done = done

        def result(self, timeout: float | None = None) -> ChunkDone:
            time.sleep(0.03)
            with lock:
                log.append(-1)
            return self.done

    class Tracking(Counting):
        def submit(self, item_id: str, video: str, chunk: Chunk) -> Pending:
            done = super().submit(item_id, video, chunk).result()
            with lock:
                log.append(+1)
            return Late(done)

    paths = [write_video(env["videos"] / f"s{i}.mp4", frames=40) for i in range(3)]
    q = env["queue"]
    q.enqueue([str(p) for p in paths])
    job = VideoJob(q, env["store"], Tracking(env["inference"]), settings)
    outcomes: list[str] = []
    threads = [
        threading.Thread(target=lambda lease=lease: outcomes.append(job.run(lease).status))
        for lease in q.claim(3, "decoder-1")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert outcomes == ["acked"] * 3
    assert log.count(+1) == 15 and np.cumsum(log).max() == 2
    assert _room(job) == 2


def test_the_budget_comes_back_when_items_fail_or_stop(
    env: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    class Failing(Counting):
        def submit(self, item_id: str, video: str, chunk: Chunk) -> Pending:
            if len(self.submitted) == 2:
                raise TransientError("CUDA out of memory")
            return super().submit(item_id, video, chunk)

    class Never:
        def result(self, timeout: float | None = None) -> ChunkDone:
            raise TimeoutError

    class Stuck(Counting):  # the first chunk's output never comes; a stop request arrives
        def submit(self, item_id: str, video: str, chunk: Chunk) -> Pending:
            super().submit(item_id, video, chunk)
            stop.set()
            return Never()

    q, store = env["queue"], env["store"]
    paths = [write_video(env["videos"] / f"b{i}.mp4", frames=40) for i in range(2)]
    q.enqueue([str(p) for p in paths])
    first, second = q.claim(2, "decoder-1")
    stop = threading.Event()
    job = VideoJob(q, store, Failing(env["inference"]), env["settings"], stop=stop)
    budget = _room(job)
    assert job.run(first).status == "failed" and _room(job) == budget
    job.inference = Stuck(env["inference"])
    monkeypatch.setattr("framefleet.workers.pipeline.DRAIN_S", 0.2)  # the stuck chunk is left
    assert job.run(second).status == "released" and _room(job) == budget


def test_s3_in_and_s3_out(
    env: dict[str, Any], model: FrameModel, tmp_path: Path, aws: None
) -> None:
    """A video read from moto's S3 server, its outputs written back to it."""
    from framefleet.workers.sources import s3_client
    from tests.support.servers import moto_s3_server

    video = write_video(tmp_path / "cam.mp4", frames=20)
    with moto_s3_server() as endpoint:
        source = SourceSettings(s3_endpoint_url=endpoint)
        client = s3_client(source)
        client.create_bucket(Bucket="videos-in")
        client.create_bucket(Bucket="videos-out")
        put = client.put_object(Bucket="videos-in", Key="cams/cam.mp4", Body=video.read_bytes())
        settings = replace(
            env["settings"],
            source=source,
            pipeline=replace(env["settings"].pipeline, out="s3://videos-out/run-1"),
        )
        store = OutputStore(settings.pipeline.out, source)
        q = env["queue"]
        [item_id] = q.enqueue(["s3://videos-in/cams/cam.mp4"])
        [lease] = q.claim(1, "decoder-1")
        out = VideoJob(q, store, LocalInference(model, store), settings).run(lease)
        # the version names the object fetched (its ETag), though none was enqueued
        version = output_version(settings.pipeline.config_hash(settings.model), put["ETag"], 0)
        prefix = f"run-1/{item_id}/{version}"
        assert out.status == "acked" and out.result == f"s3://videos-out/{prefix}/_manifest.json"
        keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket="videos-out")["Contents"])
        entry = f"run-1/_index/{shard(item_id)}/{item_id}/{version}.json"
        assert keys == sorted(
            [f"{prefix}/chunk-{k}.parquet" for k in range(3)]
            + [f"{prefix}/detections.parquet", f"{prefix}/_manifest.json"]
            + [entry, f"run-1/_dataset/{item_id}.parquet"]  # the root's index and dataset
        )
        assert_same(pipeline_rows(store, q, item_id), direct_run(model, video, Sampling()))
        dataset = store.get(f"_dataset/{item_id}.parquet")
        assert dataset == store.get(f"{prefix.removeprefix('run-1/')}/detections.parquet")


def test_a_store_that_refuses_the_index_still_acks_the_video(
    env: dict[str, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The outputs are complete whatever the results index says: a store that may not be
    listed (an S3 role without s3:ListBucket answers 403) costs the video its place in the
    index, with a warning naming the repair, not its ack (holding it back released it for
    ever: each delivery found it done, failed to list, and released it again)."""
    from framefleet.workers.errors import InfraError

    video = write_video(env["videos"] / "listless.mp4", frames=10)
    q, store = env["queue"], env["store"]
    [item_id] = q.enqueue([str(video)])
    [lease] = q.claim(1, "decoder-1")

    def refused(prefix: str = "") -> list[str]:
        raise InfraError(f"{store.uri(prefix)}: AccessDenied (HTTP 403)")

    monkeypatch.setattr(store, "keys_under", refused)
    out = VideoJob(q, store, env["inference"], env["settings"]).run(lease)
    assert out.status == "acked" and q.get(item_id).state is State.DONE
    assert "not in the results index" in caplog.text and "results rebuild" in caplog.text
    monkeypatch.undo()
    from framefleet.workers.results import Results

    results = Results(store)
    assert [e.id for e in results.entries()] == [item_id]  # written before the listing failed
    assert store.keys_under("_dataset/") == []  # what needed the listing was not
    assert results.rebuild().videos == 1 and [e.id for e in results.current()] == [item_id]
    assert store.keys_under("_dataset/") == [f"_dataset/{item_id}.parquet"]


class CountingQueue(Queue):
    """The real queue, counting its checkpoint calls."""

    def __init__(self, queue: Queue) -> None:
        super().__init__(queue.client, queue.settings)
        self.calls: list[list[int]] = []

    def checkpoint(self, lease: Any, chunks: Any, *args: Any, **kwargs: Any) -> Any:
        self.calls.append([c for c, _ in chunks])
        return super().checkpoint(lease, chunks, *args, **kwargs)


def test_checkpoints_coalesced_keep_every_chunk_and_its_work_once(
    env: dict[str, Any], model: FrameModel
) -> None:
    """FRAMEFLEET_CHECKPOINT_S: the chunks settled meanwhile go in one call (at tens of
    thousands of workers a call a chunk was most of Redis's load); the first at once (its
    pin), the rest with the total at the end, each chunk's work counted once, and a worker
    stopped midway saves what it settled before it lets go."""
    video = write_video(env["videos"] / "c.mp4", frames=40)
    settings = env["settings"]
    settings = replace(settings, pipeline=replace(settings.pipeline, checkpoint_s=300))
    q, store = CountingQueue(env["queue"]), env["store"]
    [item_id] = q.enqueue([str(video)])
    before = q.stats().counters.get("frames_total", 0)
    [lease] = q.claim(1, "decoder-1")
    assert VideoJob(q, store, env["inference"], settings).run(lease).status == "acked"
    assert q.calls == [[0], [1, 2, 3, 4, 4]]  # the last again, with the total
    item = q.get(item_id)
    assert item is not None and (item.chunks_done, item.chunks_total) == (5, 5)
    assert q.stats().counters["frames_total"] - before == 40
    assert_same(pipeline_rows(store, q, item_id), direct_run(model, video, Sampling()))

    other = write_video(env["videos"] / "d.mp4", frames=40)
    [other_id] = q.enqueue([str(other)])
    stop = threading.Event()
    counting = Counting(env["inference"], stop_after=3, stop=stop)
    q.calls.clear()
    [lease] = q.claim(1, "decoder-2")
    assert VideoJob(q, store, counting, settings, stop=stop).run(lease).status == "released"
    assert q.calls == [[0], [1, 2]] and q.chunks(other_id) == {0, 1, 2}
