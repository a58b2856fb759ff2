"""A tiny randomly initialised DETR, written with save_pretrained and loaded back with
from_pretrained by the code under test: the real loading path, offline, in well under a
second."""

from __future__ import annotations

from pathlib import Path


def write_tiny_detr(path: Path, seed: int = 0) -> Path:
    import torch
    from transformers import DetrForObjectDetection
    from transformers.models.detr.image_processing_pil_detr import DetrImageProcessorPil

    from framefleet.workers.model import detr_config

    torch.manual_seed(seed)
    model = DetrForObjectDetection(detr_config(tiny=True, num_labels=5))
    model.save_pretrained(path)
    DetrImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 128}).save_pretrained(path)
    return path
