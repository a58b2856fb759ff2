"""The fleet commands: `run`, `coordinator` and `up` (with its API in a child process) run a
fleet, `api` serves the HTTP API, `check` is the containers' health check, `demo` and `bench`
exercise the queue and run the benchmarks."""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from framefleet.cli.common import as_uri
from framefleet.queue import Queue, Supervision, connect, embedded, open_queue, redacted
from framefleet.settings import ApiSettings, QueueSettings, Settings


def _fleet_settings(args: argparse.Namespace, settings: Settings) -> Settings:
    """The model and fleet flags of run/coordinator/up over the settings; with a local Ray on
    a machine without CUDA, the inference actors ask for no GPU."""
    model, pipeline, coord = settings.model, settings.pipeline, settings.coordinator
    if getattr(args, "model", None):
        model = replace(model, model=args.model)
    if getattr(args, "random_weights", False):
        model = replace(model, random_weights=True)
    given = os.environ.get("FRAMEFLEET_SCORE_THRESHOLD") or getattr(args, "score_threshold", None)
    if model.random_weights and not given:  # a smoke run's scores are all low: keep them all,
        model = replace(model, score_threshold=0.0)  # so that its outputs show their shape
    if getattr(args, "out", None):
        pipeline = replace(pipeline, out=as_uri(args.out))
    if getattr(args, "ray_address", None):
        coord = replace(coord, ray_address=args.ray_address)
    if coord.ray_address is None and pipeline.gpus_per_inference > 0:
        import torch

        if not torch.cuda.is_available():
            pipeline = replace(pipeline, gpus_per_inference=0.0)
    return replace(settings, model=model, pipeline=pipeline, coordinator=coord)


def _model_refused(settings: Settings) -> int | None:
    """For a fleet on this machine (a local Ray): 2, said why and what to do, when its
    inference actors could not load the model (workers/model.py: preflight); else None. On a
    cluster the nodes that load it may see what this one does not: its actors say."""
    from framefleet.coordinator.job import model_hint
    from framefleet.workers.model import ModelLoadError, preflight

    if settings.coordinator.ray_address is not None:
        return None
    try:
        preflight(settings.model)
    except ModelLoadError as exc:
        print(f"error: {exc}\n{model_hint(str(exc))}", end="", file=sys.stderr)
        return 2
    return None


@contextlib.contextmanager
def _redis_url(settings: Settings) -> Iterator[str]:
    """The queue's URL for the fleet commands: they share the embedded server of the data dir
    with the other commands, and start it again if it dies while they run, whoever started
    it first."""
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
        return run_job(settings, url, uris)  # it checks the model before it starts a fleet


def cmd_coordinator(args: argparse.Namespace, settings: Settings) -> int:
    """The long-running supervisor (leader or standby) until SIGTERM or Ctrl-C."""
    from framefleet.coordinator.supervisor import Coordinator

    if getattr(args, "join", None):
        if args.ray_address and args.ray_address != args.join:
            print("--join names the cluster: leave --ray-address out", file=sys.stderr)
            return 2
        args.ray_address = args.join
    settings = _fleet_settings(args, settings)
    if (refused := _model_refused(settings)) is not None:
        return refused
    with _redis_url(settings) as url, _ray_node(getattr(args, "join", None)):
        coordinator = Coordinator(settings, url)
        print(f"coordinator {coordinator.name} on {redacted(url)}", file=sys.stderr)
        code = coordinator.run()
        if coordinator.fatal:
            print(f"error: {coordinator.fatal}", file=sys.stderr)
        return code


@contextlib.contextmanager
def _ray_node(join: str | None) -> Iterator[None]:
    """With --join, a zero-CPU Ray node kept joined to that head while the coordinator runs
    (a driver needs a raylet on its own machine: see coordinator/raynode.py)."""
    if not join:
        yield
        return
    from framefleet.coordinator.raynode import RayNodeKeeper

    keeper = RayNodeKeeper(join).start()
    try:
        yield
    finally:
        keeper.stop()


def cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    """The HTTP API in the foreground, until SIGTERM or Ctrl-C."""
    from framefleet.ops.server import serve

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


def _made_token(settings: Settings) -> ApiSettings:
    """`up`'s API is authenticated from its first start: with no token configured, one is
    made and kept in the data dir (`api-token`, the owner's only; the same one every start),
    and its path, never the token, is printed. A browser's page can then neither drive the
    API nor read it, whatever it tries."""
    from framefleet.queue.server import private_dir

    data_dir = Path(settings.redis.data_dir)
    private_dir(data_dir)
    path = data_dir / "api-token"
    if not path.is_file() or not path.read_text().strip():  # none, or an empty one (a crash)
        tmp = data_dir / f".api-token.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # whole or not at all; a parallel `up`'s token, made first, wins
        except FileExistsError:
            if not path.read_text().strip():
                os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return replace(settings.api, token_file=path.resolve())


def _api_refused(api: ApiSettings) -> str | None:
    """Why the API would refuse to start as configured (serve() says the same), or None."""
    from framefleet.ops.server import LOOPBACK

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
        # up's own settings, flags included (--out, --model, --log-level, the token file it
        # made...): the API reads the same outputs and queue as the fleet
        self.env = {**os.environ, **settings.to_env(), "FRAMEFLEET_REDIS_URL": redis_url}
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
    if not args.no_api and settings.api.write_token() is None:
        settings = replace(settings, api=_made_token(settings))
    if not args.no_api and (why := _api_refused(settings.api)):
        print(why, file=sys.stderr)
        return 2
    settings = _fleet_settings(args, settings)
    if (refused := _model_refused(settings)) is not None:
        return refused
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
        supervision = Supervision(Queue(client, settings.queue))
        report = supervision.health()
        # by the server's clock: the leader's host's clock, or this one's, may be off
        age = None if report is None else supervision.health_age_s(report)
    except Exception as exc:  # any failure to answer is the answer
        print(f"unhealthy: Redis does not answer: {exc}", file=sys.stderr)
        return 1
    if report is None:
        print("unhealthy: no fresh health report from a leader coordinator", file=sys.stderr)
        return 1
    if age is None:  # a report of an older coordinator, without the server's stamp
        age = _time.time() - float(report.get("at", 0))
    if age > args.max_age_s or not report.get("ok", False):
        why = report.get("error") or f"the report is {age:.0f} s old"
        print(f"unhealthy: {why}", file=sys.stderr)
        return 1
    print(f"healthy: leader {report.get('leader')}, report {age:.1f} s old")
    return 0


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


def _counts(q: Queue) -> str:
    c = q.stats().counts
    return " ".join(f"{k}={c[k]}" for k in ("queued", "leased", "done", "dead"))


def cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    """Run bench/<name>.py from the source checkout (benchmarks are not installed)."""
    return _bench_script(args.name, args.bench_args)


def _bench_script(name: str, argv: list[str]) -> int:
    """The benchmark in this process's place (exec): a signal to `framefleet bench` reaches
    it, and its clean-up runs, where a child of ours would be left orphaned."""
    script = Path(__file__).resolve().parents[2] / "bench" / f"{name}.py"
    if not script.is_file():
        print(f"no benchmark {script} (benchmarks run from a source checkout)", file=sys.stderr)
        return 2
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, str(script), *argv])


def cmd_chaos(args: argparse.Namespace, settings: Settings) -> int:
    """`run`: bench/chaos.py (a source checkout's: it makes its own fleet, videos and
    model); `check`: the checker on a history, exit 1 when the run broke a promise."""
    if args.action == "run":
        return _bench_script("chaos", args.chaos_args)
    from framefleet.chaos import checker

    return checker.main(args.chaos_args, prog="framefleet chaos check")
