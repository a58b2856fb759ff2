"""One fleet, one set of weights: the driver pins what `--model` names (a local directory's
digest, a hub model's commit), the pin is in the configuration hash, and an inference actor
whose directory holds other weights refuses to start. Retrained weights saved under the same
directory make new outputs: never chunks of two weight sets in one video, never the old
outputs taken as done. Real tiny DETRs written with save_pretrained, the real queue."""

from __future__ import annotations

import shutil
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from framefleet.queue import Queue, State
from framefleet.settings import (
    ModelSettings,
    PipelineSettings,
    QueueSettings,
    Settings,
    SourceSettings,
)
from framefleet.workers.model import ModelLoadError, load_model, pin_weights
from framefleet.workers.outputs import OutputStore
from framefleet.workers.pipeline import LocalInference, VideoJob
from tests.support.jobs import StopAfter
from tests.support.models import write_pinned_detr
from tests.support.videos import write_video

BOX_A, BOX_B = (0.3, 0.3, 0.2, 0.2), (0.7, 0.7, 0.2, 0.2)


def _retrain(directory: Path, box: tuple[float, float, float, float], label: int) -> None:
    """New weights saved under the same directory, as a training job's save_pretrained does."""
    shutil.rmtree(directory, ignore_errors=True)
    write_pinned_detr(directory, box, label)


def _fleet(tmp_path: Path, client: Redis, weights: Path, prefix: str) -> dict[str, Any]:
    """What a fleet's driver starts with: the settings with the weights pinned, a queue (of
    its own key prefix: a fresh start, as after retention), the model its actors load."""
    videos = tmp_path / "videos"
    videos.mkdir(exist_ok=True)
    settings = Settings(
        queue=QueueSettings(lease_s=30, prefix=prefix),
        source=SourceSettings(allowed_roots=(videos,)),
        model=pin_weights(ModelSettings(model=str(weights), score_threshold=0.5)),
        pipeline=PipelineSettings(out=str(tmp_path / "out"), chunk_frames=8, max_inflight_chunks=1),
    )
    store = OutputStore(settings.pipeline.out, settings.source)
    model = load_model(settings.model)
    return {
        "settings": settings,
        "store": store,
        "queue": Queue(client, settings.queue),
        "inference": LocalInference(model, store),
        "videos": videos,
    }


def _labels(fleet: dict[str, Any], result: str) -> set[int]:
    store: OutputStore = fleet["store"]
    video = store.video_of(result)
    assert video is not None
    return set(store.read_detections(video).to_pydict()["label_id"])


def test_the_pin_of_a_directory_changes_with_its_weights_only(tmp_path: Path) -> None:
    weights = write_pinned_detr(tmp_path / "m", BOX_A, 1)
    first = pin_weights(ModelSettings(model=str(weights)))
    assert first.weights.startswith("sha256:")
    assert pin_weights(ModelSettings(model=str(weights))).weights == first.weights
    _retrain(weights, BOX_B, 2)
    second = pin_weights(ModelSettings(model=str(weights)))
    assert second.weights != first.weights
    p = PipelineSettings()
    assert p.config_hash(first) != p.config_hash(second)


def test_retrained_weights_under_the_same_directory_are_not_answered_with_old_outputs(
    tmp_path: Path, valkey_client: Redis
) -> None:
    weights = write_pinned_detr(tmp_path / "m", BOX_A, 1)
    old = _fleet(tmp_path, valkey_client, weights, "ff-a")
    video = write_video(old["videos"] / "v.mp4", frames=16)
    [item_id] = old["queue"].enqueue([str(video)])
    [lease] = old["queue"].claim(1, "decoder-a-0")
    out = VideoJob(old["queue"], old["store"], old["inference"], old["settings"]).run(lease)
    assert out.status == "acked" and _labels(old, out.result) == {1}

    _retrain(weights, BOX_B, 2)
    new = _fleet(tmp_path, valkey_client, weights, "ff-b")  # the item is gone: enqueued anew
    new["queue"].enqueue([str(video)])
    [lease] = new["queue"].claim(1, "decoder-b-0")
    out = VideoJob(new["queue"], new["store"], new["inference"], new["settings"]).run(lease)
    assert out.status == "acked", out  # not already_done with the old weights' outputs
    assert _labels(new, out.result) == {2}
    item = new["queue"].get(item_id)
    assert item is not None and item.state is State.DONE


def test_a_video_interrupted_across_a_weights_change_is_never_mixed(
    tmp_path: Path, valkey_client: Redis
) -> None:
    weights = write_pinned_detr(tmp_path / "m", BOX_A, 1)
    old = _fleet(tmp_path, valkey_client, weights, "ff")
    video = write_video(old["videos"] / "v.mp4", frames=32)
    q: Queue = old["queue"]
    [item_id] = q.enqueue([str(video)])
    [lease] = q.claim(1, "decoder-a-0")
    stop = threading.Event()
    inference = StopAfter(old["inference"], 2, stop)
    out = VideoJob(q, old["store"], inference, old["settings"], stop=stop).run(lease)
    assert out.status == "released" and len(q.chunks(item_id)) >= 2

    _retrain(weights, BOX_B, 2)
    new = _fleet(tmp_path, valkey_client, weights, "ff")  # the next fleet, the same queue
    [lease] = new["queue"].claim(1, "decoder-b-0")
    out = VideoJob(new["queue"], new["store"], new["inference"], new["settings"]).run(lease)
    assert out.status == "acked", out
    assert _labels(new, out.result) == {2}  # not chunks 0-1 of label 1 and the rest of 2
    manifest = new["store"].read_manifest(new["store"].video_of(out.result))
    assert manifest["resumed_chunks"] == []


def test_an_inference_actor_refuses_weights_other_than_its_fleets(tmp_path: Path) -> None:
    weights = write_pinned_detr(tmp_path / "m", BOX_A, 1)
    pinned = pin_weights(ModelSettings(model=str(weights)))
    load_model(pinned)  # the pinned weights load
    _retrain(weights, BOX_B, 2)
    with pytest.raises(ModelLoadError, match="changed since this fleet pinned them"):
        load_model(pinned)
    load_model(replace(pinned, weights=""))  # unpinned (its driver could not see them)
