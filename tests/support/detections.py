"""Detections as comparable rows: from a direct single-process run, and from the pipeline's
outputs. The correctness tests hold the two equal."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from framefleet.queue import Queue
from framefleet.workers.decode import Sampling, chunks, open_decoder
from framefleet.workers.model import FrameModel
from framefleet.workers.outputs import OutputStore

Row = tuple[int, int, float]  # source frame index, label id, score


def direct_run(model: FrameModel, path: Path, sampling: Sampling) -> list[Row]:
    """The same model on the same frames in one process: no queue, no actors, no outputs."""
    rows = []
    decoder = open_decoder(path, sampling)
    for chunk in chunks(decoder, sampling, 1000):
        for r in model.predict(chunk.images, chunk.source_size):
            rows.append(
                (int(chunk.frame_indices[r["frame"]]), int(r["label_id"]), float(r["score"]))
            )
    decoder.close()
    return sorted(rows)


def pipeline_rows(store: OutputStore, queue: Queue, item_id: str) -> list[Row]:
    """The detections of a done item, from the outputs its result (manifest) names."""
    item = queue.get(item_id)
    assert item is not None and item.result, (item_id, item)
    video = store.video_of(item.result)
    assert video is not None, (item.result, store.base)
    table = store.read_detections(video)
    columns = (
        table["frame_index"].to_pylist(),
        table["label_id"].to_pylist(),
        table["score"].to_pylist(),
    )
    return sorted(zip(*columns, strict=True))


def assert_same(got: list[Row], want: list[Row]) -> None:
    assert [r[:2] for r in got] == [r[:2] for r in want]
    np.testing.assert_allclose([r[2] for r in got], [r[2] for r in want], rtol=1e-5, atol=1e-6)
