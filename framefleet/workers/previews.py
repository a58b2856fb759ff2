"""Previews: a few frames of each video as small JPEGs with the model's boxes and labels
drawn on them (`FRAMEFLEET_PREVIEWS=N`), made by the inference actor that already holds the
frames, so nothing is decoded twice.

The decode side picks which frames (`targets`, then each chunk's `positions`): N evenly
spaced over the frames the sampling keeps, as the container's frame count promises (when it
says nothing: the first frame of each of the first N chunks). The inference side draws them
(`write`) before it writes the chunk's rows, so a chunk that is done has its previews: a
resumed video skips the chunk and keeps them. They go beside the video's outputs, in
`<video>/previews/<frame index>.jpg`, and its manifest lists them.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Mapping, Sequence
from numbers import Real
from typing import Any

import numpy as np

FOLDER = "previews"
WIDTH = 320  # pixels: a preview's width (its height keeps the frame's aspect)
NAME = re.compile(r"[0-9]{8}\.jpg")
BOX = (255, 48, 48)  # the boxes' colour, and the labels' background
TEXT = (255, 255, 255)


def targets(expected_kept: int | None, chunk_frames: int, n: int) -> frozenset[int]:
    """The kept frames (their order among the frames kept, from 0) to preview: `n` evenly
    spaced over `expected_kept`, the middle of each nth; unknown: the first of each of the
    first `n` chunks."""
    if n <= 0:
        return frozenset()
    if not expected_kept:
        return frozenset(k * chunk_frames for k in range(n))
    n = min(n, expected_kept)
    return frozenset(int((i + 0.5) * expected_kept / n) for i in range(n))


def positions(
    chosen: Iterable[int], chunk_index: int, chunk_frames: int, length: int
) -> tuple[int, ...]:
    """The positions in one chunk of the frames `chosen` (kept-frame ordinals)."""
    first = chunk_index * chunk_frames
    return tuple(sorted(t - first for t in chosen if first <= t < first + length))


def name(frame_index: int) -> str:
    return f"{frame_index:08d}.jpg"


def draw(
    image: np.ndarray, records: Sequence[Mapping[str, Any]], source_size: tuple[int, int]
) -> bytes:
    """A JPEG of the frame `image` (RGB, at the decoded size), WIDTH pixels wide, with each
    record's box (x0, y0, x1, y1 in the source's pixels) and its label and score drawn."""
    from PIL import Image, ImageDraw

    frame = Image.fromarray(image)
    width = min(WIDTH, frame.width)
    height = max(1, round(frame.height * width / frame.width))
    frame = frame.resize((width, height), Image.Resampling.BILINEAR)
    pen = ImageDraw.Draw(frame)
    scale = width / (source_size[0] or image.shape[1])
    for r in records:
        if not all(isinstance(r.get(k), Real) for k in ("x0", "y0", "x1", "y1")):
            continue  # a model without boxes: the frame alone
        box = [float(r[k]) * scale for k in ("x0", "y0", "x1", "y1")]
        pen.rectangle(box, outline=BOX, width=2)
        text = str(r.get("label", ""))
        if isinstance(r.get("score"), Real):
            text += f" {float(r['score']):.2f}"
        left, top, right, bottom = pen.textbbox((box[0] + 2, box[1] + 2), text)
        pen.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=BOX)
        pen.text((box[0] + 2, box[1] + 2), text, fill=TEXT)
    out = io.BytesIO()
    frame.save(out, "JPEG", quality=85)
    return out.getvalue()


def write(
    store: Any,
    video: str,
    images: np.ndarray,
    frame_indices: np.ndarray,
    chosen: Sequence[int],
    records: Sequence[Mapping[str, Any]],
    source_size: tuple[int, int],
) -> None:
    """The previews of one chunk's `chosen` positions into `store` (an OutputStore), each
    written once."""
    for position in chosen:
        mine = [r for r in records if int(r["frame"]) == position]
        key = f"{video}/{FOLDER}/{name(int(frame_indices[position]))}"
        store.put(key, draw(images[position], mine, source_size))


def listed(store: Any, video: str) -> list[str]:
    """The previews of one video's outputs, in frame order (their names)."""
    prefix = f"{video}/{FOLDER}/"
    return [k[len(prefix) :] for k in store.keys_under(prefix) if NAME.fullmatch(k[len(prefix) :])]
