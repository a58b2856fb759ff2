"""What the logs say, with real parts: the decoders' own errors make a video's dead letter, a
bug in framefleet's own code is a bug (its traceback logged, the item released as the queue's
bug path says: internal_error after max_attempts, here 1), never a `corrupt` or
`not_a_video` video; each item's outcome is one INFO line; and a real coordinator (a local
Ray, its driver, its actors) prints its actors' lines on its own stderr, each with its time,
level, logger, actor and node, one JSON object a line with FRAMEFLEET_LOG_FORMAT=json."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pytest
from redis import Redis

from framefleet.queue import EmbeddedServer, Queue, State
from framefleet.settings import (
    CoordinatorSettings,
    ModelSettings,
    PipelineSettings,
    QueueSettings,
    RedisSettings,
    Settings,
    SourceSettings,
)
from framefleet.workers import decode
from framefleet.workers.decode import Limits
from framefleet.workers.errors import TransientError
from framefleet.workers.model import FrameModel
from framefleet.workers.pipeline import Status, VideoJob
from tests.support.fleet import wait
from tests.support.jobs import job_env
from tests.support.videos import write_corrupt, write_video

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = "framefleet.workers.pipeline"


def _broken(*args: Any, **kwargs: Any) -> Any:
    raise TypeError("an injected bug in framefleet's own code")


# Where framefleet's own code runs inside the decoders' error handling: opening (the PyAV
# container helper; the restricted probe decord is given) and decoding (the frame checks).
INJECTIONS: dict[str, tuple[str, Callable[[pytest.MonkeyPatch], None]]] = {
    "pyav-open": ("pyav", lambda mp: mp.setattr(decode, "open_container", _broken)),
    "pyav-decode": ("pyav", lambda mp: mp.setattr(Limits, "check_frame", _broken)),
    "decord-open": ("decord", lambda mp: mp.setattr(decode, "_probe", _broken)),
    "decord-decode": ("decord", lambda mp: mp.setattr(Limits, "check_frame", _broken)),
}


def _item_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The items' outcome lines: each record's fields (its `extra=` ones included), and its
    text as `text`."""
    return [
        {**vars(r), "text": r.getMessage()}
        for r in caplog.records
        if r.name == PIPELINE and r.levelno == logging.INFO
    ]


class Failing:
    """Inference that fails every chunk as a GPU out of memory does (another try may do)."""

    def __init__(self, inner: Any) -> None:
        self.schema, self.model_name = inner.schema, inner.model_name

    def submit(self, item_id: str, video: str, chunk: Any) -> Any:
        raise TransientError("CUDA out of memory", "model_error")


@pytest.mark.parametrize("where", sorted(INJECTIONS))
def test_a_bug_in_framefleets_own_code_is_an_internal_error_not_a_bad_video(
    where: str,
    tmp_path: Path,
    valkey_client: Redis,
    model: FrameModel,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    decoder, inject = INJECTIONS[where]
    env = job_env(tmp_path, valkey_client, model, max_attempts=1)
    settings = env["settings"]
    # decoded in this process (decode_memory_bytes 0), where the injection is; a bug in the
    # decoder's child process takes the same path (test_crafted_media)
    pipeline = replace(settings.pipeline, decoder=decoder, decode_memory_bytes=0)
    settings = replace(settings, pipeline=pipeline)
    video = write_video(env["videos"] / "a.mp4", frames=20)
    q: Queue = env["queue"]
    [item_id] = q.enqueue([str(video)])
    [lease] = q.claim(1, "decoder-1")
    inject(monkeypatch)
    caplog.set_level(logging.INFO, logger="framefleet")
    outcome = VideoJob(q, env["store"], env["inference"], settings).run(lease)
    item = q.get(item_id)
    assert item is not None
    assert (item.state, item.dead_class) == (State.DEAD, "internal_error"), item.dead_reason
    assert item.bugs == 1 and item.attempts == 0  # the bug path: counted apart, not charged
    assert (outcome.status, outcome.cls) == (Status.ERROR, "internal_error")
    [bug] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert bug.exc_info is not None and isinstance(bug.exc_info[1], TypeError)
    assert "an injected bug" in str(bug.exc_info[1]) and item_id in bug.getMessage()
    [line] = _item_lines(caplog)
    assert (line["item"], line["outcome"], line["class"]) == (item_id, "dead", "internal_error")


@pytest.mark.parametrize("decoder", ["pyav", "decord"])
def test_the_decoders_own_errors_still_make_a_dead_letter_of_their_class(
    decoder: str,
    tmp_path: Path,
    valkey_client: Redis,
    model: FrameModel,
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = job_env(tmp_path, valkey_client, model)
    settings = env["settings"]
    settings = replace(settings, pipeline=replace(settings.pipeline, decoder=decoder))
    good = write_video(tmp_path / "src.mp4", frames=60, width=160, height=120)
    corrupt = write_corrupt(env["videos"] / "corrupt.mp4", good)
    notes = env["videos"] / "notes.mp4"
    notes.write_text("not a video at all\n" * 100)
    q: Queue = env["queue"]
    ids = q.enqueue([str(corrupt), str(notes)])
    caplog.set_level(logging.INFO, logger="framefleet")
    job = VideoJob(q, env["store"], env["inference"], settings)
    for lease in q.claim(2, "decoder-1"):
        job.run(lease)
    classes = {d.id: d.dead_class for d in q.dead()}
    assert classes == {ids[0]: "corrupt", ids[1]: "not_a_video"}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # no bug logged
    lines = {line["item"]: (line["outcome"], line["class"]) for line in _item_lines(caplog)}
    assert lines == {ids[0]: ("dead", "corrupt"), ids[1]: ("dead", "not_a_video")}


def test_each_item_outcome_is_one_info_line_with_its_id_uri_attempt_and_seconds(
    tmp_path: Path,
    valkey_client: Redis,
    model: FrameModel,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """done, dead with its class, released with why; no line for a chunk (the good video
    has 3 chunks of 8 frames)."""
    env = job_env(tmp_path, valkey_client, model, backoff_base_s=0.01)
    q: Queue = env["queue"]
    good = write_video(env["videos"] / "good.mp4", frames=24)
    corrupt = write_corrupt(env["videos"] / "corrupt.mp4", good)
    slow = write_video(env["videos"] / "slow.mp4", frames=16)
    caplog.set_level(logging.INFO, logger="framefleet")
    job = VideoJob(q, env["store"], env["inference"], env["settings"])
    [good_id, corrupt_id] = q.enqueue([str(good), str(corrupt)])
    outcomes = [job.run(lease) for lease in q.claim(2, "decoder-1")]
    assert [o.status for o in outcomes] == [Status.ACKED, Status.DEAD]
    # released with why (a stop request), on its second attempt
    [slow_id] = q.enqueue([str(slow)])
    [lease] = q.claim(1, "decoder-1")
    q.fail(lease, "HTTP 503", retryable=True, cls="fetch_failed")  # its first attempt
    [lease] = q.claim(1, "decoder-1", block=10)  # once its retry falls due
    stopping = VideoJob(q, env["store"], env["inference"], env["settings"])
    stopping.stop.set()
    assert stopping.run(lease).status == Status.RELEASED
    lines = _item_lines(caplog)
    assert [line["item"] for line in lines] == [good_id, corrupt_id, slow_id]
    done, dead, released = lines
    assert re.fullmatch(
        rf"item {good_id} done: {re.escape(str(good))} \(attempt 1, \d+\.\d s;"
        r" 3 chunks, 24 frames inferred\)",
        done["text"],
    ), done["text"]
    assert (done["outcome"], done["uri"], done["attempt"], done["frames"]) == (
        "done",
        str(good),
        1,
        24,
    )
    assert 0 < done["seconds"] < 60 and done["class"] is None
    assert (dead["outcome"], dead["class"], dead["attempt"]) == ("dead", "corrupt", 1)
    assert dead["text"].startswith(f"item {corrupt_id} dead (corrupt): {corrupt} (attempt 1,")
    assert "corrupt video at frame" in dead["reason"]
    assert (released["outcome"], released["attempt"]) == ("released", 2)
    assert released["reason"] == "worker stopping (shutdown or preemption)"
    assert released["text"].endswith("): worker stopping (shutdown or preemption)")


def test_a_retried_item_says_retried_and_its_last_attempt_says_dead(
    tmp_path: Path,
    valkey_client: Redis,
    model: FrameModel,
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = job_env(tmp_path, valkey_client, model, max_attempts=2, backoff_base_s=0.01)
    q: Queue = env["queue"]
    video = write_video(env["videos"] / "a.mp4", frames=8)
    [item_id] = q.enqueue([str(video)])
    caplog.set_level(logging.INFO, logger="framefleet")
    job = VideoJob(q, env["store"], Failing(env["inference"]), env["settings"])
    job.run(q.claim(1, "decoder-1")[0])
    job.run(q.claim(1, "decoder-1", block=10)[0])  # once its retry falls due
    first, last = _item_lines(caplog)
    assert (first["outcome"], first["class"], first["attempt"]) == ("retried", "model_error", 1)
    assert (last["outcome"], last["class"], last["attempt"]) == ("dead", "model_error", 2)
    assert first["text"].startswith(f"item {item_id} retried (model_error): ")
    item = q.get(item_id)
    assert item is not None and item.state is State.DEAD


def test_a_leader_change_is_one_warning_and_a_first_leader_an_info_line(
    valkey: EmbeddedServer, valkey_client: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """The coordinator's leader lease on a real Redis (no driver started: _hold alone)."""
    from framefleet.coordinator.supervisor import Coordinator
    from framefleet.queue import Supervision

    settings = Settings(queue=QueueSettings(name="leader"))
    caplog.set_level(logging.INFO, logger="framefleet")
    first = Coordinator(settings, valkey.url, name="first")
    assert first._hold()
    Supervision(first.queue).add_fleet("f1a2b3", "first")  # its driver's fleet, then it hangs
    assert first.supervision.release_leadership("first")
    second = Coordinator(settings, valkey.url, name="second")
    assert second._hold() and not first._hold()
    first.queue.client.close()
    second.queue.client.close()
    lines = [(r.levelname, r.getMessage(), r.__dict__.get("event")) for r in caplog.records]
    assert lines == [
        ("INFO", "first leads now", "leader"),
        ("WARNING", "second leads now, after first", "leader"),
        ("WARNING", "first lost the leader lease to another coordinator: standing by",
         "leader_lost"),
    ]  # fmt: skip


# -- a real coordinator: its driver prints its actors' lines --------------------------------


@pytest.fixture
def fleet_run(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Two short videos and a corrupt one on a queue; settings for a coordinator on a local
    Ray of its own (a light model plugin, one actor of each kind)."""
    videos = tmp_path / "videos"
    videos.mkdir()
    good = [write_video(videos / f"v{i}.mp4", frames=16) for i in range(2)]
    paths = [
        *good,
        write_corrupt(videos / "corrupt.mp4", write_video(tmp_path / "s.mp4", frames=60)),
    ]
    server = EmbeddedServer(tmp_path / "redis").start()
    temp = tempfile.mkdtemp(prefix="fflog-", dir="/tmp")  # short: Ray's socket paths are long
    settings = Settings(
        redis=RedisSettings(url=server.url),
        queue=QueueSettings(name="logs", lease_s=30),
        source=SourceSettings(allowed_roots=(videos,)),
        model=ModelSettings(plugin="tests.support.plugin_model:load"),
        pipeline=PipelineSettings(
            out=str(tmp_path / "out"),
            chunk_frames=8,
            decode_actors=1,
            inference_actors=1,
            gpus_per_inference=0.0,
            cpus_per_decoder=0.5,
            cpus_per_inference=0.5,
        ),
        coordinator=CoordinatorSettings(ray_temp_dir=temp, tick_s=0.5, leader_ttl_s=3.0),
    )
    queue = Queue(Redis.from_url(server.url, decode_responses=True), settings.queue)
    ids = queue.enqueue([str(p) for p in paths])
    env = {**os.environ, **settings.to_env(), "PYTHONPATH": str(ROOT)}
    try:
        yield {"queue": queue, "ids": ids, "paths": paths, "env": env, "log": tmp_path / "c.log"}
    finally:
        queue.client.close()
        server.stop()
        shutil.rmtree(temp, ignore_errors=True)


def _coordinate_until_settled(run: dict[str, Any], **env: str) -> list[str]:
    """A `framefleet coordinator` until every video is done or dead and its outcome line is
    printed, then SIGTERM; its stdout and stderr, line by line."""
    queue: Queue = run["queue"]
    with run["log"].open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "framefleet.cli", "coordinator"],
            env={**run["env"], **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def settled() -> bool:
            """Every video done or dead, and its outcome line printed (an actor logs it
            after the ack, and Ray ships it to the driver a moment later)."""
            text = run["log"].read_text()
            assert proc.poll() is None, text[-3000:]
            if not all(s in ("done", "dead") for s in queue.states(run["ids"])):
                return False
            return all(f"item {item_id} " in text for item_id in run["ids"])

        wait(settled, 240, "every video done or dead, with its outcome line")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        for p in psutil.process_iter():  # whatever of its session is left
            with contextlib.suppress(psutil.Error, OSError):
                if os.getsid(p.pid) == proc.pid:
                    p.kill()
    lines: list[str] = run["log"].read_text().splitlines()
    return lines


def test_in_json_the_actors_lines_reach_the_coordinators_stderr_one_object_a_line(
    fleet_run: dict[str, Any],
) -> None:
    lines = _coordinate_until_settled(fleet_run, FRAMEFLEET_LOG_FORMAT="json")
    # every line is one JSON object with the base keys, in order (but for the banner that
    # `framefleet coordinator` prints before it starts)
    banner = [line for line in lines if line.startswith("coordinator ")]
    docs = [json.loads(line) for line in lines if line not in banner]
    assert len(banner) == 1 and docs
    keys = ("time", "level", "logger", "message", "actor", "node", "pid")
    assert all(tuple(doc)[:7] == keys for doc in docs), [d for d in docs if tuple(d)[:7] != keys]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", d["time"]) for d in docs)
    items = {d["item"]: d for d in docs if d.get("event") == "item"}
    good, corrupt = fleet_run["ids"][:2], fleet_run["ids"][2]
    assert set(items) == {*good, corrupt}, items
    for item_id, path in zip(good, fleet_run["paths"], strict=False):
        doc = items[item_id]
        assert (doc["level"], doc["logger"], doc["outcome"]) == ("INFO", PIPELINE, "done")
        assert (doc["uri"], doc["attempt"], doc["frames"]) == (str(path), 1, 16)
        assert doc["seconds"] > 0
    assert (items[corrupt]["outcome"], items[corrupt]["class"]) == ("dead", "corrupt")
    for doc in items.values():  # from the decode actor, on its Ray node
        assert doc["actor"].startswith("decoder-") and re.fullmatch(r"[0-9a-f]{56}", doc["node"])
    # the driver's own lines (no actor): the inference actor ready before any decode actor
    # starts, and the fleet stopping on SIGTERM
    pools = [d for d in docs if d["logger"] == "framefleet.coordinator.pools"]
    ready = [d for d in pools if d["message"].startswith("inference actor inference-")]
    assert ready and all(d["actor"] is None and " ready (pid " in d["message"] for d in ready)
    stopping = [d for d in docs if d["logger"] == "framefleet.coordinator.driver"]
    assert [d["message"] for d in stopping] == [
        "stopping the fleet: its decode actors release what they hold"
    ]


def test_in_text_each_actor_line_has_its_time_level_logger_actor_and_node(
    fleet_run: dict[str, Any],
) -> None:
    lines = _coordinate_until_settled(fleet_run)
    good = fleet_run["ids"][0]
    head = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO framefleet\.workers\.pipeline"
    where = r"\[decoder-[0-9a-f]+-\d+ node=[0-9a-f]{8}\]"
    done = [line for line in lines if f"item {good} done" in line]
    assert len(done) == 1, lines[-40:]
    uri = re.escape(str(fleet_run["paths"][0]))
    assert re.fullmatch(
        rf"{head} {where} item {good} done: {uri}"
        r" \(attempt 1, \d+\.\d s; 2 chunks, 16 frames inferred\)",
        done[0],
    ), done[0]
