"""A model paced by sleeping, for bench/scale.py (FRAMEFLEET_MODEL_PLUGIN=
"bench.paced_model:load"): each predict() takes the pace, as a GPU's forward pass would,
without keeping a core busy, and returns one trivial row per frame. It imports neither torch
nor transformers, so an inference actor costs what framefleet itself costs.

The model setting (FRAMEFLEET_MODEL) says "<pace seconds>" or "<pace seconds>:<trace dir>".
With a trace dir, each inference actor appends "<start> <end>" (time.time(), one line per
predict) to <trace dir>/<pid>.txt, so that the benchmark can tell each actor's busy time.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa

from framefleet.settings import ModelSettings


class PacedModel:
    schema = pa.schema([("value", pa.float32())])

    def __init__(self, pace_s: float, trace: Path | None = None) -> None:
        self.pace_s = pace_s
        self.name = f"paced-{pace_s:g}s"
        self._trace: IO[str] | None = None
        if trace is not None:
            trace.mkdir(parents=True, exist_ok=True)
            self._trace = (trace / f"{os.getpid()}.txt").open("a", encoding="utf-8")

    def predict(self, images: np.ndarray, source_size: tuple[int, int]) -> list[dict[str, Any]]:
        started = time.time()
        time.sleep(self.pace_s)
        rows = [{"frame": i, "value": 0.0} for i in range(len(images))]
        if self._trace is not None:
            self._trace.write(f"{started:.4f} {time.time():.4f}\n")
            self._trace.flush()
        return rows


def spec(pace_s: float, trace: Path | None = None) -> str:
    """The model setting that load() reads."""
    return f"{pace_s:g}" if trace is None else f"{pace_s:g}:{trace}"


def load(settings: ModelSettings) -> PacedModel:
    pace, _, trace = settings.model.partition(":")
    return PacedModel(float(pace), Path(trace) if trace else None)
