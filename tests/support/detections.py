"""Detections as comparable rows: from a direct single-process run, and from the pipeline's
outputs. The correctness tests hold the two equal."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import numpy as np

from framefleet.chaos import digest
from framefleet.queue import Queue
from framefleet.workers.decode import Sampling, chunks, open_decoder
from framefleet.workers.model import FrameModel
from framefleet.workers.outputs import OutputStore

# source frame index, label id, score, box (x0, y0, x1, y1 in source pixels), pts in seconds:
# the canonical rows of framefleet/chaos/digest.py (float32 scores and boxes, as stored)
Row = digest.Row


def direct_run(model: FrameModel, path: Path, sampling: Sampling) -> list[Row]:
    """The same model on the same frames in one process: no queue, no actors, no outputs."""
    rows: list[Row] = []
    decoder = open_decoder(path, sampling)
    for chunk in chunks(decoder, sampling, 1000):
        records = model.predict(chunk.images, chunk.source_size)
        rows += digest.record_rows(records, chunk.frame_indices, chunk.pts_s)
    decoder.close()
    return sorted(rows)


def pipeline_rows(store: OutputStore, queue: Queue, item_id: str) -> list[Row]:
    """The detections of a done item, from the outputs its result (manifest) names."""
    item = queue.get(item_id)
    assert item is not None and item.result, (item_id, item)
    video = store.video_of(item.result)
    assert video is not None, (item.result, store.base)
    return cast(list[Row], digest.table_rows(store.read_detections(video)))


def assert_same(got: list[Row], want: list[Row]) -> None:
    """Same frames and labels; same scores, boxes (to a hundredth of a pixel) and times."""
    assert [r[:2] for r in got] == [r[:2] for r in want]
    if not got:
        return
    g, w = np.array([r[2:] for r in got]), np.array([r[2:] for r in want])
    np.testing.assert_allclose(g[:, 0], w[:, 0], rtol=1e-5, atol=1e-6, err_msg="scores")
    np.testing.assert_allclose(g[:, 1:5], w[:, 1:5], rtol=1e-5, atol=1e-2, err_msg="boxes")
    np.testing.assert_allclose(g[:, 5], w[:, 5], rtol=0, atol=1e-9, err_msg="pts_s")
