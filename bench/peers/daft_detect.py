"""The pipeline benchmark's Daft peer: Daft's video reader (`daft.read_video_frames`) into the
same model, the way Daft's own video object-detection example writes it (a class UDF over
batches of frames), on the same clips.

Daft pins PyAV and pyarrow below the versions framefleet uses, so it runs in its own
environment (`scripts/peers-venv` makes `.venv-peers`), started by bench/pipeline.py as

    .venv-peers/bin/python bench/peers/daft_detect.py JSON

JSON: {"paths", "model", "height", "width", "threads", "source_width", "source_height"};
the batch size and the UDF processes come in FRAMEFLEET_DAFT_BATCH and _ACTORS. The model is
framefleet's own loader (framefleet/workers/model.py imports numpy, pyarrow and torch
only), so the weights and the pre- and post-processing are the same. Prints one JSON line:
frames, seconds (start-up included: a batch job), frames/s, and the largest private memory
(RssAnon) any of its processes held, sampled every 0.1 s.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import daft

# frames a batch (the chunk size) and UDF processes (framefleet's inference actors): set by
# bench/pipeline.py in the environment, as the UDF processes import this module again
BATCH = int(os.environ.get("FRAMEFLEET_DAFT_BATCH", "32"))
ACTORS = int(os.environ.get("FRAMEFLEET_DAFT_ACTORS", "1"))
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def rss_anon_mb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            line = next(x for x in f if x.startswith("RssAnon:"))
    except (OSError, StopIteration):
        return 0
    return int(line.split()[1]) // 1024


def sample(done: threading.Event, peaks: dict[str, int]) -> None:
    """The driver's and every child's private memory: their peaks, by role."""
    import psutil

    me = psutil.Process()
    while not done.wait(0.1):
        peaks["driver"] = max(peaks.get("driver", 0), rss_anon_mb(me.pid))
        for child in me.children(recursive=True):
            peaks["worker"] = max(peaks.get("worker", 0), rss_anon_mb(child.pid))


@daft.cls(max_concurrency=ACTORS, use_process=True, cpus=1)
class Detect:
    """The model in a UDF process: framefleet's loader, a batch of frames in, the count of
    detections per frame out."""

    def __init__(self, model_dir: str, threads: int, source_size: tuple[int, int]) -> None:
        from framefleet.settings import ModelSettings
        from framefleet.workers.model import load_model

        self.source_size = source_size
        self.model = load_model(
            ModelSettings(model=model_dir, score_threshold=0.5, torch_threads=threads)
        )

    @daft.method.batch(return_dtype=daft.DataType.int64(), batch_size=BATCH)
    def __call__(self, frames: Any) -> Any:
        import numpy as np

        images = np.stack(frames.to_pylist())
        records = self.model.predict(images, self.source_size)
        return np.bincount([r["frame"] for r in records], minlength=len(images))


def main() -> int:
    spec: dict[str, Any] = json.loads(sys.argv[1])
    model = Detect(
        spec["model"],
        int(spec["threads"]),
        (int(spec["source_width"]), int(spec["source_height"])),
    )

    peaks: dict[str, int] = {}
    done = threading.Event()
    sampler = threading.Thread(target=sample, args=(done, peaks), daemon=True)
    sampler.start()
    t = time.perf_counter()
    df = daft.read_video_frames(
        list(spec["paths"]), image_height=int(spec["height"]), image_width=int(spec["width"])
    )
    df = df.with_column("detections", model(df["data"])).select("path", "detections")
    frames = len(df.to_pydict()["detections"])
    seconds = time.perf_counter() - t
    done.set()
    sampler.join()
    print(
        json.dumps(
            {
                "frames": frames,
                "seconds": round(seconds, 2),
                "fps": round(frames / seconds, 1),
                "peak_private_mb": peaks,
                "daft": daft.__version__,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
