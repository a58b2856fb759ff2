"""Detections as comparable rows: from a direct single-process run, and from the pipeline's
outputs. The correctness tests hold the two equal."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from framefleet.queue import Queue
from framefleet.workers.decode import Sampling, chunks, open_decoder
from framefleet.workers.model import FrameModel
from framefleet.workers.outputs import OutputStore

# source frame index, label id, score, box (x0, y0, x1, y1 in source pixels), pts in seconds
Row = tuple[int, int, float, float, float, float, float, float]
BOX = ("x0", "y0", "x1", "y1")


def _f32(x: float) -> float:
    """What the outputs store (float32), so that both sides sort alike."""
    return float(np.float32(x))


def direct_run(model: FrameModel, path: Path, sampling: Sampling) -> list[Row]:
    """The same model on the same frames in one process: no queue, no actors, no outputs."""
    rows: list[Row] = []
    decoder = open_decoder(path, sampling)
    for chunk in chunks(decoder, sampling, 1000):
        for r in model.predict(chunk.images, chunk.source_size):
            k = r["frame"]
            score, x0, y0, x1, y1 = (_f32(r[f]) for f in ("score", *BOX))
            frame, pts = int(chunk.frame_indices[k]), float(chunk.pts_s[k])
            rows.append((frame, int(r["label_id"]), score, x0, y0, x1, y1, pts))
    decoder.close()
    return sorted(rows)


def pipeline_rows(store: OutputStore, queue: Queue, item_id: str) -> list[Row]:
    """The detections of a done item, from the outputs its result (manifest) names."""
    item = queue.get(item_id)
    assert item is not None and item.result, (item_id, item)
    video = store.video_of(item.result)
    assert video is not None, (item.result, store.base)
    table = store.read_detections(video)
    names = ("frame_index", "label_id", "score", *BOX, "pts_s")
    return sorted(zip(*(table[n].to_pylist() for n in names), strict=True))


def assert_same(got: list[Row], want: list[Row]) -> None:
    """Same frames and labels; same scores, boxes (to a hundredth of a pixel) and times."""
    assert [r[:2] for r in got] == [r[:2] for r in want]
    if not got:
        return
    g, w = np.array([r[2:] for r in got]), np.array([r[2:] for r in want])
    np.testing.assert_allclose(g[:, 0], w[:, 0], rtol=1e-5, atol=1e-6, err_msg="scores")
    np.testing.assert_allclose(g[:, 1:5], w[:, 1:5], rtol=1e-5, atol=1e-2, err_msg="boxes")
    np.testing.assert_allclose(g[:, 5], w[:, 5], rtol=0, atol=1e-9, err_msg="pts_s")
