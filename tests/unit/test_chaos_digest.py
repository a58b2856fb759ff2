"""The digests a chaos run's history compares: equal detections, equal digests, whichever
side they come from (a chunk's file, the merged file, the model's records)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from framefleet.chaos.digest import digest, record_rows, table_digest, table_rows
from framefleet.workers.model import DETECTION_SCHEMA
from framefleet.workers.outputs import records_table, with_uri

SCHEMA = DETECTION_SCHEMA


def records(shift: float = 0.0) -> list[dict[str, object]]:
    return [
        {"frame": 1, "label_id": 3, "label": "car", "score": 0.91, "x0": 1.5 + shift,
         "y0": 2.25, "x1": 30.1, "y1": 40.7},
        {"frame": 0, "label_id": 1, "label": "person", "score": 0.5, "x0": 0.1, "y0": 0.2,
         "x1": 10.3, "y1": 20.4},
    ]  # fmt: skip


FRAMES, PTS = np.array([16, 17]), np.array([0.64, 0.68])


def test_a_chunks_file_and_the_models_records_give_one_digest() -> None:
    table = records_table("v0", "detr", SCHEMA, records(), FRAMES, PTS)
    assert table_rows(table) == record_rows(records(), FRAMES, PTS)
    assert table_digest(table) == digest(record_rows(records(), FRAMES, PTS))
    # the merged file names the video's URI, another run another id: the same detections
    merged = with_uri(records_table("v0-again", "detr", SCHEMA, records(), FRAMES, PTS), "s3://b/v")
    assert table_digest(merged) == table_digest(table)


def test_any_changed_detection_changes_the_digest() -> None:
    base = table_digest(records_table("v0", "detr", SCHEMA, records(), FRAMES, PTS))
    moved = records_table("v0", "detr", SCHEMA, records(shift=0.001), FRAMES, PTS)
    assert table_digest(moved) != base
    fewer = records_table("v0", "detr", SCHEMA, records()[:1], FRAMES, PTS)
    assert table_digest(fewer) != base
    later = records_table("v0", "detr", SCHEMA, records(), FRAMES + 1, PTS)
    assert table_digest(later) != base


def test_rows_of_another_model_are_every_column_but_the_runs_names() -> None:
    a = pa.table({"video_id": ["a", "a"], "caption": ["x", "y"], "frame_index": [2, 1]})
    b = pa.table({"video_id": ["b", "b"], "caption": ["y", "x"], "frame_index": [1, 2]})
    assert table_rows(a) == [("x", 2), ("y", 1)]
    assert table_digest(a) == table_digest(b)
