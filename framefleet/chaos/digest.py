"""The one canonical form of detections that a history's digests are taken of.

A chunk's file, a video's merged detections and the fault-free run's records all become
the same rows: (source frame index, label id, score, x0, y0, x1, y1, pts in seconds), the
score and box as the outputs store them (float32), sorted. Equal rows, equal digests; the
columns that name the run rather than the detections (the item's id, the manifest's URI,
the model's name) are left out, so that two runs of one video compare.

The fault-free reference must run the model on the same chunks as the pipeline (the same
`chunk_frames`): a forward pass over other batches may differ in the last bits, and a digest
sees every bit.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

COLUMNS = ("frame_index", "label_id", "score", "x0", "y0", "x1", "y1", "pts_s")
BOX = ("score", "x0", "y0", "x1", "y1")

Row = tuple[int, int, float, float, float, float, float, float]


NAMING = frozenset({"video_id", "uri", "model"})  # name the run, not the detections


def table_rows(table: Any) -> list[tuple[Any, ...]]:
    """The rows of an output table (a chunk's file or the merged detections: pyarrow). A
    model whose records are not boxes (a plugin's) gives every column but NAMING's, by
    name, the rows sorted by their text."""
    if all(name in table.column_names for name in COLUMNS):
        cols = [table.column(name).to_pylist() for name in COLUMNS]
        return sorted(
            (int(r[0]), int(r[1]), *(float(v) for v in r[2:])) for r in zip(*cols, strict=True)
        )
    names = sorted(n for n in table.column_names if n not in NAMING)
    return sorted(zip(*(table.column(n).to_pylist() for n in names), strict=True), key=repr)


def record_rows(
    records: Iterable[Mapping[str, Any]],
    frame_indices: Sequence[int] | np.ndarray,
    pts_s: Sequence[float] | np.ndarray,
) -> list[Row]:
    """The rows of a model's records for one chunk (`frame` indexes the chunk's frames),
    as records_table would store them."""
    rows: list[Row] = []
    for r in records:
        k = int(r["frame"])
        score, x0, y0, x1, y1 = (float(np.float32(r[f])) for f in BOX)
        rows.append(
            (int(frame_indices[k]), int(r["label_id"]), score, x0, y0, x1, y1, float(pts_s[k]))
        )
    return sorted(rows)


def digest(rows: Iterable[tuple[Any, ...]]) -> str:
    """A short hex digest of the rows, in order (they come sorted from the functions above)."""
    text = json.dumps([list(r) for r in rows], separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def table_digest(table: Any) -> str:
    return digest(table_rows(table))
