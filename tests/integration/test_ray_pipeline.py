"""The whole pipeline on a real local Ray with a logical GPU: two decode actors, four
0.25-GPU inference actors, the real queue, real videos, a tiny real DETR. Its detections
must equal a direct single-process run of the same model on the same frames."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from redis import Redis

from framefleet.queue import EmbeddedServer, Queue
from framefleet.settings import (
    ModelSettings,
    PipelineSettings,
    QueueSettings,
    Settings,
    SourceSettings,
)
from framefleet.workers.actors import DECODE_MALLOC_ENV, Fleet
from framefleet.workers.decode import Sampling, chunks, open_decoder
from framefleet.workers.model import load_model
from framefleet.workers.outputs import OutputStore, output_version
from framefleet.workers.results import Results
from framefleet.workers.sources import local_pin
from tests.support.deadline import left
from tests.support.detections import assert_same, direct_run, pipeline_rows
from tests.support.jobs import local_ray
from tests.support.models import write_pinned_detr, write_tiny_detr
from tests.support.videos import write_corrupt, write_video

VFR_PTS = [0, 10, 50, 60, 200, 210, 400, 405, 900, 1000] + [1000 + 33 * i for i in range(1, 21)]


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    with local_ray(gpus=1):
        yield


def _settings(
    queue: str, videos: Path, out: Path, model: ModelSettings, **pipeline: Any
) -> Settings:
    """8-frame chunks, 0.25-GPU inference actors, half a CPU per actor (the machine has two)."""
    return Settings(
        queue=QueueSettings(name=queue, lease_s=30),
        source=SourceSettings(allowed_roots=(videos,)),
        model=model,
        pipeline=PipelineSettings(
            out=str(out),
            chunk_frames=8,
            gpus_per_inference=0.25,
            cpus_per_inference=0.5,
            cpus_per_decoder=0.5,
            **pipeline,
        ),
    )


def _one_slow_decoder(queue: str, tmp_path: Path, videos: int) -> tuple[Settings, list[Path]]:
    """`videos` videos of three 8-frame chunks; one decode actor with one place, two chunks
    out at a time, and one inference actor whose model takes 0.5 s a chunk."""
    folder = tmp_path / "videos"
    folder.mkdir()
    paths = [write_video(folder / f"v{i}.mp4", frames=24) for i in range(videos)]
    settings = _settings(
        queue,
        folder,
        tmp_path / "out",
        ModelSettings(plugin="tests.support.plugin_model:load_slow"),
        decode_actors=1,
        inference_actors=1,
        items_per_decoder=1,
        max_inflight_chunks=2,
    )
    return settings, paths


def test_pipeline_equals_a_direct_run(
    ray_cluster: None, valkey: EmbeddedServer, valkey_client: Redis, tmp_path: Path
) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    good = {
        "h264": write_video(videos / "h264.mp4", frames=45),
        "vp9": write_video(videos / "vp9.webm", codec="libvpx-vp9", frames=30),
        "odd": write_video(videos / "odd.mp4", width=97, height=61, pix_fmt="yuv444p", frames=20),
        "vfr": write_video(videos / "vfr.mp4", frames=30, pts=VFR_PTS),
        "one": write_video(videos / "one.mp4", frames=1),
    }
    bad = {
        "corrupt": write_corrupt(
            videos / "corrupt.mp4",
            write_video(tmp_path / "src.mp4", frames=60, width=160, height=120),
        ),
        "notes": videos / "notes.mp4",
    }
    bad["notes"].write_text("no frames here\n" * 100)
    detr = write_tiny_detr(tmp_path / "detr")
    detector = ModelSettings(model=str(detr), score_threshold=0.05, batch_size=4)
    settings = _settings(
        "pipeline", videos, tmp_path / "out", detector, decode_actors=2, inference_actors=4
    )
    q = Queue(valkey_client, settings.queue)
    ids = dict(
        zip(
            [*good, *bad], q.enqueue([str(p) for p in [*good.values(), *bad.values()]]), strict=True
        )
    )

    fleet = Fleet(settings, valkey.url).start()
    try:
        outcomes = fleet.run_until_empty(timeout=left(600))
        decoders = [fleet.adapter.get(fleet.adapter.call(d, "ready"))[0] for d in fleet.decoders]
        inference = [
            fleet.adapter.get(fleet.adapter.call(a, "describe"))[2] for a in fleet.inference
        ]
        # The decoders yield the cores to inference (decode_nice), every thread of them.
        # Ray runs a worker's Python threads at nice 15 and its core threads at 0.
        nicer = settings.pipeline.decode_nice
        assert nicer == 5  # the default
        [levels] = {frozenset(_thread_nice(pid)) for pid in inference}
        assert all(_thread_nice(pid) == {min(19, n + nicer) for n in levels} for pid in decoders)
        # The decoders run glibc's malloc with a fixed mmap threshold (actors.py
        # DECODE_MALLOC_ENV), on top of the job's own environment (its PYTHONPATH), and the
        # inference actors without it.
        for pid in decoders:
            env = _environ(pid)
            assert {k: env.get(k) for k in DECODE_MALLOC_ENV} == DECODE_MALLOC_ENV
            assert env.get("PYTHONPATH") == str(Path(__file__).resolve().parents[2])
        assert all("MALLOC_MMAP_THRESHOLD_" not in _environ(pid) for pid in inference)
    finally:
        fleet.stop()

    status = {o["item_id"]: o["status"] for o in outcomes}
    assert {name: status[ids[name]] for name in good} == dict.fromkeys(good, "acked")
    assert {name: status[ids[name]] for name in bad} == dict.fromkeys(bad, "dead")
    counters = q.stats().counters
    assert counters["acked_total"] == len(good) and "stale_ack_total" not in counters
    reasons = {d.id: d.dead_reason or "" for d in q.dead()}
    assert (
        "corrupt video" in reasons[ids["corrupt"]]
        and "not a readable video" in reasons[ids["notes"]]
    )

    model = load_model(settings.model)
    store = OutputStore(settings.pipeline.out, settings.source)
    for name, path in good.items():
        assert_same(pipeline_rows(store, q, ids[name]), direct_run(model, path, Sampling()))
        result = q.get(ids[name]).result or ""  # type: ignore[union-attr]
        manifest = store.read_result(result)
        assert manifest["frames"] == {"h264": 45, "vp9": 30, "odd": 20, "vfr": 30, "one": 1}[name]
        assert result.startswith(f"{store.uri(ids[name])}/") and result.endswith("_manifest.json")
    # the root's index and dataset, as five videos finished at once on two decode actors:
    # one current entry each, none for the dead, each dataset file the video's own rows
    results = Results(store)
    entries = results.entries()
    assert sorted(e.id for e in entries) == sorted(ids[name] for name in good)
    results_of = {i.id: i.result for i in q.items([e.id for e in entries])}
    assert all(e.current and e.video == store.video_of(results_of[e.id] or "") for e in entries)
    dataset = pq.read_table(results.dataset)
    assert dataset.num_rows == sum(e.detections for e in entries)
    for e in entries:
        mine = dataset.filter(pc.equal(dataset["video_id"], e.id))
        assert set(mine["uri"].to_pylist()) <= {e.uri} and mine.num_rows == e.detections


def test_boxes_come_out_in_source_pixels_when_frames_are_decoded_smaller(
    ray_cluster: None, valkey: EmbeddedServer, valkey_client: Redis, tmp_path: Path
) -> None:
    """A 160x96 video with an object at (40, 24)-(80, 72), decoded at 80x48
    (FRAMEFLEET_WIDTH=80), through the actors, to a DETR pinned to the object's place: every
    detection written has the object's box in the source's pixels, and its time."""
    import numpy as np

    def scene(i: int, width: int, height: int) -> np.ndarray:
        img = np.full((height, width, 3), 30, np.uint8)
        img[24:72, 40:80] = 230  # the object
        return img

    videos = tmp_path / "videos"
    videos.mkdir()
    path = write_video(videos / "scene.mp4", width=160, height=96, frames=12, image=scene)
    pinned = write_pinned_detr(
        tmp_path / "pinned", box=(60 / 160, 48 / 96, 40 / 160, 48 / 96), label=1
    )
    detector = ModelSettings(model=str(pinned), score_threshold=0.5)
    settings = _settings(
        "boxes", videos, tmp_path / "out", detector, decode_actors=1, inference_actors=1, width=80
    )
    q = Queue(valkey_client, settings.queue)
    [item_id] = q.enqueue([str(path)])
    fleet = Fleet(settings, valkey.url).start()
    try:
        [outcome] = fleet.run_until_empty(timeout=left(300))
    finally:
        fleet.stop()
    assert outcome["status"] == "acked"
    store = OutputStore(settings.pipeline.out, settings.source)
    got = pipeline_rows(store, q, item_id)
    assert len(got) == 12 * 10  # every query of every frame
    for frame, label, _, x0, y0, x1, y1, pts in got:
        assert label == 1 and (x0, y0, x1, y1) == pytest.approx((40, 24, 80, 72), abs=0.01)
        assert pts == pytest.approx(frame / 15)
    manifest = store.read_result(q.get(item_id).result or "")  # type: ignore[union-attr]
    assert manifest["source_size"] == [160, 96]
    sampling = Sampling(width=80)
    decoder = open_decoder(path, sampling)
    assert next(chunks(decoder, sampling, 1)).images.shape == (1, 48, 80, 3)  # half the size
    decoder.close()
    assert_same(got, direct_run(load_model(detector), path, sampling))


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    return dict(entry.split("=", 1) for entry in raw.split("\0") if "=" in entry)


def _thread_nice(pid: int) -> set[int]:
    import os

    import psutil

    return {os.getpriority(os.PRIO_PROCESS, t.id) for t in psutil.Process(pid).threads()}


def test_sigterm_makes_a_decode_actor_release_its_lease(
    ray_cluster: None, valkey: EmbeddedServer, valkey_client: Redis, tmp_path: Path
) -> None:
    """SIGTERM (what a preempted or drained node's processes get) mid-video: the decode actor
    settles the chunks already out, checkpoints them, releases the lease without counting an
    attempt and returns. The model holds every chunk until the test opens its gate, so that
    exactly two chunks are out, none checkpointed, when the signal comes: those two, and
    nothing else, are checkpointed on the way out."""
    import os
    import signal

    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "long.mp4", frames=80)
    gate = tmp_path / "gate"
    gate.touch()  # open while the actors warm up
    model = ModelSettings(model=str(gate), plugin="tests.support.plugin_model:load_gated")
    settings = _settings(
        "sigterm",
        videos,
        tmp_path / "out",
        model,
        decode_actors=1,
        inference_actors=2,  # one chunk at each
        max_inflight_chunks=2,
    )
    q = Queue(valkey_client, settings.queue)
    [item_id] = q.enqueue([str(videos / "long.mp4")])
    fleet = Fleet(settings, valkey.url).start()
    try:
        gate.unlink()
        [decoder] = fleet.decoders
        pid, _ = fleet.adapter.get(fleet.adapter.call(decoder, "ready"))
        run = fleet.adapter.call(decoder, "run")

        def seen() -> int:  # the batches that came to the model
            return len(list(tmp_path.glob("gate.seen-*")))

        deadline = time.monotonic() + left(60)
        while seen() < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert seen() == 2, "two chunks were not out at the inference actors"
        before = q.chunks(item_id)
        os.kill(pid, signal.SIGTERM)
        gate.touch()  # the chunks out come back now, after the signal
        outcomes = fleet.adapter.get(run, timeout=60)
    finally:
        gate.touch()
        fleet.stop()
    assert before == set()  # nothing had come back when the signal came
    assert [o["status"] for o in outcomes] == ["released"]
    item = q.get(item_id)
    assert item is not None and item.state.value == "queued" and item.attempts == 0
    assert item.release_reason == "worker stopping (shutdown or preemption)"
    # The two chunks out were settled and checkpointed on the way out, and nothing else was
    # decoded or written: the next worker redoes nothing and skips nothing.
    after = q.chunks(item_id)
    store = OutputStore(settings.pipeline.out, settings.source)
    pin = local_pin(videos / "long.mp4")  # the file the chunks were made from
    video = store.video(item_id, output_version(settings.pipeline.config_hash(model), pin, 0))
    assert after == {0, 1}, after
    assert store.chunks_present(video, range(10)) == after


def test_each_inference_actor_loads_the_model_once(
    ray_cluster: None, valkey: EmbeddedServer, valkey_client: Redis, tmp_path: Path
) -> None:
    """Two inference actors, three videos of five chunks: two loads, one in each actor's
    process, however many chunks they run."""
    videos = tmp_path / "videos"
    videos.mkdir()
    paths = [write_video(videos / f"v{i}.mp4", frames=40) for i in range(3)]
    loads = tmp_path / "model"
    loads.mkdir()
    model = ModelSettings(plugin="tests.support.plugin_model:load_counted", model=str(loads))
    settings = _settings(
        "loads", videos, tmp_path / "out", model, decode_actors=1, inference_actors=2
    )
    q = Queue(valkey_client, settings.queue)
    q.enqueue([str(p) for p in paths])
    fleet = Fleet(settings, valkey.url).start()
    try:
        outcomes = fleet.run_until_empty(timeout=left(300))
        pids = {fleet.adapter.get(fleet.adapter.call(a, "describe"))[2] for a in fleet.inference}
    finally:
        fleet.stop()
    assert [o["status"] for o in outcomes] == ["acked"] * 3
    assert sum(o["chunks"] for o in outcomes) == 15
    logged = (loads / "loads").read_text().split()
    assert sorted(map(int, logged)) == sorted(pids) and len(pids) == 2


def test_a_drained_decode_actor_finishes_its_videos_and_claims_no_more(
    ray_cluster: None, valkey: EmbeddedServer, valkey_client: Redis, tmp_path: Path
) -> None:
    """What the coordinator does to decode actors a smaller backlog no longer needs, on a
    real actor: drain() mid-video lets it finish and ack what it holds (nothing released,
    no attempt), claim nothing more, and return from run()."""
    import time

    settings, paths = _one_slow_decoder("drain", tmp_path, videos=4)
    q = Queue(valkey_client, settings.queue)
    ids = q.enqueue([str(p) for p in paths])
    fleet = Fleet(settings, valkey.url).start()
    try:
        [decoder] = fleet.decoders
        run = fleet.adapter.call(decoder, "run")
        deadline = time.monotonic() + 60
        while not any(q.chunks(i) for i in ids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any(q.chunks(i) for i in ids), "no chunk was checkpointed"
        fleet.adapter.get(fleet.adapter.call(decoder, "drain"), timeout=30)
        outcomes = fleet.adapter.get(run, timeout=left(120))  # it returns by itself
    finally:
        fleet.stop()
    statuses = [o["status"] for o in outcomes]
    assert statuses and set(statuses) == {"acked"}, outcomes
    acked = {o["item_id"] for o in outcomes}
    counters = q.stats().counters
    assert counters["claimed_total"] == counters["acked_total"] == len(acked) < len(ids)
    assert counters.get("released_total", 0) == 0
    for item in q.items([i for i in ids if i not in acked]):
        assert item.state.value == "queued" and item.attempts == item.deliveries == 0


def test_the_next_video_starts_while_the_last_chunks_are_in_inference(
    ray_cluster: None, valkey: EmbeddedServer, valkey_client: Redis, tmp_path: Path
) -> None:
    """One decode actor with one place (items_per_decoder=1) and a model taking 0.5 s per
    chunk: once the first video's frames are all out, the second is claimed and decoded while
    the first one's last chunks are still in inference (both leased at once), instead of
    the decoder idling until the first is acked. Both are acked."""
    import threading

    settings, paths = _one_slow_decoder("overlap", tmp_path, videos=2)
    q = Queue(valkey_client, settings.queue)
    ids = q.enqueue([str(p) for p in paths])
    most_leased = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal most_leased
        while not done.wait(0.02):
            items = [q.get(i) for i in ids]
            leased = sum(1 for item in items if item is not None and item.state.value == "leased")
            most_leased = max(most_leased, leased)

    fleet = Fleet(settings, valkey.url).start()
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        outcomes = fleet.run_until_empty(timeout=left(120))
    finally:
        done.set()
        watcher.join()
        fleet.stop()
    assert sorted(o["status"] for o in outcomes) == ["acked", "acked"]
    assert most_leased == 2


def _white(i: int, width: int, height: int) -> Any:
    import numpy as np

    return np.full((height, width, 3), 255, np.uint8)


def test_three_inference_actors_dying_under_one_chunk_fail_its_video(
    ray_cluster: None, valkey: EmbeddedServer, valkey_client: Redis, tmp_path: Path
) -> None:
    """A chunk that kills every inference actor it reaches (the model's process dies on
    white frames): the README's three deaths, then the video fails (model_error, dead after
    max_attempts 1), and the fourth actor is never sent it. Before, a fourth death was
    needed: every actor of the fleet died."""
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "white.mp4", frames=8, image=_white)
    settings = _settings(
        "deaths",
        videos,
        tmp_path / "out",
        ModelSettings(plugin="tests.support.plugin_model:load_crash_on_white"),
        decode_actors=1,
        inference_actors=4,
        max_inflight_chunks=1,
    )
    settings = replace(settings, queue=replace(settings.queue, max_attempts=1))
    q = Queue(valkey_client, settings.queue)
    [item_id] = q.enqueue([str(videos / "white.mp4")])
    fleet = Fleet(settings, valkey.url).start()
    try:
        a = fleet.adapter
        pids = [int(a.get(a.call(actor, "describe"))[2]) for actor in fleet.inference]
        outcomes = fleet.run_until_empty(timeout=left(180))
        alive = [pid for pid in pids if psutil.pid_exists(pid)]
    finally:
        fleet.stop()
    item = q.get(item_id)
    assert item is not None and item.state.value == "dead", outcomes
    assert item.dead_class == "model_error" and "3 inference actors died" in (
        item.dead_reason or ""
    ), item.dead_reason
    assert len(alive) == 1, (pids, alive)


def test_a_chunk_out_longer_than_the_chunk_timeout_goes_to_another_actor(
    ray_cluster: None, valkey: EmbeddedServer, valkey_client: Redis, tmp_path: Path
) -> None:
    """One of two inference actors is stopped (SIGSTOP: alive, silent) and no coordinator
    kills it: the chunks sent to it come back from the other one after chunk_timeout_s
    (3 s), and the video is done. Without the timeout they would wait for ever."""
    import os
    import signal

    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "v.mp4", frames=32)
    settings = _settings(
        "timeout",
        videos,
        tmp_path / "out",
        ModelSettings(plugin="tests.support.plugin_model:load"),
        decode_actors=1,
        inference_actors=2,
        chunk_timeout_s=3.0,
    )
    q = Queue(valkey_client, settings.queue)
    [item_id] = q.enqueue([str(videos / "v.mp4")])
    fleet = Fleet(settings, valkey.url).start()
    a = fleet.adapter
    victim = int(a.get(a.call(fleet.inference[0], "describe"))[2])
    os.kill(victim, signal.SIGSTOP)
    try:
        started = time.monotonic()
        fleet.run_until_empty(timeout=left(120))
        took = time.monotonic() - started
        assert psutil.Process(victim).status() == psutil.STATUS_STOPPED  # never killed
    finally:
        os.kill(victim, signal.SIGCONT)
        fleet.stop()
    item = q.get(item_id)
    assert item is not None and item.state.value == "done" and item.attempts == 0, item
    assert took >= 3.0  # its chunks waited out the timeout at the stopped actor
