"""The Ray Data peer of the head-crash benchmark (bench/recovery_ray_data.py): the videos as a
Ray Data job with Ray's job-level checkpointing on (`DataContext.checkpoint_config`, a
`CheckpointConfig` whose id column is the video's path), so that a job submitted again
after a crash skips the rows already written.

    python bench/peers/ray_data_job.py JSON

JSON: {"address", "paths", "model", "plugin", "out", "checkpoint", "work_log", "actors"}.
One row per video (read_binary_files, its path the id), each video decoded and run through
the model whole in a map_batches actor, one row of detections per video written to
parquet. Every start and end of a video's work is appended to work_log (what the harness
counts as work done again).
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


class DetectVideos:
    """The model in a Ray Data actor: a batch of whole videos (bytes) in, a row of
    detections per video out."""

    def __init__(self, model: str, plugin: str | None, work_log: str) -> None:
        from framefleet.settings import ModelSettings
        from framefleet.workers.model import load_model

        self.model = load_model(
            ModelSettings(model=model, plugin=plugin, score_threshold=0.0, torch_threads=1)
        )
        self.work_log = work_log

    def _log(self, what: str, path: str) -> None:
        with open(self.work_log, "a") as f:
            f.write(json.dumps({"what": what, "path": path, "t": time.time()}) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import av
        import numpy as np

        paths, counts, frames = [], [], []
        for path, data in zip(batch["path"], batch["bytes"], strict=True):
            self._log("start", str(path))
            with av.open(io.BytesIO(data)) as container:
                images = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
            size = (images[0].shape[1], images[0].shape[0])
            found = 0
            for start in range(0, len(images), 8):
                found += len(self.model.predict(np.stack(images[start : start + 8]), size))
            paths.append(str(path))
            counts.append(found)
            frames.append(len(images))
            self._log("end", str(path))
        return {"path": paths, "detections": counts, "frames": frames}


def main() -> int:
    spec: dict[str, Any] = json.loads(sys.argv[1])
    import ray
    from ray.data import DataContext
    from ray.data.checkpoint import CheckpointConfig

    ray.init(address=spec["address"], log_to_driver=False)
    DataContext.get_current().checkpoint_config = CheckpointConfig(
        id_column="path", checkpoint_path=spec["checkpoint"]
    )
    # A quarter CPU for the reads and for each model actor: with checkpointing on, Ray Data
    # adds an actor of a whole CPU that filters out the rows already written, and on the
    # rig's worker node of 2 CPUs the job waits forever otherwise (the reads get no CPU
    # once the filter and two model actors of half a CPU each hold both)
    ds = ray.data.read_binary_files(
        spec["paths"], include_paths=True, ray_remote_args={"num_cpus": 0.25}
    )
    ds = ds.map_batches(
        DetectVideos,
        fn_constructor_args=(spec["model"], spec.get("plugin"), spec["work_log"]),
        batch_size=1,
        concurrency=int(spec["actors"]),
        num_cpus=0.25,
        num_gpus=0.25,
    )
    ds.write_parquet(spec["out"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
