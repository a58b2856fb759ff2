"""A model plugged in through FRAMEFLEET_MODEL_PLUGIN: per-frame colour embeddings."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from framefleet.settings import ModelSettings


class MeanColour:
    name = "mean-colour-embedding"
    schema = pa.schema([("embedding", pa.list_(pa.float32(), 3))])

    def predict(self, images: np.ndarray, source_size: tuple[int, int]) -> list[dict[str, Any]]:
        means = images.reshape(len(images), -1, 3).mean(axis=1) / 255.0
        return [
            {"frame": i, "embedding": m.astype(np.float32).tolist()} for i, m in enumerate(means)
        ]


def load(settings: ModelSettings) -> MeanColour:
    return MeanColour()


class SlowMeanColour(MeanColour):
    """The same, taking half a second per batch: gives tests time to act mid-video."""

    name = "slow-mean-colour"

    def predict(self, images: np.ndarray, source_size: tuple[int, int]) -> list[dict[str, Any]]:
        import time

        time.sleep(0.5)
        return super().predict(images, source_size)


def load_slow(settings: ModelSettings) -> SlowMeanColour:
    return SlowMeanColour()


class PacedDetection:
    """The built-in detection model (settings.model), taking at least PACE_S per batch: the
    real model and outputs, slow enough for the fault tests to act mid-video."""

    PACE_S = 0.3

    def __init__(self, settings: ModelSettings) -> None:
        from dataclasses import replace

        from framefleet.workers.model import load_model as load_builtin

        self.inner = load_builtin(replace(settings, plugin=None))
        self.name, self.schema = self.inner.name, self.inner.schema

    def predict(self, images: np.ndarray, source_size: tuple[int, int]) -> list[dict[str, Any]]:
        import time

        started = time.monotonic()
        rows = self.inner.predict(images, source_size)
        time.sleep(max(0.0, self.PACE_S - (time.monotonic() - started)))
        return rows


def load_paced_detection(settings: ModelSettings) -> PacedDetection:
    return PacedDetection(settings)


def load_counted(settings: ModelSettings) -> MeanColour:
    """MeanColour, noting each load (the loading process's pid) in the directory that
    settings.model names: how a test counts model loads across actor processes."""
    import os
    from pathlib import Path

    with open(Path(settings.model) / "loads", "a") as log:
        log.write(f"{os.getpid()}\n")
    return MeanColour()


class Gated(MeanColour):
    """The colour model, each batch held until the file at `gate` exists: a test decides
    when the chunks out come back (the gate's path is passed as the model's name)."""

    name = "gated-mean-colour"

    def __init__(self, gate: str) -> None:
        from pathlib import Path

        self.gate = Path(gate)

    def predict(self, images: np.ndarray, source_size: tuple[int, int]) -> list[dict[str, Any]]:
        import os
        import time

        if not self.gate.exists():  # say that a batch came, then hold it
            seen = self.gate.with_name(f"{self.gate.name}.seen-{os.getpid()}-{time.time_ns()}")
            seen.touch()
        while not self.gate.exists():
            time.sleep(0.02)
        return super().predict(images, source_size)


def load_gated(settings: ModelSettings) -> Gated:
    return Gated(settings.model)


class CrashOnWhite(MeanColour):
    """The colour model, whose process dies (as a segfault in a model's native code would)
    on a batch of white frames: a chunk that kills every inference actor it reaches."""

    name = "crash-on-white"

    def predict(self, images: np.ndarray, source_size: tuple[int, int]) -> list[dict[str, Any]]:
        import os

        if images.mean() > 240:
            os._exit(1)
        return super().predict(images, source_size)


def load_crash_on_white(settings: ModelSettings) -> CrashOnWhite:
    return CrashOnWhite()


MARK = (255, 0, 255)  # a frame of this colour makes the chaos model raise


def marked_frame(i: int, width: int, height: int) -> np.ndarray:
    """A frame of MARK (tests.support.videos.write_video's `image`): the video the chaos
    run's model raises on."""
    return np.broadcast_to(np.array(MARK, np.uint8), (height, width, 3)).copy()


class ChaosDetection(PacedDetection):
    """PacedDetection that raises ValueError on a batch holding a MARK frame: a model that
    fails on one video (the pipeline makes it a dead letter of class model_error)."""

    def predict(self, images: np.ndarray, source_size: tuple[int, int]) -> list[dict[str, Any]]:
        means = images.reshape(len(images), -1, 3).mean(axis=1)
        if any(m[0] > 200 and m[1] < 60 and m[2] > 200 for m in means):
            raise ValueError("a marked frame: this model cannot take it")
        return super().predict(images, source_size)


def load_chaos_detection(settings: ModelSettings) -> ChaosDetection:
    return ChaosDetection(settings)
