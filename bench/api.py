"""API benchmark (issue 14): enqueue over HTTP, the queue's page and /metrics under load.

One run, against `framefleet api` in its own process (the production command: settings from
FRAMEFLEET_* variables, uvicorn as serve() configures it) on a loopback port with a token,
over the embedded server: 10,000 items accepted in one POST /v1/items (plain, then each
item with a little meta), in 100 POSTs of 100 sent one after another on one keep-alive
connection, and in 100 POSTs of 100 from 4 client processes at once, each timed from the
first byte sent to the last answer and checked (every item new in the answers, the queue's
count). Meanwhile another process polls GET /v1/queue at a fixed rate, as a dashboard does:
its latencies while an enqueue is under way. Then the queue is filled to 100,000 queued
items (Queue.enqueue, directly) and GET /metrics is scraped one scrape after another (its
latency and size; and the same scrapes with the queue empty, at the start of each run).

Every client is another process, its request bodies encoded before the clock starts (the
client's JSON encoding is not the API's cost); the server has one warm-up request of each
kind before the first run. Times are medians of --repeats runs; latency quantiles are over
the samples of every run pooled (each run's p99 is listed too). Run: `framefleet bench api`
or `python bench/api.py [--quick] [--repeats N] [--out FILE]`.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path; drop it (see bench/queue.py).
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    del sys.path[0]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench

import argparse
import importlib.metadata
import importlib.util
import json
import multiprocessing
import os
import secrets
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as EventType
from typing import Any

import httpx
from redis import Redis

from bench import emit
from bench.queue import machine, quiesce
from framefleet.queue import EmbeddedServer, Queue, connect
from framefleet.settings import QueueSettings

ROOT = Path(__file__).resolve().parents[1]
QUEUE = "bench"
TARGETS = {
    "one_post_s": ("<", 1.0),
    "one_post_meta_s": ("<", 1.0),
    "sequential_s": ("<", 1.0),
    "concurrent_s": ("<", 1.0),
    "queue_poll_p99_ms": ("<", 200.0),
    "metrics_p99_ms": ("<", 100.0),
}
META = {"camera": "cam-0017", "site": "lisbon-dock-4", "fps": 30, "night": False}
FORK = multiprocessing.get_context("fork")


@dataclass(frozen=True)
class Sizes:
    items: int  # items in each enqueue phase
    batch: int  # items in each POST of the many-request phases
    clients: int  # client processes of the concurrent phase
    queued: int  # queued items for the /metrics scrapes
    scrapes: int
    poll_hz: float

    @classmethod
    def of(cls, quick: bool, poll_hz: float) -> Sizes:
        if quick:
            return cls(items=1_000, batch=100, clients=2, queued=5_000, scrapes=10, poll_hz=poll_hz)
        return cls(items=10_000, batch=100, clients=4, queued=100_000, scrapes=50, poll_hz=poll_hz)


@dataclass(frozen=True)
class Api:
    """Where the API listens and the token it wants."""

    url: str
    token: str

    @contextmanager
    def client(self) -> Iterator[httpx.Client]:
        """One keep-alive connection, opened now (so no request waits for a connect)."""
        with httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=httpx.Timeout(120.0),
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        ) as client:
            client.get("/healthz").raise_for_status()
            yield client


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def api_server(redis_url: str, data_dir: Path) -> Iterator[Api]:
    """`framefleet api` in a child process, as an operator starts it, until it answers."""
    api = Api(f"http://127.0.0.1:{_free_port()}", secrets.token_urlsafe(32))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAMEFLEET_")}
    env.update(
        FRAMEFLEET_REDIS_URL=redis_url,
        FRAMEFLEET_DATA_DIR=str(data_dir),
        FRAMEFLEET_QUEUE=QUEUE,
        FRAMEFLEET_API_TOKEN=api.token,
        FRAMEFLEET_API_PORT=api.url.rsplit(":", 1)[1],
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "framefleet", "api"], env=env, cwd=ROOT, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{api.url}/healthz", timeout=1.0).raise_for_status()
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    raise RuntimeError(f"the API did not start: {err}") from None
                time.sleep(0.1)
        yield api
    finally:
        proc.terminate()
        proc.wait(30)
        if proc.stderr is not None:
            proc.stderr.close()


# -- clients (each a forked process) ----------------------------------------------------------


def _bodies(n: int, batch: int, tag: str, meta: bool) -> list[bytes]:
    """POST bodies of `batch` items each, `n` items in all; s3:// uris (no address lookups),
    unique to this call."""
    bodies = []
    for start in range(0, n, batch):
        items: list[dict[str, Any]] = []
        for _ in range(min(batch, n - start)):
            uri = f"s3://customer-videos/uploads/2026/11/22/{tag}-{uuid.uuid4()}.mp4"
            items.append({"uri": uri, "meta": META} if meta else {"uri": uri})
        bodies.append(json.dumps({"items": items}).encode())
    return bodies


def _poster(api: Api, bodies: list[bytes], ready: Connection, start: EventType) -> None:
    """Send `bodies` one after another on one connection once `start` is set; report the
    seconds from the first send to the last answer and how many items were new."""
    with api.client() as client:
        ready.send("ready")
        start.wait()
        t0 = time.perf_counter()
        new, refused = 0, 0
        for body in bodies:
            resp = client.post(
                "/v1/items", content=body, headers={"Content-Type": "application/json"}
            )
            if resp.status_code != 200:
                raise RuntimeError(f"POST /v1/items: {resp.status_code} {resp.text[:500]}")
            answer = resp.json()
            new += len(answer["new"])
            refused += len(answer["existing"])
        ready.send((t0, time.perf_counter(), new, refused))


def timed_posts(api: Api, groups: list[list[bytes]]) -> tuple[float, float, int]:
    """Each group of bodies from its own client process, all released together: the wall
    time from the first send to the last answer (and when it started), the items new."""
    pipes, procs = [], []
    start = FORK.Event()
    for bodies in groups:
        parent, child = FORK.Pipe()
        proc = FORK.Process(target=_poster, args=(api, bodies, child, start), daemon=True)
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    for parent in pipes:
        if parent.recv() != "ready":
            raise RuntimeError("a client did not start")
    time.sleep(0.2)
    start.set()
    reports = [parent.recv() for parent in pipes]
    for proc in procs:
        proc.join(30)
        if proc.exitcode != 0:
            raise RuntimeError(f"a client exited with {proc.exitcode}")
    t0, t1 = min(r[0] for r in reports), max(r[1] for r in reports)
    new, existing = sum(r[2] for r in reports), sum(r[3] for r in reports)
    if existing:
        raise RuntimeError(f"{existing} items were answered as already known")
    return t0, t1 - t0, new


def _poller(api: Api, hz: float, stop: EventType, out: Connection) -> None:
    """GET /v1/queue every 1/hz s (the next one at once when an answer comes late), until
    `stop`: each request's (start, seconds)."""
    samples: list[tuple[float, float]] = []
    with api.client() as client:
        out.send("ready")
        due = time.perf_counter()
        while not stop.is_set():
            t0 = time.perf_counter()
            resp = client.get("/v1/queue")
            t1 = time.perf_counter()
            if resp.status_code != 200:
                raise RuntimeError(f"GET /v1/queue: {resp.status_code} {resp.text[:500]}")
            samples.append((t0, t1 - t0))
            due = max(due + 1 / hz, t1)
            time.sleep(max(0.0, due - time.perf_counter()))
    out.send(samples)


def _scraper(api: Api, path: str, n: int, out: Connection) -> None:
    """`n` GETs of `path` one after another: each one's seconds, the last body."""
    with api.client() as client:
        times, body = [], b""
        for _ in range(n):
            t0 = time.perf_counter()
            resp = client.get(path)
            times.append(time.perf_counter() - t0)
            if resp.status_code != 200:
                raise RuntimeError(f"GET {path}: {resp.status_code} {resp.text[:500]}")
            body = resp.content
        out.send((times, body))


def scrapes(api: Api, path: str, n: int) -> tuple[list[float], bytes]:
    parent, child = FORK.Pipe()
    proc = FORK.Process(target=_scraper, args=(api, path, n, child), daemon=True)
    proc.start()
    times, body = parent.recv()
    proc.join(30)
    return times, body


# -- one run ----------------------------------------------------------------------------------


def verdicts(result: dict[str, Any]) -> dict[str, bool]:
    return {k: result[k] < bound for k, (_, bound) in TARGETS.items()}


def _wait_rewrite(client: Redis) -> None:
    """Let an append-only-file rewrite that the fill started finish before timing scrapes."""
    while True:
        info = client.info("persistence")
        if not info.get("aof_rewrite_in_progress") and not info.get("aof_rewrite_scheduled"):
            return
        time.sleep(0.05)


def _queued(q: Queue) -> int:
    return int(q.stats().counts["queued"])


def _ms(seconds: list[float]) -> list[float]:
    return [s * 1000 for s in seconds]


def quantiles(ms: list[float]) -> dict[str, float]:
    """p50, p99 and max in ms, and how many samples (none: only n)."""
    if not ms:
        return {"n": 0}
    qs = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else ms * 99
    return {
        "p50": round(statistics.median(ms), 2),
        "p99": round(qs[98], 2),
        "max": round(max(ms), 2),
        "n": len(ms),
    }


def _phases(sizes: Sizes, run: int) -> dict[str, list[list[bytes]]]:
    """Each enqueue phase's request bodies, a list for each client process."""
    n, b, clients = sizes.items, sizes.batch, sizes.clients
    return {
        "one_post": [_bodies(n, n, f"r{run}-one", meta=False)],
        "one_post_meta": [_bodies(n, n, f"r{run}-meta", meta=True)],
        "sequential": [_bodies(n, b, f"r{run}-seq", meta=False)],
        "concurrent": [
            _bodies(n // clients, b, f"r{run}-c{i}", meta=False) for i in range(clients)
        ],
    }


def enqueue_phases(api: Api, q: Queue, sizes: Sizes, run: int) -> dict[str, Any]:
    """The enqueue phases one after another with the poller running: each one's seconds,
    each one's poll latencies (a poll counts for a phase when it was in flight while the
    phase ran), and those of the polls between phases (clients starting, the checks)."""
    phases = _phases(sizes, run)
    parent, child = FORK.Pipe()
    stop = FORK.Event()
    poller = FORK.Process(target=_poller, args=(api, sizes.poll_hz, stop, child), daemon=True)
    poller.start()
    if parent.recv() != "ready":
        raise RuntimeError("the poller did not start")
    out: dict[str, Any] = {}
    windows: dict[str, tuple[float, float]] = {}
    expected = 0
    for name, groups in phases.items():
        time.sleep(0.3)  # a few polls before each phase, not counted
        t0, seconds, new = timed_posts(api, groups)
        sent = sum(len(json.loads(body)["items"]) for bodies in groups for body in bodies)
        expected += sent
        queued = _queued(q)
        if new != sent or queued != expected:
            raise RuntimeError(f"{name}: {new} of {sent} new; {queued} queued, not {expected}")
        out[f"{name}_s"] = seconds
        windows[name] = (t0, t0 + seconds)
    time.sleep(0.3)
    stop.set()
    samples: list[tuple[float, float]] = parent.recv()
    poller.join(30)
    out["polls"] = {
        name: [s for t, s in samples if t < end and t + s > begin]
        for name, (begin, end) in windows.items()
    }
    out["polls_between"] = [
        s for t, s in samples if not any(t < e and t + s > b for b, e in windows.values())
    ]
    return out


def scrape_phase(api: Api, client: Redis, q: Queue, sizes: Sizes, run: int) -> dict[str, Any]:
    """Fill the queue to sizes.queued queued items, then scrape /metrics (and read
    /v1/queue) one request after another, nothing else running."""
    fill = sizes.queued - _queued(q)
    for start in range(0, fill, 10_000):
        q.enqueue(
            [
                f"s3://customer-videos/uploads/2026/11/22/r{run}-fill-{uuid.uuid4()}.mp4"
                for _ in range(min(10_000, fill - start))
            ]
        )
    if (queued := _queued(q)) != sizes.queued:
        raise RuntimeError(f"the fill left {queued} queued, not {sizes.queued}")
    _wait_rewrite(client)
    full, body = scrapes(api, "/metrics", sizes.scrapes)
    wanted = f'framefleet_queue_items{{state="queued"}} {float(sizes.queued)}'
    if wanted not in body.decode():
        raise RuntimeError(f"the scrape does not say {wanted!r}")
    queue_full, _ = scrapes(api, "/v1/queue", sizes.scrapes)
    return {"metrics": _ms(full), "metrics_bytes": len(body), "queue_full": _ms(queue_full)}


def one_run(api: Api, client: Redis, sizes: Sizes, run: int) -> dict[str, Any]:
    """Every phase once, from an empty queue."""
    quiesce(client)
    q = Queue(client, QueueSettings(name=QUEUE))
    empty, _ = scrapes(api, "/metrics", sizes.scrapes)
    return {
        "metrics_empty": _ms(empty),
        **enqueue_phases(api, q, sizes, run),
        **scrape_phase(api, client, q, sizes, run),
    }


def warm_up(api: Api) -> None:
    """One request of each kind, so that no run pays for the server's first ones."""
    with api.client() as client:
        for body in _bodies(200, 100, "warm", meta=True):
            client.post("/v1/items", content=body, headers={"Content-Type": "application/json"})
        client.get("/v1/queue").raise_for_status()
        client.get("/metrics").raise_for_status()


def versions() -> dict[str, Any]:
    names = ("fastapi", "starlette", "uvicorn", "pydantic", "httpx", "redis", "hiredis")
    found = {name: importlib.metadata.version(name) for name in names}
    # uvicorn's "auto" picks uvloop and httptools when they are installed (uvicorn[standard])
    found["uvicorn_loop"] = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    found["uvicorn_http"] = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return found


def _source() -> dict[str, Any]:
    """The commit measured, and the files of the package changed in the tree since it."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout

    changed = git("status", "--porcelain", "--", "framefleet").splitlines()
    return {
        "commit": git("rev-parse", "--short", "HEAD").strip(),
        "changed": [c[3:] for c in changed],
    }


def summarize(runs: list[dict[str, Any]], sizes: Sizes) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key in ("one_post_s", "one_post_meta_s", "sequential_s", "concurrent_s"):
        result[key] = round(statistics.median(r[key] for r in runs), 3)
        result[key.removesuffix("_s") + "_items_per_s"] = round(sizes.items / result[key])
        result[key + "_runs"] = [round(r[key], 3) for r in runs]
    during = [s * 1000 for r in runs for phase in r["polls"].values() for s in phase]
    poll = quantiles(during)
    result["queue_poll_p50_ms"], result["queue_poll_p99_ms"] = poll["p50"], poll["p99"]
    result["queue_poll"] = poll
    result["queue_poll_by_phase"] = {
        name: quantiles([s * 1000 for r in runs for s in r["polls"][name]])
        for name in runs[0]["polls"]
    }
    result["queue_poll_between"] = quantiles([s * 1000 for r in runs for s in r["polls_between"]])
    result["queue_poll_p99_ms_runs"] = [
        quantiles([s * 1000 for p in r["polls"].values() for s in p])["p99"] for r in runs
    ]
    metrics = quantiles([ms for r in runs for ms in r["metrics"]])
    result["metrics_p50_ms"], result["metrics_p99_ms"] = metrics["p50"], metrics["p99"]
    result["metrics"] = metrics
    result["metrics_p99_ms_runs"] = [quantiles(r["metrics"])["p99"] for r in runs]
    result["metrics_empty"] = quantiles([ms for r in runs for ms in r["metrics_empty"]])
    result["metrics_bytes"] = runs[-1]["metrics_bytes"]
    result["queue_full"] = quantiles([ms for r in runs for ms in r["queue_full"]])
    return result


def run(quick: bool, repeats: int, poll_hz: float) -> dict[str, Any]:
    sizes = Sizes.of(quick, poll_hz)
    runs = 1 if quick else repeats
    load_before = os.getloadavg()[0]  # others' work on a shared machine shows here
    with tempfile.TemporaryDirectory(prefix="ff-bench-api-") as tmp:
        server = EmbeddedServer(Path(tmp) / "redis", appendfsync="everysec").start()
        try:
            client = connect(server.url)
            assert isinstance(client, Redis)  # the embedded server's URL
            version = client.info("server")
            with api_server(server.url, Path(tmp)) as api:
                warm_up(api)
                measured = [one_run(api, client, sizes, i) for i in range(runs)]
            client.close()
        finally:
            server.stop()
    result: dict[str, Any] = {
        "benchmark": "api",
        "server": f"valkey {version.get('valkey_version', version.get('redis_version'))} "
        "(embedded, AOF everysec)",
        "api": "framefleet api (its own process), loopback, token",
        "machine": machine(),
        "versions": versions(),
        "sizes": vars(sizes),
        "runs": runs,
        "load_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # before, after
        **_source(),
        **summarize(measured, sizes),
    }
    result["targets"] = {k: f"{op} {bound}" for k, (op, bound) in TARGETS.items()}
    result["met"] = verdicts(result)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/api.py", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small sizes, one run (a smoke test)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--poll-hz", type=float, default=20.0, help="GET /v1/queue a second")
    p.add_argument("--out", help="also append the JSON line to this file")
    args = p.parse_args(argv)
    emit(run(args.quick, args.repeats, args.poll_hz), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
