"""The histograms the Lua scripts keep in Redis, and their fixed buckets (seconds).

Each histogram is a hash `hist:<name>` (or `hist:<name>:<label>`) of bucket counts
(non-cumulative, field = the bucket's number from 1, `inf` past the last bound), `sum`
(milliseconds) and `count`, written with HINCRBY by the script that sees the event:

- `queue_wait`: from enqueue (`created`) to the first claim (claim.lua);
- `processing`: from the claim of the lease that finished a video to its ack (ack.lua);
- `latency`: from enqueue to done, retries and waits included (ack.lua);
- `stage:<fetch|decode|infer|write>`: one video's seconds in each stage, summed over its
  chunks, sent by the decode actor with its ack (ack.lua).

So they survive every process, and a scrape reads O(buckets) fields, never the items. The
bounds are written into the scripts when they load (scripts.py), from this one table.
"""

from __future__ import annotations

HISTOGRAMS: dict[str, tuple[float, ...]] = {
    "queue_wait": (0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400),
    "processing": (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400),
    "latency": (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 43200, 86400),
    "stage": (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800),
}
STAGES = ("fetch", "decode", "infer", "write")


def lua_buckets() -> str:
    """The Lua table of the bounds in milliseconds, prepended to every script."""
    rows = ", ".join(
        f"{name} = {{{', '.join(str(round(b * 1000)) for b in bounds)}}}"
        for name, bounds in HISTOGRAMS.items()
    )
    return f"local BUCKETS = {{{rows}}}"
