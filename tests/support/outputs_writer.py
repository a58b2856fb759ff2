"""A process that writes big chunks for ever (the kill -9 test kills it mid-write)."""

from __future__ import annotations

import numpy as np

from framefleet.settings import SourceSettings
from framefleet.workers.model import DETECTION_SCHEMA
from framefleet.workers.outputs import OutputStore, records_table


def main(root: str) -> None:
    store = OutputStore(root, SourceSettings())
    n = 200_000
    rng = np.random.default_rng(0)
    records = [
        {
            "frame": i,
            "label_id": 1,
            "label": "x",
            "score": float(s),
            "x0": 0.0,
            "y0": 0.0,
            "x1": 1.0,
            "y1": 1.0,
        }
        for i, s in enumerate(rng.random(n))
    ]
    table = records_table("v", "m", DETECTION_SCHEMA, records, np.arange(n), np.arange(n) / 30)
    k = 0
    while True:
        store.write_chunk("v", k, table)
        k += 1
