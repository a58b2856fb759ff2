"""The decoding and inference processes reuse the memory they free (workers/heap.py): their
buffers for the next frame or batch are not fresh pages for the kernel to fault in."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from framefleet.workers.decode import ChunkReader, Sampling
from framefleet.workers.decode_process import ProcessDecoder
from tests.support.models import write_tiny_detr
from tests.support.videos import write_video


def _faults(pid: int) -> int:
    """A process's minor page faults so far (/proc/PID/stat, field 10)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


def test_the_decoder_process_reuses_its_frame_buffers(tmp_path: Path) -> None:
    """A child decoding 640x360 frames faulted in some 100 pages a frame (each converted
    image's buffer new from the kernel); keeping freed memory, next to none once warm."""
    video = write_video(tmp_path / "v.mp4", frames=60, width=640, height=360)
    sampling = Sampling()
    per_frame = []
    for _ in range(4):  # one child, video after video: the first read warms it
        decoder = ProcessDecoder(video, sampling, memory_bytes=1 << 30)
        pid = decoder._child.proc.pid
        before = _faults(pid)
        try:
            n = sum(len(c) for c in ChunkReader(decoder, sampling, 8, reuse=True))
        finally:
            decoder.close()
        assert decoder._child.proc.pid == pid and n == 60
        per_frame.append((_faults(pid) - before) / n)
    warm = per_frame[1:]
    assert sum(warm) / len(warm) < 10, per_frame


_PREDICT = """
import resource, sys, threading
import numpy as np
from framefleet.settings import ModelSettings
from framefleet.workers import heap
from framefleet.workers.model import load_model

if sys.argv[2] == "keep":
    assert heap.keep_freed_memory()
model = load_model(ModelSettings(model=sys.argv[1], batch_size=16, torch_threads=1))
images = np.random.default_rng(0).integers(0, 255, (32, 360, 640, 3), np.uint8)

def calls():  # in a thread, as Ray runs an actor's calls: a thread's heap is shrunk eagerly
    for _ in range(2):
        model.predict(images, (640, 360))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        model.predict(images, (640, 360))
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / (3 * len(images)))

thread = threading.Thread(target=calls)
thread.start()
thread.join()
"""


def _run(code: str, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return out.stdout.split()[-1]


def test_an_inference_process_reuses_the_models_buffers(tmp_path: Path) -> None:
    """The image processor's and torch's buffers, freed after each batch: with glibc's
    defaults a thread's calls faulted in up to some 75 pages a frame (a Ray inference actor:
    200,000 per 3,600 frames, every run); kept, next to none."""
    model = write_tiny_detr(tmp_path / "detr")
    kept = float(_run(_PREDICT, str(model), "keep"))
    assert kept < 5


_AGAIN = """
import resource, sys
import numpy as np
from framefleet.workers import heap

if sys.argv[1] == "keep":
    assert heap.keep_freed_memory()
first = np.ones(20 << 20, np.uint8)
del first
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
second = np.ones(20 << 20, np.uint8)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_a_freed_buffer_is_reused_not_given_back() -> None:
    """The mechanism, in a fresh process: a 20 MB buffer freed and asked for again is the
    same memory (no page faulted in again), where glibc's defaults give it back to the
    kernel (mmap, munmap) and fault in a new one."""
    assert int(_run(_AGAIN, "keep")) < 20
    assert int(_run(_AGAIN, "default")) > 200  # the test tells one from the other
