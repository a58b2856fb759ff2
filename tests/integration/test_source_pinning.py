"""What a video's outputs are made of is what its first attempt fetched: an item enqueued
without an etag is pinned to the object its first checkpoint was made from (S3's ETag, an
HTTP server's ETag or a digest of the body, a local file's size, mtime and inode), and a later
attempt that finds another object there starts over on it instead of resuming: one output
never holds frames of two videos. Real queue, real videos, moto's S3, an HTTP server."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from redis import Redis

from framefleet.queue import NewItem, Queue, State
from framefleet.settings import (
    ModelSettings,
    PipelineSettings,
    QueueSettings,
    Settings,
    SourceSettings,
)
from framefleet.workers.outputs import OutputStore
from framefleet.workers.pipeline import LocalInference, VideoJob
from framefleet.workers.sources import s3_client
from tests.support.jobs import StopAfter
from tests.support.plugin_model import MeanColour
from tests.support.servers import FileServer, moto_s3_server
from tests.support.videos import write_video

RED, BLUE = (220, 20, 20), (20, 20, 220)


def _video(path: Path, colour: tuple[int, int, int]) -> Path:
    return write_video(path, frames=32, image=lambda i, w, h: np.full((h, w, 3), colour, np.uint8))


def _settings(tmp_path: Path, out: str, source: SourceSettings) -> Settings:
    return Settings(
        queue=QueueSettings(lease_s=30),
        source=source,
        model=ModelSettings(plugin="tests.support.plugin_model:load"),
        pipeline=PipelineSettings(out=out, chunk_frames=8, max_inflight_chunks=1),
    )


def _twice(
    client: Redis, settings: Settings, uri: str, replace_source: Callable[[], object]
) -> tuple[Any, dict[str, Any], list[str]]:
    """Enqueue `uri` without an etag; the first attempt is preempted after two chunks;
    `replace_source()`; the second attempt runs to the end. Returns the item, the manifest
    and the colour of every frame of the detections."""
    store = OutputStore(settings.pipeline.out, settings.source)
    q = Queue(client, settings.queue)
    [item_id] = q.enqueue([uri])
    model, stop = MeanColour(), threading.Event()
    [first] = q.claim(1, "decoder-a-0")
    inference = StopAfter(LocalInference(model, store), 2, stop)
    out1 = VideoJob(q, store, inference, settings, stop=stop).run(first)
    assert out1.status == "released", out1
    assert len(q.chunks(item_id)) >= 2  # checkpoints to resume from
    replace_source()
    [again] = q.claim(1, "decoder-b-0")
    out2 = VideoJob(q, store, LocalInference(model, store), settings).run(again)
    assert out2.status == "acked", out2
    video = store.video_of(out2.result)
    assert video is not None
    det = store.read_detections(video).to_pydict()
    colours = ["red" if e[0] > e[2] else "blue" for e in det["embedding"]]
    assert det["frame_index"] == sorted(det["frame_index"]) and len(colours) == 32
    return q.get(item_id), store.read_manifest(video), colours


def _resumed(
    client: Redis, settings: Settings, uri: str, touch: Callable[[], object] = lambda: None
) -> dict[str, Any]:
    item, manifest, colours = _twice(client, settings, uri, touch)
    assert item.state is State.DONE and set(colours) == {"red"}
    return manifest


def test_an_s3_object_replaced_between_attempts_is_processed_whole_never_mixed(
    tmp_path: Path, valkey_client: Redis, aws: None
) -> None:
    red, blue = _video(tmp_path / "red.mp4", RED), _video(tmp_path / "blue.mp4", BLUE)
    with moto_s3_server() as endpoint:
        source = SourceSettings(s3_endpoint_url=endpoint)
        s3 = s3_client(source)
        for bucket in ("videos-in", "videos-out"):
            s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket="videos-in", Key="cam.mp4", Body=red.read_bytes())
        settings = _settings(tmp_path, "s3://videos-out/run", source)

        def overwrite() -> None:
            s3.put_object(Bucket="videos-in", Key="cam.mp4", Body=blue.read_bytes())

        item, manifest, colours = _twice(
            valkey_client, settings, "s3://videos-in/cam.mp4", overwrite
        )
        assert set(colours) == {"blue"}, colours  # not frames 0-15 red and 16-31 blue
        assert manifest["resumed_chunks"] == []
        blue_etag = s3.head_object(Bucket="videos-in", Key="cam.mp4")["ETag"]
        assert manifest["etag"] == blue_etag and item.state is State.DONE

        # an object left alone is resumed from its checkpoints, as before
        s3.put_object(Bucket="videos-in", Key="same.mp4", Body=red.read_bytes())
        manifest = _resumed(valkey_client, settings, "s3://videos-in/same.mp4")
        assert manifest["resumed_chunks"], manifest


def test_a_local_file_replaced_between_attempts_is_processed_whole_never_mixed(
    tmp_path: Path, valkey_client: Redis
) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    red = _video(videos / "cam.mp4", RED)
    blue = _video(tmp_path / "blue.mp4", BLUE)
    settings = _settings(tmp_path, str(tmp_path / "out"), SourceSettings(allowed_roots=(videos,)))

    def overwrite() -> None:  # what a copy tool does: a new file renamed over the old one
        os.replace(blue, red)

    item, manifest, colours = _twice(valkey_client, settings, str(red), overwrite)
    assert set(colours) == {"blue"}, colours
    assert manifest["resumed_chunks"] == [] and item.state is State.DONE

    same = _video(videos / "same.mp4", RED)
    manifest = _resumed(valkey_client, settings, str(same))
    assert manifest["resumed_chunks"], manifest

    # written again in place with the same bytes: its mtime changed, so it is started over
    # (the bytes could have differed); what matters is that nothing is mixed
    again = _video(videos / "again.mp4", RED)
    data = again.read_bytes()
    manifest = _resumed(valkey_client, settings, str(again), lambda: again.write_bytes(data))
    assert manifest["resumed_chunks"] == []


def test_an_http_video_replaced_between_attempts_is_processed_whole_never_mixed(
    tmp_path: Path, valkey_client: Redis
) -> None:
    """The test server sends no ETag: the pin is a digest of the body."""
    root = tmp_path / "served"
    root.mkdir()
    red = _video(root / "cam.mp4", RED)
    blue = _video(tmp_path / "blue.mp4", BLUE)
    source = SourceSettings(allow_private_urls="127.0.0.1/32")
    settings = _settings(tmp_path, str(tmp_path / "out"), source)
    with FileServer(root) as server:
        item, manifest, colours = _twice(
            valkey_client, settings, f"{server.url}/cam.mp4", lambda: os.replace(blue, red)
        )
        assert set(colours) == {"blue"}, colours
        assert manifest["resumed_chunks"] == [] and item.state is State.DONE
        assert str(manifest["etag"]).startswith("sha256:")

        _video(root / "same.mp4", RED)
        manifest = _resumed(valkey_client, settings, f"{server.url}/same.mp4")
        assert manifest["resumed_chunks"], manifest


@pytest.mark.parametrize("given", [True, False])
def test_an_etag_given_at_enqueue_still_makes_a_changed_object_a_dead_letter(
    tmp_path: Path, valkey_client: Redis, aws: None, given: bool
) -> None:
    """What the enqueuer pinned is theirs: another object there is `changed`, whereas a pin
    framefleet made itself is only a reason to start over."""
    red, blue = _video(tmp_path / "red.mp4", RED), _video(tmp_path / "blue.mp4", BLUE)
    with moto_s3_server() as endpoint:
        source = SourceSettings(s3_endpoint_url=endpoint)
        s3 = s3_client(source)
        s3.create_bucket(Bucket="videos-in")
        etag = s3.put_object(Bucket="videos-in", Key="cam.mp4", Body=red.read_bytes())["ETag"]
        s3.put_object(Bucket="videos-in", Key="cam.mp4", Body=blue.read_bytes())
        settings = _settings(tmp_path, str(tmp_path / "out"), source)
        store = OutputStore(settings.pipeline.out, source)
        q = Queue(valkey_client, settings.queue)
        [item_id] = q.enqueue([NewItem("s3://videos-in/cam.mp4", etag=etag if given else None)])
        [lease] = q.claim(1, "decoder-a-0")
        out = VideoJob(q, store, LocalInference(MeanColour(), store), settings).run(lease)
        item = q.get(item_id)
        assert item is not None
        if given:
            assert out.status == "dead" and item.dead_class == "changed", out
        else:
            assert out.status == "acked" and item.state is State.DONE, out
