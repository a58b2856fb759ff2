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
