"""Previews (FRAMEFLEET_PREVIEWS, workers/previews.py): evenly spaced frames of each video,
drawn with their boxes by the inference side from the frames it holds, through a real
VideoJob, a DETR pinned to a known box and a real output directory; the pixels checked."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from redis import Redis

from framefleet.settings import ModelSettings
from framefleet.workers import previews
from framefleet.workers.decode import Chunk
from framefleet.workers.model import FrameModel, load_model
from framefleet.workers.pipeline import LocalInference, Pending, VideoJob
from tests.support.jobs import job_env
from tests.support.models import write_pinned_detr
from tests.support.videos import write_video

W, H = 320, 192
BOX = (0.25 * W, 0.25 * H, 0.5 * W, 0.75 * H)  # the pinned model's box, in source pixels


def _grey(i: int, width: int, height: int) -> np.ndarray:
    grey: np.ndarray = np.full((height, width, 3), 110, np.uint8)
    return grey


@pytest.fixture(scope="module")
def pinned(tmp_path_factory: pytest.TempPathFactory) -> FrameModel:
    path = write_pinned_detr(tmp_path_factory.mktemp("pinned"), (0.375, 0.5, 0.25, 0.5), 2)
    return load_model(ModelSettings(model=str(path), score_threshold=0.5))


class Decodes:
    """Counts the frames each chunk handed to inference holds (none decoded twice)."""

    def __init__(self, inner: LocalInference) -> None:
        self.inner, self.schema, self.model_name = inner, inner.schema, inner.model_name
        self.frames: list[int] = []

    def submit(self, item_id: str, video: str, chunk: Chunk) -> Pending:
        self.frames += chunk.frame_indices.tolist()
        return self.inner.submit(item_id, video, chunk)


def _red(pixels: np.ndarray) -> np.ndarray:
    """Where a pixel is the boxes' red (JPEG's blur allowed for)."""
    r, g, b = (pixels[..., k].astype(int) for k in range(3))
    red: np.ndarray = (r - g > 80) & (r - b > 80)
    return red


def test_previews_are_evenly_spaced_frames_with_the_boxes_where_the_detections_say(
    tmp_path: Path, valkey_client: Redis, pinned: FrameModel
) -> None:
    """FRAMEFLEET_PREVIEWS=4 over 40 frames in chunks of 8: frames 5, 15, 25 and 35, each a
    JPEG 320 pixels wide, listed in the manifest; the box's outline is red where the model
    put it (a quarter to a half of the width, a quarter to three quarters of the height),
    and nowhere else; inside and outside it the frame's own grey. Every frame went to
    inference once: the previews are drawn from the frames it already had."""
    env = job_env(tmp_path, valkey_client, pinned)
    settings = env["settings"]
    settings = replace(settings, pipeline=replace(settings.pipeline, previews=4))
    video = write_video(env["videos"] / "grey.mp4", frames=40, width=W, height=H, image=_grey)
    q, store = env["queue"], env["store"]
    q.enqueue([str(video)])
    [lease] = q.claim(1, "decoder-1")
    counting = Decodes(LocalInference(pinned, store))
    out = VideoJob(q, store, counting, settings).run(lease)
    assert out.status == "acked"
    assert sorted(counting.frames) == list(range(40))
    manifest = store.read_result(out.result or "")
    names = ["00000005.jpg", "00000015.jpg", "00000025.jpg", "00000035.jpg"]
    assert manifest["previews"] == names
    x0, y0, x1, y1 = (round(v) for v in BOX)
    for name in names:
        image = Image.open(io.BytesIO(store.get(f"{store.video_of(out.result)}/previews/{name}")))
        assert image.format == "JPEG" and image.size == (W, H)
        px = np.asarray(image.convert("RGB"))
        red = _red(px)
        rows = slice(y0 + 25, y1 - 5)  # below the label's patch
        assert red[rows, x0 - 1 : x0 + 2].any(axis=1).all(), name  # the left edge, all along
        assert red[rows, x1 - 1 : x1 + 2].any(axis=1).all(), name  # the right edge
        assert red[y1 - 1 : y1 + 2, x0 + 5 : x1 - 5].any(axis=0).all(), name  # the bottom
        inside = px[y0 + 30 : y1 - 10, x0 + 10 : x1 - 10]
        outside = np.concatenate([px[:, : x0 - 6].reshape(-1, 3), px[:, x1 + 6 :].reshape(-1, 3)])
        for region in (inside, outside):
            assert not _red(region).any() and abs(np.median(region) - 110) <= 6, name


def test_no_previews_unless_asked_and_a_resumed_chunk_keeps_its_own(
    tmp_path: Path, valkey_client: Redis, pinned: FrameModel
) -> None:
    """Without FRAMEFLEET_PREVIEWS nothing is drawn; and the previews of a chunk are written
    before its rows, so a chunk checkpointed before a crash, skipped on the next try, still
    has its preview."""
    env = job_env(tmp_path, valkey_client, pinned)
    q, store = env["queue"], env["store"]
    video = write_video(env["videos"] / "plain.mp4", frames=16, width=W, height=H, image=_grey)
    q.enqueue([str(video)])
    [lease] = q.claim(1, "decoder-1")
    out = VideoJob(q, store, LocalInference(pinned, store), env["settings"]).run(lease)
    assert "previews" not in store.read_result(out.result or "")
    assert not store.keys_under(f"{store.video_of(out.result)}/previews/")

    chunk = Chunk(0, np.stack([_grey(0, W, H)] * 2), np.array([0, 1]), np.zeros(2), (W, H), (1,))
    LocalInference(pinned, store).submit("x", "x/v1", chunk).result()
    assert previews.listed(store, "x/v1") == ["00000001.jpg"] and store.has_chunk("x/v1", 0)


def test_the_frames_chosen_spread_over_the_video_and_fall_in_their_chunks() -> None:
    assert previews.targets(100, 10, 4) == {12, 37, 62, 87}
    assert previews.targets(3, 10, 8) == {0, 1, 2}  # no more than there are frames
    assert previews.targets(None, 10, 3) == {0, 10, 20}  # unknown length: first of each chunk
    assert previews.targets(100, 10, 0) == frozenset()
    chosen = previews.targets(100, 10, 4)
    assert [previews.positions(chosen, k, 10, 10) for k in (0, 1, 3, 6, 8)] == [
        (),
        (2,),
        (7,),
        (2,),
        (7,),
    ]
    assert previews.positions({12}, 1, 10, 2) == ()  # a short last chunk: not in it
