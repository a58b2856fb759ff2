"""Dashboard benchmark (issue 15): every page's time at the server with a big queue.

`framefleet api` in its own process (bench/api.py's api_server) over the embedded server,
with 100,000 items queued, 10,000 dead letters in three classes, 1,000 done and 50 leased
with progress (the sizes of the issue; --quick: a tenth). A logged-in client (the login
form, then its session cookie, as a browser) asks each page `--requests` times, one after
another on one keep-alive connection, on loopback: each page's time is the request's, from
the first byte sent to the last received, so the server's work plus a loopback round trip.
The page is fetched whole (not the refresh's fragment). Target: every page under 300 ms.
Run: `framefleet bench dashboard` or `python bench/dashboard.py [--quick] [--out FILE]`.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path; drop it (see bench/queue.py).
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    del sys.path[0]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench

import argparse
import tempfile
import time
from typing import Any

import httpx

from bench import emit
from bench.api import QUEUE, Api, _source, api_server, quantiles
from bench.queue import machine
from framefleet.queue import ChunkWork, EmbeddedServer, Queue, Supervision, connect
from framefleet.settings import QueueSettings

TARGET_MS = 300.0
CLASSES = ("not_a_video", "truncated", "fetch_failed")


def fill(q: Queue, queued: int, dead: int, done: int, leased: int) -> dict[str, str]:
    """The queue of the benchmark; returns ids to visit (a dead one, a done one, a prefix)."""
    started = time.monotonic()
    total = queued + dead + done + leased
    for i in range(0, total, 10_000):
        q.enqueue(
            [
                f"s3://cams/cam{n % 40:02d}/clip-{n:07d}.mp4"
                for n in range(i, min(total, i + 10_000))
            ]
        )
    visit: dict[str, str] = {}
    finished = 0
    while finished < dead + done:
        leases = q.claim(min(1000, dead + done - finished), f"decoder-bench-{finished // 1000}")
        acks = []
        for lease in leases:
            if finished < dead:
                q.fail(lease, "moov atom not found", retryable=False, cls=CLASSES[finished % 3])
                visit.setdefault("dead", lease.id)
            else:
                acks.append((lease, f"s3://out/{lease.id}/_manifest.json"))
                visit.setdefault("done", lease.id)
            finished += 1
        q.ack_many(acks)
    sup = Supervision(q)
    for k in range(leased // 5 or 1):
        worker = f"decoder-bench-live{k}"
        for lease in q.claim(5, worker):
            for chunk in range(3):
                q.progress(lease, chunk, 10, ChunkWork(32, 0.1, 0.2, "cuda"))
        sup.heartbeat(worker, info={"node": "ab" * 16, "host": "gpu-node-1", "pid": 1000 + k})
    visit["prefix"] = visit["dead"][:4]
    visit["fill_s"] = f"{time.monotonic() - started:.1f}"
    return visit


def login(api: Api) -> httpx.Client:
    client = httpx.Client(base_url=api.url, timeout=60, follow_redirects=False)
    answer = client.post(
        "/ui/login",
        data={"token": api.token, "next": "/"},
        headers={"Sec-Fetch-Site": "same-origin"},
    )
    if answer.status_code != 303 or "framefleet_session" not in client.cookies:
        raise RuntimeError(f"login failed: {answer.status_code} {answer.text[:200]}")
    return client


def pages(visit: dict[str, str]) -> dict[str, str]:
    return {
        "overview": "/ui/",
        "items_queued": "/ui/items?state=queued",
        "items_queued_page_2": "",  # filled in with the first page's cursor
        "items_dead": "/ui/items?state=dead",
        "items_done": "/ui/items?state=done",
        "search": f"/ui/items?q={visit['prefix']}",
        "item_dead": f"/ui/items/{visit['dead']}",
        "item_done": f"/ui/items/{visit['done']}",
        "inflight": "/ui/inflight",
        "dead": "/ui/dead",
        "dead_class": f"/ui/dead?class={CLASSES[0]}",
        "workers": "/ui/workers",
    }


def time_pages(client: httpx.Client, paths: dict[str, str], n: int) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name, path in paths.items():
        if name == "items_queued_page_2":
            html = client.get(paths["items_queued"]).text
            marker = 'rel="next" href="'
            path = html[html.index(marker) + len(marker) :].split('"', 1)[0].replace("&amp;", "&")
        samples = []
        for _ in range(n + 1):
            started = time.perf_counter()
            answer = client.get(path)
            took = time.perf_counter() - started
            if answer.status_code != 200:
                raise RuntimeError(f"{path}: {answer.status_code} {answer.text[:300]}")
            samples.append(took * 1000)
        found[name] = {**quantiles(samples[1:]), "bytes": len(answer.content)}
    return found


def run(quick: bool, requests: int) -> dict[str, Any]:
    scale = 10 if quick else 1
    sizes = {
        "queued": 100_000 // scale,
        "dead": 10_000 // scale,
        "done": 1_000 // scale,
        "leased": 50,
    }
    with tempfile.TemporaryDirectory(prefix="ff-bench-ui-") as tmp:
        server = EmbeddedServer(Path(tmp) / "redis", appendfsync="everysec").start()
        try:
            q = Queue(connect(server.url), QueueSettings(name=QUEUE, lease_s=3600))
            visit = fill(q, **sizes)
            version = q.client.info("server")
            with api_server(server.url, Path(tmp)) as api:
                client = login(api)
                try:
                    measured = time_pages(client, pages(visit), requests)
                finally:
                    client.close()
        finally:
            server.stop()
    worst = max(m["p50"] for m in measured.values())
    return {
        "benchmark": "dashboard",
        "server": f"valkey {version.get('valkey_version', version.get('redis_version'))} "
        "(embedded, AOF everysec)",
        "api": "framefleet api (its own process), loopback, a session cookie",
        "machine": machine(),
        "sizes": sizes,
        "requests_per_page": requests,
        "fill_s": float(visit["fill_s"]),
        **_source(),
        "pages_ms": measured,
        "slowest_page_p50_ms": worst,
        "slowest_page_p99_ms": max(m["p99"] for m in measured.values()),
        "target": f"every page < {TARGET_MS:.0f} ms",
        "met": worst < TARGET_MS,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/dashboard.py", description=__doc__)
    p.add_argument("--quick", action="store_true", help="a tenth of the sizes (a smoke test)")
    p.add_argument("--requests", type=int, default=20, help="requests a page (median, p99)")
    p.add_argument("--out", help="also append the JSON line to this file")
    args = p.parse_args(argv)
    emit(run(args.quick, args.requests), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
