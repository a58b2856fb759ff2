"""Finished versions of videos written straight into an output store, as a pipeline would
(chunks, then finalize), for the results index's tests; and, run as a module, a publisher
for the kill -9 test: `python -m tests.support.results ROOT N` finishes and publishes N
videos, printing each id once published, until killed."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from framefleet.settings import SourceSettings
from framefleet.workers.model import DETECTION_SCHEMA
from framefleet.workers.outputs import OutputStore, output_version, records_table
from framefleet.workers.results import Results

LABELS = ("car", "person", "dog")


def finish(
    store: OutputStore,
    item_id: str,
    rev: int = 0,
    rows: int = 5,
    *,
    uri: str | None = None,
    config: str = "cfg0",
    chunks: int = 2,
    label: str | None = None,
) -> str:
    """One version of a video finished in `store`: `rows` detections over `chunks` chunks,
    their labels cycling through LABELS (or all `label`), each score telling its item and
    revision apart (rev + row / 1000). Returns the version's key prefix."""
    video = store.video(item_id, output_version(config, None, rev))
    per = -(-rows // chunks) if rows else 0
    for k in range(chunks):
        frames = range(k * per, min(rows, (k + 1) * per))
        records = [
            {
                "frame": i - k * per,
                "label_id": i % len(LABELS),
                "label": label or LABELS[i % len(LABELS)],
                "score": rev + i / 1000,
                "x0": 1.0,
                "y0": 2.0,
                "x1": 3.0,
                "y1": 4.0,
            }
            for i in frames
        ]
        store.write_chunk(
            video,
            k,
            records_table(
                item_id,
                "m",
                DETECTION_SCHEMA,
                records,
                np.arange(k * per, k * per + max(len(frames), 1)),
                np.arange(max(len(frames), 1)) * 0.5,
            ),
        )
    manifest = {
        "video_id": item_id,
        "uri": uri or f"/videos/{item_id}.mp4",
        "rev": rev,
        "version": video.rsplit("/", 1)[-1],
        "frames": rows,
        "model": "m",
        "config_hash": config,
    }
    store.finalize(video, chunks, DETECTION_SCHEMA, manifest)
    return video


def main(root: str, count: int) -> None:
    store = OutputStore(root, SourceSettings())
    results = Results(store)
    for n in range(count):
        item = f"v{n}"
        results.publish(finish(store, item, rev=n % 3, rows=50 + n % 7))
        print(item, flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
    Path(sys.argv[1], "finished").touch()
