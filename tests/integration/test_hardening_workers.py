"""Regression tests of the hardening review (issue 12) at the workers' level, each named after
its finding: one video from lease to ack (VideoJob) with in-process inference, against the
real queue, real videos, real servers (moto's S3, an HTTP server) and a real file system."""

from __future__ import annotations

import contextlib
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from redis import Redis

from framefleet.queue import NewItem, Queue, State
from framefleet.settings import (
    PipelineSettings,
    Settings,
    SourceSettings,
)
from framefleet.workers.model import FrameModel
from framefleet.workers.outputs import OutputStore, item_dir
from framefleet.workers.pipeline import LocalInference, VideoJob
from tests.support.jobs import job_env
from tests.support.servers import moto_s3_server
from tests.support.videos import write_video


@pytest.fixture
def env(tmp_path: Path, valkey_client: Redis, model: FrameModel) -> dict[str, Any]:
    """Short backoffs (the bug test waits them out), one fetch attempt."""
    made = job_env(tmp_path, valkey_client, model, backoff_base_s=0.1, backoff_max_s=0.2)
    settings = made["settings"]
    made["settings"] = replace(settings, source=replace(settings.source, fetch_attempts=1))
    return made


def run_one(env: dict[str, Any], uri: str, **item: Any) -> tuple[str, Any]:
    """Enqueue one video, claim it, run it: (the outcome's status, the item after)."""
    q: Queue = env["queue"]
    [item_id] = q.enqueue([NewItem(uri, **item)])
    [lease] = q.claim(1, "decoder-1")
    job = VideoJob(q, env["store"], env["inference"], env["settings"])
    outcome = job.run(lease)
    return outcome.status, q.get(item_id)


# -- finding 9: every error is the item's, the infrastructure's, or a bug --------------------


def test_f9_an_id_of_long_unicode_gets_an_output_name_within_file_system_limits(
    env: dict[str, Any],
) -> None:
    """An id of 100 'é' (200 bytes, a valid id) was percent-encoded into a 600-byte
    directory name, and is_complete raised ENAMETOOLONG out of the job."""
    video = write_video(env["videos"] / "a.mp4", frames=10)
    long_id = "é" * 100
    assert len(item_dir(long_id).encode()) <= 255
    assert item_dir(long_id) != item_dir("é" * 99 + "e")  # still one name per id
    status, item = run_one(env, str(video), id=long_id)
    assert status == "acked" and item.state is State.DONE


def test_f9_bad_local_paths_are_dead_letters_with_a_class(env: dict[str, Any]) -> None:
    """A path component over 255 bytes and a symlink loop inside an allowed root raised
    OSError and RuntimeError out of the job, which nothing caught."""
    root = env["videos"]
    (root / "loop.mp4").symlink_to(root / "loop.mp4")
    for uri, cls in ((f"{root}/{'a' * 300}.mp4", "not_found"), (f"{root}/loop.mp4", "not_found")):
        status, item = run_one(env, uri)
        assert status == "dead" and item.state is State.DEAD, uri
        assert item.dead_class == cls and item.dead_reason, (uri, item.dead_reason)


def test_f9_a_full_temporary_disk_releases_the_video_without_an_attempt(
    env: dict[str, Any], tmp_path: Path
) -> None:
    """ENOSPC while fetching (an object that did not say its length) is the node's trouble,
    not the video's: it goes back to the queue (after a short delay) with no attempt."""
    from tests.support.servers import FileServer

    tmpfs = tmp_path / "tmpfs"
    tmpfs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(tmpfs)], check=True)
    try:
        (tmp_path / "big.mp4").write_bytes(np.random.default_rng(0).bytes(256 * 1024))
        source = replace(env["settings"].source, tmp_dir=tmpfs, allow_private_urls="127.0.0.0/8")
        env["settings"] = replace(env["settings"], source=source)
        with FileServer(tmp_path) as http:
            status, item = run_one(env, f"{http.url}/nolength/big.mp4")
        assert status == "released" and item.state in (State.DELAYED, State.QUEUED)
        assert item.attempts == 0 and "No space left" in (item.release_reason or "")
        assert not list(tmpfs.iterdir())  # the partial download is gone
    finally:
        subprocess.run(["umount", str(tmpfs)], check=True)


def test_f9_an_unreachable_output_store_releases_the_video_without_an_attempt(
    env: dict[str, Any], aws: None
) -> None:
    """S3 network errors escaped OutputStore.exists: the thread died with the lease held."""
    video = write_video(env["videos"] / "b.mp4", frames=10)
    with moto_s3_server() as endpoint:
        pass  # the server is gone: its port refuses connections
    source = replace(env["settings"].source, s3_endpoint_url=endpoint, fetch_timeout_s=1)
    env["settings"] = replace(
        env["settings"],
        source=source,
        pipeline=replace(env["settings"].pipeline, out="s3://out/run"),
    )
    env["store"] = OutputStore("s3://out/run", source)
    status, item = run_one(env, str(video))
    assert status == "released" and item.attempts == 0 and item.state is not State.DEAD
    assert "s3://out/run" in (item.release_reason or "")


def test_f9_a_403_on_head_of_a_missing_output_is_absent(env: dict[str, Any], aws: None) -> None:
    """Without s3:ListBucket, S3 answers HEAD on a missing key with 403: that means absent,
    so the video is processed (it died at its first check as 'forbidden')."""
    from framefleet.workers.sources import s3_client

    with moto_s3_server() as endpoint:
        source = SourceSettings(s3_endpoint_url=endpoint)
        s3_client(source).create_bucket(Bucket="out")
        with _head_forbidden(endpoint) as proxy:
            store = OutputStore("s3://out/run", replace(source, s3_endpoint_url=proxy))
            assert store.exists("missing/key") is False


@contextlib.contextmanager
def _head_forbidden(endpoint: str) -> Iterator[str]:
    """A real HTTP proxy in front of moto that answers every HEAD with 403 (as S3 does for a
    missing key to a role without s3:ListBucket) and passes the rest on."""
    import http.client
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import urlparse

    target = urlparse(endpoint)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self.send_response(403)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            conn = http.client.HTTPConnection(str(target.hostname), target.port, timeout=10)
            conn.request(self.command, self.path, body, dict(self.headers))
            reply = conn.getresponse()
            data = reply.read()
            self.send_response(reply.status)
            for k, v in reply.getheaders():
                if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = _forward

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_f9_a_bug_is_logged_released_and_the_item_dies_after_max_attempts(
    env: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """An exception nobody classified (here: the model plugin raises KeyError) is a bug: the
    traceback is logged, the item goes back without an attempt, and after max_attempts such
    bugs it is dead with the class internal_error, so a deterministic bug cannot loop."""

    class Buggy(LocalInference):
        def submit(self, item_id: str, video: str, chunk: Any) -> Any:
            raise KeyError("no such field")

    video = write_video(env["videos"] / "c.mp4", frames=10)
    env["inference"] = Buggy(env["inference"].model, env["store"])
    q: Queue = env["queue"]
    [item_id] = q.enqueue([str(video)])
    statuses = []
    for _ in range(env["settings"].queue.max_attempts):
        q.reap()
        leases = q.claim(1, "decoder-1", block=2.0)
        assert leases, q.get(item_id)
        job = VideoJob(q, env["store"], env["inference"], env["settings"])
        statuses.append(job.run(leases[0]).status)
    item = q.get(item_id)
    assert statuses == ["error"] * len(statuses)
    assert item is not None and item.state is State.DEAD and item.dead_class == "internal_error"
    assert item.attempts == 0 and "KeyError" in (item.dead_reason or "")
    assert "Traceback" in caplog.text and "KeyError" in caplog.text


# -- findings 7 and 8: outputs are versioned; a lost chunk is redone -------------------------


class Counting(LocalInference):
    def __init__(self, inner: LocalInference, stop_after: int = 0) -> None:
        super().__init__(inner.model, inner.store)
        self.stop_after, self.submitted = stop_after, list[int]()
        self.stop = threading.Event()

    def submit(self, item_id: str, video: str, chunk: Any) -> Any:
        self.submitted.append(chunk.index)
        handle = super().submit(item_id, video, chunk)
        if len(self.submitted) == self.stop_after:
            self.stop.set()
        return handle


def test_f7_a_configuration_change_never_mixes_chunks_of_two_configurations(
    env: dict[str, Any],
) -> None:
    """Half a video under one configuration (2 of 4 chunks checkpointed, then stopped), the
    rest under another (here another score threshold): the second does all four chunks into
    its own version, instead of skipping the two the first wrote."""
    video = write_video(env["videos"] / "a.mp4", frames=30)  # 4 chunks of 8
    q: Queue = env["queue"]
    [item_id] = q.enqueue([str(video)])
    first = Counting(env["inference"], stop_after=2)
    [lease] = q.claim(1, "decoder-1")
    job = VideoJob(q, env["store"], first, env["settings"], stop=first.stop)
    assert job.run(lease).status == "released" and q.chunks(item_id) == {0, 1}
    other = replace(env["settings"], model=replace(env["settings"].model, score_threshold=0.5))
    second = Counting(env["inference"])
    [again] = q.claim(1, "decoder-2")
    out = VideoJob(q, env["store"], second, other).run(again)
    assert out.status == "acked" and second.submitted == [0, 1, 2, 3]
    manifest = env["store"].read_result(out.result)
    assert manifest["config_hash"] == other.pipeline.config_hash(other.model)
    assert manifest["resumed_chunks"] == []


def test_f7_a_source_that_changed_since_it_was_enqueued_is_refused(
    env: dict[str, Any], aws: None, tmp_path: Path
) -> None:
    """The item carries the S3 object's etag: the object was overwritten since (a new
    etag), so the fetch is refused (IfMatch) instead of processing another video under the
    old one's name."""
    from framefleet.workers.sources import s3_client

    first = write_video(tmp_path / "first.mp4", frames=10)
    second = write_video(tmp_path / "second.mp4", frames=20)
    with moto_s3_server() as endpoint:
        source = replace(env["settings"].source, s3_endpoint_url=endpoint)
        client = s3_client(source)
        client.create_bucket(Bucket="videos-in")
        etag = client.put_object(Bucket="videos-in", Key="cam.mp4", Body=first.read_bytes())["ETag"]
        client.put_object(Bucket="videos-in", Key="cam.mp4", Body=second.read_bytes())
        env["settings"] = replace(env["settings"], source=source)
        status, item = run_one(env, "s3://videos-in/cam.mp4", etag=etag)
    assert status == "dead" and item.dead_class == "changed", item.dead_reason
    assert "changed since it was enqueued" in (item.dead_reason or "")


def test_f8_a_checkpointed_chunk_whose_file_is_gone_is_done_again(env: dict[str, Any]) -> None:
    """Chunks 0 and 1 checkpointed, then chunk 0's file lost (a node-local disk, a crash):
    the next worker does chunk 0 again instead of the video dying at finalize."""
    video = write_video(env["videos"] / "b.mp4", frames=30)
    q: Queue = env["queue"]
    [item_id] = q.enqueue([str(video)])
    first = Counting(env["inference"], stop_after=2)
    [lease] = q.claim(1, "decoder-1")
    assert VideoJob(q, env["store"], first, env["settings"], stop=first.stop).run(lease).status == (
        "released"
    )
    store: OutputStore = env["store"]
    [chunk0] = list(store.root.glob(f"{item_id}/*/chunk-0.parquet"))
    chunk0.unlink()
    second = Counting(env["inference"])
    [again] = q.claim(1, "decoder-2")
    out = VideoJob(q, store, second, env["settings"]).run(again)
    assert out.status == "acked" and second.submitted == [0, 2, 3]
    assert store.read_result(out.result)["resumed_chunks"] == [1]


def test_f8_a_relative_or_unshared_output_root_is_refused_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a cluster a relative FRAMEFLEET_OUT would be each node's own directory, and an
    absolute one on a node-local disk is not seen by the other nodes: both refused at start
    with a message that says what to give instead."""
    from framefleet.coordinator.driver import _with_output_root
    from framefleet.workers.outputs import OutputRootError, check_root

    monkeypatch.chdir(tmp_path)
    settings = Settings(pipeline=PipelineSettings(out="results"))
    with pytest.raises(OutputRootError, match=r"relative.*every node shares"):
        _with_output_root(settings, "10.0.0.1:6379", "g1")
    local = _with_output_root(settings, None, "g1")  # one machine: this directory
    assert local.pipeline.out == str(tmp_path / "results")
    shared = tmp_path / "shared"
    marked = _with_output_root(
        replace(settings, pipeline=PipelineSettings(out=str(shared))), "x", "g2"
    )
    check_root(marked.pipeline.out, marked.pipeline.out_marker)  # seen: fine
    elsewhere = tmp_path / "another-node"
    elsewhere.mkdir()
    with pytest.raises(OutputRootError, match=r"not shared.*does not see"):
        check_root(str(elsewhere), marked.pipeline.out_marker)


# -- finding 10: the allow-list and the network cannot be bypassed ---------------------------


def test_f10_a_playlist_in_an_allowed_root_cannot_read_a_video_outside_it(
    env: dict[str, Any], tmp_path: Path
) -> None:
    """An HLS playlist (here named .mp4: FFmpeg probes the content) inside the allowed root
    names a video outside it by file://. A direct read of that video is refused; through
    the playlist FFmpeg read it. The demuxers are now limited to single-file containers and
    the protocols to the file itself."""
    secret = write_video(tmp_path / "secret.mp4", frames=10)
    playlist = (
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:0\n"
        f"#EXTINF:10.0,\nfile://{secret}\n#EXT-X-ENDLIST\n"
    )
    for name in ("evil.m3u8", "evil.mp4"):
        (env["videos"] / name).write_text(playlist)
        status, item = run_one(env, str(env["videos"] / name))
        assert status == "dead" and item.state is State.DEAD, (name, item.dead_reason)
        assert item.dead_class == "not_a_video", item.dead_reason
    status, item = run_one(env, str(secret))
    assert status == "dead" and item.dead_class == "forbidden"


def test_f10_urls_to_private_addresses_are_refused_unless_allowed(
    env: dict[str, Any], tmp_path: Path
) -> None:
    """http(s) URIs to loopback, link-local (the cloud metadata address) and private ranges
    are refused before any connection, and so is a redirect to one, unless
    FRAMEFLEET_ALLOW_PRIVATE_URLS allows them (all, or the networks it lists)."""
    from tests.support.servers import FileServer

    write_video(tmp_path / "clip.mp4", frames=10)
    with FileServer(tmp_path) as http:
        for uri in (
            f"{http.url}/clip.mp4",
            "http://169.254.169.254/latest/meta-data/x.mp4",
            "http://10.1.2.3/x.mp4",
            "http://[::1]/x.mp4",
            "http://localhost/x.mp4",
        ):
            status, item = run_one(env, uri)
            assert status == "dead" and item.dead_class == "forbidden", (uri, item.dead_reason)
            assert "private" in (item.dead_reason or ""), item.dead_reason
        only_loopback = replace(env["settings"].source, allow_private_urls="127.0.0.1/32")
        env["settings"] = replace(env["settings"], source=only_loopback)
        status, item = run_one(env, f"{http.url}/clip.mp4", id="allowed-now")
        assert status == "acked", item.last_error
        for target in ("http://169.254.169.254/latest/meta-data/", "http://10.1.2.3/x.mp4"):
            status, item = run_one(env, f"{http.url}/redirect?to={target}")
            assert status == "dead" and item.dead_class == "forbidden", item.dead_reason
            assert "redirect" in (item.dead_reason or ""), item.dead_reason


# -- finding 15: limits on frame size, frame count, duration and bytes ------------------------


class Shapes(LocalInference):
    def __init__(self, inner: LocalInference) -> None:
        super().__init__(inner.model, inner.store)
        self.shapes: list[tuple[int, ...]] = []

    def submit(self, item_id: str, video: str, chunk: Any) -> Any:
        self.shapes.append(tuple(chunk.images.shape))
        return super().submit(item_id, video, chunk)


def test_f15_frames_are_decoded_at_most_at_the_models_input_size(env: dict[str, Any]) -> None:
    """With no size set, a video larger than the model's input (DETR takes at most 1333 px
    on its longest side) is resized on decode, so a chunk of 8K frames cannot fill an actor's
    memory; the boxes are still reported in the source's pixels."""
    video = write_video(env["videos"] / "big.mp4", frames=8, width=1600, height=900)
    shapes = Shapes(env["inference"])
    env["inference"] = shapes
    status, item = run_one(env, str(video))
    assert status == "acked", item.last_error
    assert shapes.shapes == [(8, 750, 1333, 3)]
    manifest = env["store"].read_result(item.result)
    assert manifest["source_size"] == [1600, 900]


@pytest.mark.parametrize(
    ("limit", "value", "video"),
    [
        ("max_pixels", 96 * 64 - 1, {"frames": 10}),
        ("max_frames", 20, {"frames": 40}),
        ("max_duration_s", 1.0, {"frames": 40}),  # 40 frames at 15 fps: 2.7 s
    ],
)
def test_f15_a_video_over_a_limit_is_a_dead_letter_that_names_it(
    env: dict[str, Any], limit: str, value: float, video: dict[str, Any]
) -> None:
    path = write_video(env["videos"] / f"{limit}.mp4", **video)
    pipeline = replace(env["settings"].pipeline, **{limit: value})
    env["settings"] = replace(env["settings"], pipeline=pipeline)
    status, item = run_one(env, str(path))
    assert status == "dead" and item.dead_class == "over_limit", item.dead_reason
    assert limit in (item.dead_reason or ""), item.dead_reason


def test_f15_an_announced_size_over_the_limit_is_refused_before_any_fetch(
    env: dict[str, Any],
) -> None:
    """The item says it is 1 TB: dead at once (too_big), no download tried (the S3 endpoint
    here does not even exist)."""
    source = replace(env["settings"].source, s3_endpoint_url="http://127.0.0.1:1")
    env["settings"] = replace(env["settings"], source=source)
    status, item = run_one(env, "s3://videos/huge.mp4", size=10**12)
    assert status == "dead" and item.dead_class == "too_big", item.dead_reason
    assert "max_video_bytes" in (item.dead_reason or "")


def test_f15_free_temporary_space_is_checked_before_a_download(
    env: dict[str, Any], tmp_path: Path, aws: None
) -> None:
    """An object larger than the free temporary space is not downloaded at all: the video
    goes back to the queue uncharged (another node may have the room), but not for ever."""
    from framefleet.workers.sources import s3_client

    tmpfs = tmp_path / "tmpfs"
    tmpfs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(tmpfs)], check=True)
    try:
        with moto_s3_server() as endpoint:
            source = replace(env["settings"].source, s3_endpoint_url=endpoint, tmp_dir=tmpfs)
            s3_client(source).create_bucket(Bucket="videos-in")
            body = np.random.default_rng(1).bytes(256 * 1024)
            s3_client(source).put_object(Bucket="videos-in", Key="big.mp4", Body=body)
            env["settings"] = replace(env["settings"], source=source)
            status, item = run_one(env, "s3://videos-in/big.mp4")
            assert status == "released" and item.attempts == 0
            assert "temporary space" in (item.release_reason or ""), item.release_reason
            # larger than the node's whole free space: it would be released on every node
            # like this one for ever (`run` never returned); after max_attempts it is dead
            q: Queue = env["queue"]
            job = VideoJob(q, env["store"], env["inference"], env["settings"])
            for _ in range(env["settings"].queue.max_attempts - 1):
                [lease] = q.claim(1, "decoder-1", block=5)  # once its short delay is over
                status = job.run(lease).status
            item = q.get(item.id)
        assert status == "dead" and item is not None and item.state == "dead", item
        assert item.dead_class == "too_big" and item.attempts == 0, item
        assert "released 5 times" in (item.dead_reason or ""), item.dead_reason
    finally:
        subprocess.run(["umount", str(tmpfs)], check=True)


def test_f6_a_video_without_progress_for_stall_s_is_failed_and_charged_an_attempt(
    env: dict[str, Any],
) -> None:
    """Nothing moves for longer than stall_s (here: before its fetch): the lease is no
    longer renewed, and the item is failed with an attempt counted (class stalled), not
    handed back uncharged through the heartbeat."""
    import time

    video = write_video(env["videos"] / "s.mp4", frames=10)
    s = env["settings"]
    env["settings"] = replace(
        s, queue=replace(s.queue, lease_s=3.0), pipeline=replace(s.pipeline, stall_s=0.5)
    )
    q = Queue(env["queue"].client, env["settings"].queue)
    [item_id] = q.enqueue([str(video)])
    [lease] = q.claim(1, "decoder-1")
    job = VideoJob(q, env["store"], env["inference"], env["settings"])
    deadlines: list[int | None] = []

    def stuck(keeper: Any) -> None:  # nothing moves for 2 s: the keeper renews every 1 s
        for _ in range(20):
            time.sleep(0.1)
            deadlines.append(q.get(item_id).lease_until_ms)  # type: ignore[union-attr]

    outcome = job.run(lease, ready=stuck)
    item = q.get(item_id)
    assert outcome.status == "failed" and item is not None and item.attempts == 1
    assert outcome.cls == "stalled" and "no progress" in (item.last_error or "")
    assert q.metrics().failed.get("stalled") == 1  # counted under its class
    # never renewed: stall_s (0.5 s) ran out before the keeper's first renewal (at 1 s),
    # which it then never sent (its renewals would have moved the deadline at 1 s)
    assert len(set(deadlines)) == 1, deadlines
