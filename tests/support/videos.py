"""Test videos, written by the tests with PyAV: real encoded files, made in milliseconds."""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def frame_image(i: int, width: int, height: int) -> np.ndarray:
    """A frame with a moving bright box and a per-frame tint: easy to tell frames apart."""
    img = np.full((height, width, 3), 40, np.uint8)
    img[:, :, 0] = (i * 9) % 200
    x = (i * 3) % max(1, width - width // 3)
    img[height // 4 : height // 2, x : x + width // 3] = 230
    return img


def write_video(
    path: Path,
    *,
    codec: str = "libx264",
    width: int = 96,
    height: int = 64,
    frames: int = 30,
    fps: int = 15,
    pix_fmt: str = "yuv420p",
    pts: list[int] | None = None,
    image: Callable[[int, int, int], np.ndarray] = frame_image,
) -> Path:
    """Encode `frames` frames (`image(i, width, height)` draws frame i); `pts` (in 1/1000 s)
    makes a variable-frame-rate video."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if pts is not None:
            stream.time_base = Fraction(1, 1000)
            stream.codec_context.time_base = Fraction(1, 1000)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(image(i, width, height), format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[i], Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        samples = np.zeros((1, 1024), np.float32)
        for _ in range(10):
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate = 16000
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_corrupt(path: Path, source: Path) -> Path:
    """A real video with its middle overwritten by garbage."""
    data = bytearray(source.read_bytes())
    mid = len(data) // 3
    data[mid : mid + len(data) // 3] = (
        np.random.default_rng(0).integers(0, 256, len(data) // 3, np.uint8).tobytes()
    )
    path.write_bytes(bytes(data))
    return path


def write_truncated(path: Path, source: Path) -> Path:
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path
