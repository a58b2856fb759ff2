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


def write_pinned_detr(path: Path, box: tuple[float, float, float, float], label: int) -> Path:
    """The tiny DETR with its heads pinned: every query finds `label` (score about 0.9997) at
    `box` (centre x, centre y, width, height, as fractions of the frame), whatever the frames.
    The known place of an object drawn in a test video, through the real processor and
    post-processing: where the pipeline writes it tells how it maps boxes to source pixels."""
    import torch
    from transformers import DetrForObjectDetection

    write_tiny_detr(path)
    model = DetrForObjectDetection.from_pretrained(path)
    with torch.no_grad():
        head = model.class_labels_classifier
        head.weight.zero_()
        head.bias.zero_()
        head.bias[label] = 10.0
        last = model.bbox_predictor.layers[-1]
        last.weight.zero_()
        last.bias.copy_(torch.logit(torch.tensor(box, dtype=torch.float32)))
    model.save_pretrained(path)
    return path
