"""The burst (issue 25): 10,000 videos enqueued at once through the API while the fleet runs.
Targets: the request accepted within 1 s; the fleet scaled from its minimum to its maximum;
the dashboard answering throughout (every page under 300 ms, as bench/dashboard.py).

    framefleet bench burst [--items 10000] [--watch-s 120] [--out FILE]

The fleet is the chaos rig's (bench/chaoskit/rig.py: a `ray start` cluster, the embedded
Valkey, two coordinators, `framefleet api`), its pools between their minimum (one decode
and one inference actor) and their maximum (two of each), sized to the queue by the
coordinator. One video is being processed when the burst comes: a single POST /v1/items
of --items items (the API's largest batch), each a distinct id on one of the good videos,
its body encoded before the clock starts. Meanwhile a client logged in through the login
form asks for the dashboard's pages in turn, and the health report is read every 0.5 s.
Prints one JSON line (appended to --out).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path; drop it (see bench/queue.py).
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

import argparse
import json
import shutil
import signal
import statistics
import tempfile
import threading
import time
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support, bench

from bench import emit
from bench.api import Api
from bench.chaoskit.rig import API_TOKEN, Rig, Shape, make_rig
from bench.chaoskit.run import _some_progress, _wait
from bench.dashboard import login
from bench.queue import machine

PAGES = {
    "overview": "/ui/",
    "items_queued": "/ui/items?state=queued",
    "inflight": "/ui/inflight",
    "workers": "/ui/workers",
    "dead": "/ui/dead",
}
PAGE_TARGET_MS = 300.0
ACCEPT_TARGET_S = 1.0


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--watch-s", type=float, default=120.0, help="after the burst")
    parser.add_argument("--out", help="append the JSON line to this file")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="ffburst-"))
    rig = make_rig(root, Shape(videos=4, frames=160))
    try:
        result = _burst(rig, args)
    finally:
        rig.stop()
        shutil.rmtree(root, ignore_errors=True)
    emit(result, args.out)
    return 0 if all(result["met"].values()) else 1


def _burst(rig: Rig, args: argparse.Namespace) -> dict[str, Any]:
    p, c = rig.settings.pipeline, rig.settings.coordinator
    rig.start_api()
    rig.keep_coordinators()
    rig.queue.enqueue([str(rig.good[0])])
    _wait(lambda: _some_progress(rig), 300.0, "the first chunk checkpointed", rig)
    before = _pools(rig)
    body = json.dumps(
        {
            "items": [
                {"uri": str(rig.good[k % len(rig.good)]), "id": f"burst-{k:05d}"}
                for k in range(args.items)
            ]
        }
    ).encode()
    base = f"http://127.0.0.1:{rig.api_port}"
    pages = PagePoller(base)
    pages.start()
    time.sleep(2.0)  # the pages' times before the burst, for comparison
    with httpx.Client(base_url=base, timeout=60) as client:
        t0 = time.monotonic()
        answer = client.post(
            "/v1/items",
            content=body,
            headers={"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "application/json"},
        )
        accepted_s = time.monotonic() - t0
    pages.mark_burst()
    answer.raise_for_status()
    new = len(answer.json()["new"])
    top = (p.decode_actors, p.inference_actors)
    reached: dict[str, float | None] = {"decoders": None, "inference": None}
    seen: list[dict[str, Any]] = []
    end = time.monotonic() + args.watch_s
    while time.monotonic() < end:
        rig.keep_coordinators()
        now = _pools(rig)
        seen.append({"t": round(time.monotonic() - t0, 1), **now})
        for name, high in zip(("decoders", "inference"), top, strict=True):
            if reached[name] is None and now[name] >= high:
                reached[name] = round(time.monotonic() - t0, 1)
        time.sleep(0.5)
    done = sum(
        1 for s in rig.queue.states([f"burst-{k:05d}" for k in range(args.items)]) if s == "done"
    )
    pages.stop()
    scaled = [r for r in reached.values() if r is not None]
    result: dict[str, Any] = {
        "bench": "burst",
        "items": args.items,
        "accepted_s": round(accepted_s, 3),
        "enqueued_new": new,
        "pools_before": before,
        "pools_max": {"decoders": top[0], "inference": top[1]},
        "pools_min": {"decoders": c.min_decode_actors, "inference": c.min_inference_actors},
        "reached_max_s": reached,
        "pools_seen": seen[:: max(1, len(seen) // 40)],
        "done_in_watch": done,
        "watch_s": args.watch_s,
        "pages_ms_before": pages.summary(before_burst=True),
        "pages_ms_after": pages.summary(before_burst=False),
        "page_errors": pages.errors,
        "machine": machine(),
    }
    worst = max((s["max"] for s in result["pages_ms_after"].values()), default=float("inf"))
    result["met"] = {
        "accepted_within_1s": accepted_s < ACCEPT_TARGET_S and new == args.items,
        "scaled_to_max": len(scaled) == 2,
        "dashboard_answering": not pages.errors and worst < PAGE_TARGET_MS,
    }
    return result


def _pools(rig: Rig) -> dict[str, int]:
    report = rig.supervision.health() or {}
    return {k: int(report.get(k) or 0) for k in ("decoders", "inference", "ready_inference")}


class PagePoller:
    """A logged-in client asking for the dashboard's pages in turn, as fast as they come
    (one at a time), timing each."""

    def __init__(self, base: str) -> None:
        self.client = login(Api(base, API_TOKEN))  # the login form, as a browser
        self.times: list[tuple[bool, str, float]] = []  # (after the burst, page, ms)
        self.errors: list[str] = []
        self._after = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def mark_burst(self) -> None:
        self._after = True

    def stop(self) -> None:
        self._done.set()
        self._thread.join(60)
        self.client.close()

    def _run(self) -> None:
        while not self._done.is_set():
            for name, path in PAGES.items():
                after = self._after
                t = time.perf_counter()
                try:
                    answer = self.client.get(path)
                    ms = (time.perf_counter() - t) * 1000
                    if answer.status_code != 200:
                        self.errors.append(f"{name}: {answer.status_code}")
                    self.times.append((after, name, ms))
                except httpx.HTTPError as exc:
                    self.errors.append(f"{name}: {exc!r}")
                time.sleep(0.1)

    def summary(self, before_burst: bool) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for name in PAGES:
            ms = sorted(m for a, n, m in self.times if n == name and a != before_burst)
            if ms:
                out[name] = {
                    "n": len(ms),
                    "p50": round(statistics.median(ms), 1),
                    "p99": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 1),
                    "max": round(ms[-1], 1),
                }
        return out


if __name__ == "__main__":
    sys.exit(main())
