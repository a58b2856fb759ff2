"""lower_priority: every thread of the process, and the threads started after it."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import os, threading
from framefleet.workers.actors import lower_priority

def nice(tid):
    return os.getpriority(os.PRIO_PROCESS, tid)

ready, done = threading.Event(), threading.Event()
tids = []
def before():
    tids.append(threading.get_native_id()); ready.set(); done.wait()
t = threading.Thread(target=before); t.start(); ready.wait()
main = threading.get_native_id()
start = nice(main)
lower_priority(3)
later = []
t2 = threading.Thread(target=lambda: later.append(nice(threading.get_native_id())))
t2.start(); t2.join()
print(start, nice(main), nice(tids[0]), later[0])
lower_priority(40)
print(nice(main))
done.set(); t.join()
"""


def test_every_thread_and_later_ones_get_nicer() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    start, main, other, later = map(int, out[0].split())
    assert start < 19 and (main, other, later) == (start + 3,) * 3
    assert int(out[1]) == 19  # capped
