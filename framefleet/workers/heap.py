"""The C heap of a decoding or inference process: keep what is freed, for the next frame.

Both stages allocate and free the same large buffers for every frame or batch: PyAV's
converted images (some 0.7 MB at 640x360), the image processor's resized copies, torch's
activations. glibc's malloc serves such sizes with mmap and gives them back when freed, or
gives back the top of a heap once it is free (eagerly for a thread's heap, and Ray runs an
actor's calls in a thread), so each new frame's buffer is fresh pages that the kernel must
fault in and zero: some 200,000 page faults per 3,600 frames in each of the decoder child
and the inference actor, and 0.4-0.6 CPU-s of kernel time in each (bench/pipeline.py,
BENCHMARKS.md). Kept in the heap instead, the pages are reused (tests/integration/
test_heap.py).

The cost: a process's resident memory stays at its peak instead of shrinking after it,
which is what a worker node must be sized for anyway. Not for the decode actor: its
buffers are chunks of many sizes, and its runtime environment keeps a low, fixed mmap
threshold instead, which keeps its memory flat (actors.py, DECODE_MALLOC_ENV); its child,
which only ever holds frames of one size at a time, keeps what it frees.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable
from typing import cast

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest: blocks this size or more are still mmapped
TRIM_THRESHOLD = 256 << 20  # free memory at the heap's top kept before any is given back

# The same, for a process about to start (read by glibc before the first allocation).
ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
    "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD),
}


@functools.cache
def _mallopt() -> Callable[[int, int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        mallopt = ctypes.CDLL(name).mallopt  # glibc; musl has none
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return cast(Callable[[int, int], int], mallopt)


def keep_freed_memory() -> bool:
    """Tell this process's malloc to keep freed memory for reuse (see the module's doc).
    False where the C library is not glibc: nothing is changed there."""
    mallopt = _mallopt()
    if mallopt is None:
        return False
    return bool(
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
