"""A process that writes two chunks and is frozen in the middle of the second one's write,
for the kill -9 test to kill it there.

The freeze is the kernel's, not a mock of the write: the file size limit (RLIMIT_FSIZE) is
set between the two chunks' sizes, so the second chunk's bytes stop at exactly `limit` in
whatever file the store writes them to, and the write past it raises SIGXFSZ, whose handler
is libc's `pause()`: the process blocks there, inside the store's write call, until the
test's SIGKILL. It prints `<limit> <size of the second chunk>` first, for the test to know
when the write has reached the limit.
"""

from __future__ import annotations

import ctypes
import resource
import signal
import sys

import numpy as np
import pyarrow as pa

from framefleet.settings import SourceSettings
from framefleet.workers.model import DETECTION_SCHEMA
from framefleet.workers.outputs import OutputStore, parquet_bytes, records_table

ROWS = (20_000, 200_000)  # the chunks' rows: the first one whole, the second one cut


def table(n: int) -> pa.Table:
    rng = np.random.default_rng(n)
    records = [
        {
            "frame": i,
            "label_id": 1,
            "label": "x",
            "score": float(s),
            "x0": 0.0,
            "y0": 0.0,
            "x1": 1.0,
            "y1": 1.0,
        }
        for i, s in enumerate(rng.random(n))
    ]
    return records_table("v", "m", DETECTION_SCHEMA, records, np.arange(n), np.arange(n) / 30)


def freeze_on_file_size_limit() -> None:
    """SIGXFSZ handled by libc's pause(): a write past RLIMIT_FSIZE blocks the process in
    the signal's delivery, before the write call returns (CPython ignores SIGXFSZ, and a
    Python handler would run only after the store's code had seen the error)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.signal.restype = ctypes.c_void_p
    pause = ctypes.cast(libc.pause, ctypes.c_void_p).value
    if libc.signal(signal.SIGXFSZ, pause) == ctypes.c_void_p(-1).value:
        raise OSError(ctypes.get_errno(), "signal(SIGXFSZ)")


def main(root: str) -> None:
    store = OutputStore(root, SourceSettings())
    small, big = table(ROWS[0]), table(ROWS[1])
    small_size, big_size = len(parquet_bytes(small)), len(parquet_bytes(big))
    limit = big_size // 2
    assert small_size < limit, (small_size, limit)
    freeze_on_file_size_limit()
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    print(limit, big_size, flush=True)
    store.write_chunk("v", 0, small)
    store.write_chunk("v", 1, big)
    sys.exit("the write over the file size limit did not freeze the writer")


if __name__ == "__main__":
    main(sys.argv[1])
