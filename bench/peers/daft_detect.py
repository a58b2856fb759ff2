"""The pipeline benchmark's Daft peer: Daft's video reader (`daft.read_video_frames`) into the
same model, the way Daft's own video object-detection example writes it (a class UDF over
batches of frames), on the same clips.

Daft pins PyAV and pyarrow below the versions framefleet uses, so it runs in its own
environment (`scripts/peers-venv` makes `.venv-peers`), started by bench/pipeline.py as

    .venv-peers/bin/python bench/peers/daft_detect.py JSON

JSON: {"paths", "model", "height", "width", "batch", "actors", "threads"}. The model is
framefleet's own loader (framefleet/workers/model.py imports numpy, pyarrow and torch
only), so the weights and the pre- and post-processing are the same. Prints one JSON line:
frames, seconds (start-up included: a batch job), frames/s, and the largest private memory
(RssAnon) any of its processes held, sampled every 0.1 s.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

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


def main() -> int:
    spec: dict[str, Any] = json.loads(sys.argv[1])
    import daft
    import numpy as np
    from daft import DataType, Series

    from framefleet.settings import ModelSettings
    from framefleet.workers.model import load_model

    model_dir, threads = spec["model"], int(spec["threads"])
    source_size = (int(spec["source_width"]), int(spec["source_height"]))

    @daft.cls(max_concurrency=int(spec["actors"]), use_process=True, cpus=1)
    class Detect:
        def __init__(self) -> None:
            self.model = load_model(
                ModelSettings(model=model_dir, score_threshold=0.5, torch_threads=threads)
            )

        @daft.method.batch(return_dtype=DataType.int64(), batch_size=int(spec["batch"]))
        def __call__(self, frames: Series) -> Any:
            images = np.stack(frames.to_pylist())
            records = self.model.predict(images, source_size)
            return np.bincount([r["frame"] for r in records], minlength=len(images))

    peaks: dict[str, int] = {}
    done = threading.Event()
    sampler = threading.Thread(target=sample, args=(done, peaks), daemon=True)
    sampler.start()
    t = time.perf_counter()
    df = daft.read_video_frames(
        list(spec["paths"]), image_height=int(spec["height"]), image_width=int(spec["width"])
    )
    df = df.with_column("detections", Detect()(df["data"])).select("path", "detections")
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
