"""The `framefleet` command line. Every command reads one Settings (environment, then flags)."""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from framefleet.queue import (
    EmbeddedServer,
    InvalidItem,
    NewItem,
    Queue,
    ServerError,
    State,
    Supervision,
    connect,
    embedded,
    open_queue,
    redacted,
)
from framefleet.settings import ApiSettings, QueueSettings, Settings, SettingsError

if TYPE_CHECKING:
    from rich.progress import Progress

Command = Callable[[argparse.Namespace, Settings], int]


def _settings(args: argparse.Namespace) -> Settings:
    s = Settings.from_env()
    redis = s.redis
    if args.redis_url:
        redis = replace(redis, url=args.redis_url)
    if args.data_dir:
        redis = replace(redis, data_dir=Path(args.data_dir))
    queue = replace(s.queue, name=args.queue) if args.queue else s.queue
    return replace(s, redis=redis, queue=queue)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def _as_uri(text: str) -> str:
    """A local path given on the command line becomes absolute; URIs pass unchanged."""
    if "://" in text:
        return text
    return str(Path(text).expanduser().absolute())


# -- commands ------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    """Enqueue, claim, checkpoint and ack a few items on the queue, printing the counts."""
    settings = replace(settings, queue=replace(settings.queue, name=args.queue or "demo"))
    with open_queue(settings) as q:
        where = redacted(settings.redis.url or "") or (
            f"embedded server, data in {settings.redis.data_dir}"
        )
        print(f"queue {settings.queue.name!r} on {where}")
        uris = [f"/demo/videos/clip-{i:03d}.mp4" for i in range(args.items)]
        new = q.enqueue(uris, force=True)
        print(f"enqueued {len(new)} items; counts {_counts(q)}")
        done = 0
        while done < len(uris):
            leases = q.claim(min(4, len(uris) - done), "demo-worker", block=5.0)
            if not leases:
                break
            for lease in leases:
                for chunk in range(3):
                    q.progress(lease, chunk, total=3)
                if q.ack(lease, f"file:///demo/out/{lease.id}/detections.parquet"):
                    done += 1
            print(f"claimed and acked {len(leases)}; counts {_counts(q)}")
        print(f"done {done} of {len(uris)}")
        return 0 if done == len(uris) else 1


def _fleet_settings(args: argparse.Namespace, settings: Settings) -> Settings:
    """The model and fleet flags of run/coordinator/up over the settings; with a local Ray on
    a machine without CUDA, the inference actors ask for no GPU."""
    model, pipeline, coord = settings.model, settings.pipeline, settings.coordinator
    if getattr(args, "model", None):
        model = replace(model, model=args.model)
    if getattr(args, "random_weights", False):
        model = replace(model, random_weights=True)
    if getattr(args, "out", None):
        pipeline = replace(pipeline, out=_as_uri(args.out))
    if getattr(args, "ray_address", None):
        coord = replace(coord, ray_address=args.ray_address)
    if coord.ray_address is None and pipeline.gpus_per_inference > 0:
        import torch

        if not torch.cuda.is_available():
            pipeline = replace(pipeline, gpus_per_inference=0.0)
    return replace(settings, model=model, pipeline=pipeline, coordinator=coord)


@contextlib.contextmanager
def _redis_url(settings: Settings) -> Iterator[str]:
    """The queue's URL for the fleet commands: they own the embedded server they start, and
    start it again if it dies while they run."""
    if settings.redis.url:
        yield settings.redis.url
    else:
        with embedded(settings.redis, keep_alive=True) as url:
            yield url


RUN_QUEUE = "run"  # the queue `run` uses unless --queue or FRAMEFLEET_QUEUE names another


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    """Process videos on this machine until each is done or dead; exit 0 when all are done.

    Its fleet may read the folders it is given (they widen the allowed roots), so it runs
    on a queue of its own and refuses a queue that another coordinator serves: that fleet's
    producers would get those roots too."""
    from framefleet.coordinator.job import expand, run_job

    uris = expand(args.paths)
    if not uris:
        print("no videos found in the paths given", file=sys.stderr)
        return 2
    if settings.queue.name == QueueSettings().name:
        settings = replace(settings, queue=replace(settings.queue, name=RUN_QUEUE))
    roots = {Path(u).parent for u in uris if "://" not in u}
    allowed = tuple(dict.fromkeys([*settings.source.allowed_roots, *roots]))
    source = replace(settings.source, allowed_roots=allowed)
    settings = replace(_fleet_settings(args, settings), source=source)
    with _redis_url(settings) as url:
        leader = Supervision(Queue(connect(url), settings.queue)).leader()
        if leader is not None:
            print(
                f"refused: coordinator {leader} serves queue {settings.queue.name!r}; `run`"
                " would let its fleet read the folders given here. Enqueue them there with"
                " `framefleet enqueue`, or run on another queue (--queue).",
                file=sys.stderr,
            )
            return 2
        return run_job(settings, url, uris)


def cmd_coordinator(args: argparse.Namespace, settings: Settings) -> int:
    """The long-running supervisor (leader or standby) until SIGTERM or Ctrl-C."""
    from framefleet.coordinator.supervisor import Coordinator

    settings = _fleet_settings(args, settings)
    with _redis_url(settings) as url:
        coordinator = Coordinator(settings, url)
        print(f"coordinator {coordinator.name} on {redacted(url)}", file=sys.stderr)
        code = coordinator.run()
        if coordinator.fatal:
            print(f"error: {coordinator.fatal}", file=sys.stderr)
        return code


def cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    """The HTTP API in the foreground, until SIGTERM or Ctrl-C."""
    from framefleet.ops.api import serve

    settings = replace(settings, api=_api_settings(settings.api, args.host, args.port))
    if args.child_of is not None:
        _exit_with_parent(args.child_of)  # `up` prints where it listens once it answers
    else:
        print(_api_banner(settings.api), file=sys.stderr)
    with open_queue(settings) as q:
        return serve(settings, q)


def _api_settings(api: ApiSettings, host: str | None, port: int | None) -> ApiSettings:
    return replace(api, host=host or api.host, port=api.port if port is None else port)


def _api_url(api: ApiSettings) -> str:
    host = api.host
    return f"http://{f'[{host}]' if ':' in host else host}:{api.port}"


def _reachable(host: str) -> str:
    """Where this machine reaches a server bound to `host` (a wildcard bind: loopback)."""
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)


def _api_banner(api: ApiSettings) -> str:
    """Where the API listens and where its token is (never the token itself)."""
    if api.token_file is not None:
        where = f"token required: the one in {api.token_file} (FRAMEFLEET_API_TOKEN_FILE)"
    elif api.token:
        where = "token required: the value of FRAMEFLEET_API_TOKEN"
    else:
        where = "no token: loopback only, open to every user of this machine"
    if api.read_token:
        where += "; FRAMEFLEET_API_READ_TOKEN may GET"
    if api.read_only:
        where += "; read-only (FRAMEFLEET_API_READ_ONLY)"
    return f"framefleet API on {_api_url(api)}{api.root_path} ({where})"


def _api_refused(api: ApiSettings) -> str | None:
    """Why the API would refuse to start as configured (serve() says the same), or None."""
    from framefleet.ops.api import LOOPBACK

    if api.write_token() is None and api.host not in LOOPBACK:
        return (
            f"refusing to serve the API on {api.host} without a token: set"
            " FRAMEFLEET_API_TOKEN or FRAMEFLEET_API_TOKEN_FILE, bind 127.0.0.1, or --no-api"
        )
    return None


def _exit_with_parent(parent: int) -> None:
    """Stop this process as SIGTERM does (requests in flight finished) once its parent is
    gone, however it went (kill -9 included), so that no API outlives its `up`."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class ApiChild:
    """The API of `framefleet up`: `framefleet api` in a child process on the same queue.

    A process of its own rather than a thread: the API keeps exactly the server and the
    signal handling of `framefleet api` (uvicorn wants the main thread for those), a slow
    request or a crash of the API never stalls the coordinator's ticks, and it is started
    again if it crashes. The Redis URL goes in its environment (its password would show in
    `ps` on the command line); it stops when `up` does, or when `up` dies."""

    RESTART_S = 5.0  # at most one restart this often

    def __init__(self, settings: Settings, redis_url: str) -> None:
        self.api = settings.api
        self.env = {
            **os.environ,
            "FRAMEFLEET_REDIS_URL": redis_url,
            "FRAMEFLEET_QUEUE": settings.queue.name,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.told = False  # that it stopped and stays stopped

    def start(self) -> None:
        host, port = self.api.host, str(self.api.port)
        argv = ["api", "--host", host, "--port", port, "--child-of", str(os.getpid())]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "framefleet", *argv],
            env=self.env,
            stdin=subprocess.DEVNULL,
        )
        self.started = time.monotonic()

    def wait_ready(self, stop: threading.Event, timeout_s: float = 60.0) -> bool:
        """Until it answers /healthz (True), or it exits, `stop` is set or time is up."""
        host = _reachable(self.api.host)
        deadline = time.monotonic() + timeout_s
        while self.proc is not None and self.proc.poll() is None and not stop.is_set():
            conn = http.client.HTTPConnection(host, self.api.port, timeout=1)  # no proxy
            try:
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    return True
            except OSError:  # not listening yet
                pass
            finally:
                conn.close()
            if time.monotonic() > deadline:
                return False
            stop.wait(0.1)
        return False

    def tend(self, stopping: threading.Event) -> bool:
        """Each coordinator tick: an API that crashed is started again (at most every
        RESTART_S); one stopped on purpose (exit 0: a SIGTERM of its own) stays stopped.
        Never ends the run (False)."""
        proc = self.proc
        if proc is None or proc.poll() is None or stopping.is_set():
            return False
        if proc.returncode == 0:
            if not self.told:
                print("the API stopped (exit 0); the fleet carries on without it", file=sys.stderr)
                self.told = True
            return False
        if time.monotonic() - self.started >= self.RESTART_S:
            print(f"the API exited (code {proc.returncode}); starting it again", file=sys.stderr)
            self.start()
        return False

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()  # it finishes the requests in flight within 10 s
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    """Everything on this machine until SIGTERM or Ctrl-C: the embedded server (unless a
    Redis URL is given), a local Ray (unless --ray-address), the coordinator, and the HTTP
    API (unless --no-api) on FRAMEFLEET_API_HOST/PORT (127.0.0.1:8321)."""
    from framefleet.coordinator.supervisor import Coordinator

    settings = replace(settings, api=_api_settings(settings.api, args.api_host, args.api_port))
    if not args.no_api and (why := _api_refused(settings.api)):
        print(why, file=sys.stderr)
        return 2
    settings = _fleet_settings(args, settings)
    stop = threading.Event()  # until the coordinator takes the signals over
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    with _redis_url(settings) as url:
        api = None if args.no_api else ApiChild(settings, url)
        try:
            if api is not None:
                api.start()
            coordinator = Coordinator(settings, url)
            print(f"coordinator {coordinator.name} on {redacted(url)}", file=sys.stderr)
            if api is not None:
                if not api.wait_ready(stop):
                    return 0 if stop.is_set() else _api_failed(api)
                print(_api_banner(settings.api), file=sys.stderr, flush=True)
            if stop.is_set():
                return 0
            code = coordinator.run(until=lambda: api is not None and api.tend(coordinator.stopping))
        finally:
            if api is not None:
                api.stop()
        if coordinator.fatal:
            print(f"error: {coordinator.fatal}", file=sys.stderr)
        return code


def _api_failed(api: ApiChild) -> int:
    code = None if api.proc is None else api.proc.poll()
    how = "did not answer within 60 s" if code is None else f"exited (code {code})"
    print(
        f"the API {how}: is {_api_url(api.api)} taken? Choose another port (--api-port,"
        " FRAMEFLEET_API_PORT), or run without it (--no-api)",
        file=sys.stderr,
    )
    return 1


def _counts(q: Queue) -> str:
    c = q.stats().counts
    return " ".join(f"{k}={c[k]}" for k in ("queued", "leased", "done", "dead"))


BAR_OVER = 1000  # enqueue shows a progress bar (on a terminal) beyond this many items
CHECK_STEP = 1000  # items checked between two steps of the bar


def cmd_enqueue(args: argparse.Namespace, settings: Settings) -> int:
    """Enqueue URIs (and --file's lines); every item is checked before anything is written.
    On a terminal, a batch of over BAR_OVER items, or one read from a file or stdin, shows a
    progress bar on stderr while it is checked and written (stdout is the JSON answer)."""
    uris = _uris(args)
    if isinstance(uris, int):
        return uris
    show = sys.stderr.isatty() and (len(uris) > BAR_OVER or bool(args.file))
    with _progress(show) as bar:
        try:
            items = _checked(uris, args.id, _priority(args.priority), bar)
        except InvalidItem as exc:
            print(f"refused, nothing enqueued: {exc}", file=sys.stderr)
            return 2
        with open_queue(settings) as q:
            new = _written(q, items, args.force, bar)
    _print_json({"enqueued": len(new), "already_known": len(items) - len(new), "new_ids": new})
    return 0


def _uris(args: argparse.Namespace) -> list[str] | int:
    """The URIs given and read from --file, or the exit code of a refusal (said why)."""
    uris = list(args.uris)
    if args.file:
        try:
            stream = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")  # noqa: SIM115
            with stream:
                uris += [line.strip() for line in stream if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            print(
                f"refused, nothing enqueued: cannot read --file {args.file}: {exc}", file=sys.stderr
            )
            return 2
    if not uris:
        print("nothing to enqueue: give URIs or --file", file=sys.stderr)
        return 2
    if args.id and len(uris) != 1:
        print("--id goes with exactly one URI", file=sys.stderr)
        return 2
    return uris


@contextlib.contextmanager
def _progress(show: bool) -> Iterator[Progress | None]:
    """A rich progress display on stderr, or None when not shown."""
    if not show:
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description:>8}"), BarColumn(), MofNCompleteColumn())
    timing = (TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, *timing, console=Console(stderr=True)) as progress:
        yield progress


def _checked(
    uris: list[str], item_id: str | None, priority: int | str, bar: Progress | None
) -> list[NewItem]:
    task = None if bar is None else bar.add_task("checked", total=len(uris))
    items: list[NewItem] = []
    for start in range(0, len(uris), CHECK_STEP):
        step = uris[start : start + CHECK_STEP]
        items += [NewItem(uri=_as_uri(u), id=item_id, priority=priority) for u in step]
        if bar is not None and task is not None:
            bar.advance(task, len(step))
    return items


def _written(q: Queue, items: list[NewItem], force: bool, bar: Progress | None) -> list[str]:
    """Queue.enqueue, in steps of a few script batches when a bar shows how far it is (the
    same writes: batches are written one by one either way)."""
    if bar is None:
        return q.enqueue(items, force=force)
    task = bar.add_task("enqueued", total=len(items))
    step = q.settings.batch_size * 8
    new: list[str] = []
    for start in range(0, len(items), step):
        new += q.enqueue(items[start : start + step], force=force)
        bar.advance(task, len(items[start : start + step]))
    return new


def _priority(text: str) -> int | str:
    return int(text) if text.lstrip("-").isdigit() else text


def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    """A health check for containers: exit 0 when Redis answers and the leader's health
    report is fresh and ok, 1 (saying which fails) otherwise. It never starts a server."""
    import time as _time

    from framefleet.queue import Supervision, connect
    from framefleet.queue.server import running_url

    url = settings.redis.url or running_url(settings.redis.data_dir)
    if url is None:
        print(f"unhealthy: no embedded server runs on {settings.redis.data_dir}", file=sys.stderr)
        return 1
    try:
        client = connect(url, retry_s=0)
        client.ping()
        report = Supervision(Queue(client, settings.queue)).health()
    except Exception as exc:  # any failure to answer is the answer
        print(f"unhealthy: Redis does not answer: {exc}", file=sys.stderr)
        return 1
    if report is None:
        print("unhealthy: no fresh health report from a leader coordinator", file=sys.stderr)
        return 1
    age = _time.time() - float(report.get("at", 0))
    if age > args.max_age_s or not report.get("ok", False):
        why = report.get("error") or f"the report is {age:.0f} s old"
        print(f"unhealthy: {why}", file=sys.stderr)
        return 1
    print(f"healthy: leader {report.get('leader')}, report {age:.1f} s old")
    return 0


def cmd_stats(args: argparse.Namespace, settings: Settings) -> int:
    with open_queue(settings) as q:
        _print_json(q.stats().as_dict())
    return 0


def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    with open_queue(settings) as q:
        item = q.get(args.id)
        if item is None:
            print(f"no item {args.id!r}", file=sys.stderr)
            return 1
        _print_json({"chunks": sorted(q.chunks(args.id)), **_item_dict(item)})
    return 0


def _item_dict(item: Any) -> dict[str, Any]:
    return {f: getattr(item, f) for f in item.__slots__}


def cmd_pause(args: argparse.Namespace, settings: Settings) -> int:
    with open_queue(settings) as q:
        if args.command == "pause":
            q.pause()
        else:
            q.resume()
        paused = q.stats().paused
    if args.json:
        _print_json({"queue": settings.queue.name, "paused": paused})
    else:
        print(f"queue {settings.queue.name!r} {'paused' if paused else 'running'}")
    return 0


def cmd_items(args: argparse.Namespace, settings: Settings) -> int:
    """One page of one state's items, newest first, and the cursor of the next page."""
    with open_queue(settings) as q:
        try:
            found, cursor = q.page(args.state, args.limit, args.cursor)
        except ValueError as exc:  # a cursor that is not one
            print(f"bad --cursor: {exc}", file=sys.stderr)
            return 2
        if args.json:
            items = [_item_dict(i) for i in found]
            _print_json({"state": args.state, "items": items, "cursor": cursor})
            return 0
        now_ms = q.now_ms()
        counts = {} if found else q.stats().counts
    if not found:
        others = ", ".join(f"{k} {n}" for k, n in counts.items() if n and k != args.state)
        after = " after that cursor" if args.cursor else ""
        print(f"no {args.state} items{after}" + (f" ({others})" if others else ""))
        return 0
    from rich.console import Console

    from framefleet.ops.watch import items_table

    Console().print(items_table(found, args.state, now_ms))
    print(f"next page: --cursor {cursor}" if cursor else "(last page)")
    return 0


def cmd_watch(args: argparse.Namespace, settings: Settings) -> int:
    """The queue live until Ctrl-C (exit 0): counts, throughput, drain time, workers,
    leader and health, one progress bar per leased item. It never starts a server."""
    from rich.console import Console, Group
    from rich.live import Live
    from rich.text import Text

    from framefleet.ops.watch import duration, read_frame, render
    from framefleet.queue.server import running_url

    url = settings.redis.url or running_url(settings.redis.data_dir)
    if url is None:
        print(
            f"no embedded server runs on {settings.redis.data_dir}: start `framefleet up`,"
            " or watch another server with --redis-url",
            file=sys.stderr,
        )
        return 1
    # commands retried briefly: a frame that cannot be read says so instead of freezing
    queue = Queue(connect(url, retry_s=min(args.interval, 5.0)), settings.queue)
    frame = read_frame(queue, args.limit)
    console = Console()
    if args.once:
        console.print(render(frame))
        return 0
    caption = Text(f"every {args.interval:g} s; Ctrl-C to quit", style="dim")
    signal.signal(signal.SIGTERM, _interrupt)
    read_at = time.monotonic()
    try:
        with Live(Group(render(frame), caption), console=console, refresh_per_second=4) as live:
            while True:
                time.sleep(args.interval)
                try:
                    frame, error = read_frame(queue, args.limit), None
                    read_at = time.monotonic()
                except RedisError as exc:
                    ago = duration(time.monotonic() - read_at)
                    error = f"Redis does not answer ({exc}); the frame below is {ago} old"
                live.update(Group(render(frame, error), caption))
    except KeyboardInterrupt:
        pass
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def cmd_reap(args: argparse.Namespace, settings: Settings) -> int:
    with open_queue(settings) as q:
        r = q.reap()
    _print_json({"requeued": r.requeued, "poisoned": r.poisoned, "promoted": r.promoted})
    return 0


def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    with open_queue(settings) as q:
        ok = q.cancel(args.id, args.why)
    print("cancelled" if ok else f"not cancelled: {args.id!r} is not queued or delayed")
    return 0 if ok else 1


def cmd_dead(args: argparse.Namespace, settings: Settings) -> int:
    with open_queue(settings) as q:
        if args.action == "list":
            _print_json([_item_dict(i) for i in q.dead(limit=args.limit)])
            return 0
        if not args.ids and not args.all:
            print(f"dead {args.action}: give ids or --all", file=sys.stderr)
            return 2
        op = q.retry_dead if args.action == "retry" else q.purge_dead
        moved = op(args.ids, limit=args.limit) if args.ids else _drain(op, args.limit)
    _print_json({"retried" if args.action == "retry" else "purged": moved})
    return 0


def _drain(op: Callable[..., list[str]], limit: int) -> list[str]:
    out: list[str] = []
    while batch := op((), limit=limit):
        out += batch
    return out


def cmd_inbox(args: argparse.Namespace, settings: Settings) -> int:
    with open_queue(settings) as q:
        if args.action == "ingest":
            r = q.ingest_inbox(limit=args.limit)
            _print_json(
                {
                    "ingested": r.ingested,
                    "rejected": r.rejected,
                    "duplicates": r.duplicates,
                    "remaining": r.remaining,
                }
            )
        else:
            _print_json(q.rejected(limit=args.limit))
    return 0


def cmd_redis(args: argparse.Namespace, settings: Settings) -> int:
    """Run the embedded server in the foreground until Ctrl-C or SIGTERM."""
    server = EmbeddedServer(
        settings.redis.data_dir,
        appendfsync=args.appendfsync or settings.redis.appendfsync,
        port=args.port or settings.redis.port,
    ).start()
    print(f"FRAMEFLEET_REDIS_URL={server.url}", flush=True)
    stop = False

    def _stop(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    try:
        while not stop and server.process is not None and server.process.poll() is None:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    """Run bench/<name>.py from the source checkout (benchmarks are not installed)."""
    script = Path(__file__).resolve().parents[1] / "bench" / f"{args.name}.py"
    if not script.is_file():
        print(f"no benchmark {script} (benchmarks run from a source checkout)", file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, str(script), *args.bench_args])


# -- parser --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="framefleet", description=__doc__)
    p.add_argument(
        "--redis-url",
        help="Redis/Valkey URL (default: $FRAMEFLEET_REDIS_URL, else the embedded server)",
    )
    p.add_argument("--data-dir", help="embedded server data dir (default .framefleet/redis)")
    p.add_argument("--queue", help="queue name (default: $FRAMEFLEET_QUEUE or 'videos')")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, fn: Command, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(fn=fn)
        return sp

    sp = add("demo", cmd_demo, "enqueue, claim and ack a few items; print the counts")
    sp.add_argument("--items", type=int, default=8)
    sp = add("run", cmd_run, "process videos here (embedded Redis, local Ray) until done")
    sp.add_argument("paths", nargs="+", help="video files, folders of videos, or URIs")
    sp.add_argument("--out", required=True, help="output directory or s3://bucket/prefix")
    _fleet_flags(sp)
    for name, fn, help_text in (
        ("coordinator", cmd_coordinator, "the supervisor: leader or standby, until SIGTERM"),
        ("up", cmd_up, "everything on this machine (embedded Redis, local Ray, coordinator, API)"),
    ):
        sp = add(name, fn, help_text)
        sp.add_argument("--out", help="output directory or s3://bucket/prefix")
        sp.add_argument("--ray-address", help="a Ray cluster (default: start a local one)")
        _fleet_flags(sp)
    sp.add_argument("--api-host", help="the API's address (default 127.0.0.1, FRAMEFLEET_API_HOST)")
    sp.add_argument(
        "--api-port", type=int, help="the API's port (default 8321, FRAMEFLEET_API_PORT)"
    )
    sp.add_argument("--no-api", action="store_true", help="do not serve the HTTP API")
    sp = add("api", cmd_api, "the HTTP API (items, queue, pause/resume) until SIGTERM")
    sp.add_argument("--host", help="address to bind (default 127.0.0.1, FRAMEFLEET_API_HOST)")
    sp.add_argument("--port", type=int, help="port (default 8321, FRAMEFLEET_API_PORT)")
    sp.add_argument("--child-of", type=int, help=argparse.SUPPRESS)  # the pid of its `up`
    sp = add("enqueue", cmd_enqueue, "enqueue videos by URI or local path")
    sp.add_argument("uris", nargs="*")
    sp.add_argument("--file", help="read one URI per line from a file, or - for stdin")
    sp.add_argument("--id", help="the item id (default: derived from the URI)")
    sp.add_argument("--priority", default="5", help="0..9 or low|normal|high (default 5)")
    sp.add_argument("--force", action="store_true", help="run done/dead items again")
    _json_flag(sp)
    _json_flag(add("stats", cmd_stats, "counts by state, age of the oldest queued item, counters"))
    sp = add("items", cmd_items, "one state's items, newest first, a page at a time")
    sp.add_argument(
        "--state", choices=[x.value for x in State], default="queued", help="(default queued)"
    )
    sp.add_argument("--limit", type=_positive, default=50, help="items a page (default 50)")
    sp.add_argument("--cursor", help="where the page starts: the previous page's next cursor")
    _json_flag(sp)
    sp = add("watch", cmd_watch, "the queue live: counts, throughput, progress of each video")
    sp.add_argument("--interval", type=_seconds, default=2.0, help="seconds a frame (default 2)")
    sp.add_argument("--limit", type=int, default=20, help="leased items shown (default 20)")
    sp.add_argument("--once", action="store_true", help="print one frame and exit")
    sp = add("check", cmd_check, "exit 0 if Redis answers and the leader's report is fresh")
    sp.add_argument("--max-age-s", type=float, default=30.0, help="freshness (default 30 s)")
    sp = add("show", cmd_show, "one item as stored")
    sp.add_argument("id")
    _json_flag(sp)
    _json_flag(add("pause", cmd_pause, "stop handing out items"))
    _json_flag(add("resume", cmd_pause, "hand out items again"))
    add("reap", cmd_reap, "take back expired leases now")
    sp = add("cancel", cmd_cancel, "cancel a queued item (it becomes a dead letter)")
    sp.add_argument("id")
    sp.add_argument("--why", default="by request")
    sp = add("dead", cmd_dead, "dead letters: list, retry, purge")
    sp.add_argument("action", choices=("list", "retry", "purge"))
    sp.add_argument("ids", nargs="*")
    sp.add_argument("--all", action="store_true")
    sp.add_argument("--limit", type=int, default=100)
    _json_flag(sp)
    sp = add("inbox", cmd_inbox, "the plain-client inbox: ingest now, or list rejected entries")
    sp.add_argument("action", choices=("ingest", "rejected"))
    sp.add_argument("--limit", type=int, default=1000)
    sp = add("redis", cmd_redis, "run the embedded server in the foreground")
    sp.add_argument("--port", type=int, default=0)
    sp.add_argument("--appendfsync", choices=("everysec", "always"))
    sp = add(
        "bench", cmd_bench, "run a benchmark: `framefleet bench queue|pipeline|recovery|api [args]`"
    )
    sp.add_argument("name", choices=("queue", "pipeline", "recovery", "api", "dashboard"))
    sp.add_argument("bench_args", nargs=argparse.REMAINDER)
    return p


def _json_flag(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--json", action="store_true", help="one JSON document on stdout, stable keys (scripts)"
    )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not 0.1 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"must be between 0.1 and 3600 s, not {value}")
    return value


def _fleet_flags(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--model", help="a model id or a local model directory")
    sp.add_argument(
        "--random-weights",
        action="store_true",
        help="a randomly initialised model of the same architecture (smoke runs, no download)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = _settings(args)
        result: int = args.fn(args, settings)
    except SettingsError as exc:
        print(f"bad setting: {exc}", file=sys.stderr)
        return 2
    except (RedisConnectionError, ServerError) as exc:
        print(f"cannot reach the queue's Redis: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return result


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
