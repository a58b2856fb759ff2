"""The `framefleet` command line. Every command reads one Settings (environment, then flags)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError

from framefleet.queue import (
    EmbeddedServer,
    InvalidItem,
    NewItem,
    Queue,
    ServerError,
    Supervision,
    connect,
    embedded,
    open_queue,
)
from framefleet.settings import QueueSettings, Settings, SettingsError

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
        where = settings.redis.url or f"embedded server, data in {settings.redis.data_dir}"
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
        print(f"coordinator {coordinator.name} on {url}", file=sys.stderr)
        code = coordinator.run()
        if coordinator.fatal:
            print(f"error: {coordinator.fatal}", file=sys.stderr)
        return code


def cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    """The HTTP API in the foreground, until SIGTERM or Ctrl-C."""
    from framefleet.ops.api import serve

    api = settings.api
    api = replace(
        api, host=args.host or api.host, port=api.port if args.port is None else args.port
    )
    settings = replace(settings, api=replace(api))
    with open_queue(settings) as q:
        where = "token required" if api.write_token() else "no token: loopback only"
        print(
            f"framefleet API on http://{api.host}:{api.port}{api.root_path} ({where})",
            file=sys.stderr,
        )
        return serve(settings, q)


def _counts(q: Queue) -> str:
    c = q.stats().counts
    return " ".join(f"{k}={c[k]}" for k in ("queued", "leased", "done", "dead"))


def cmd_enqueue(args: argparse.Namespace, settings: Settings) -> int:
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
    try:
        items = [
            NewItem(uri=_as_uri(u), id=args.id, priority=_priority(args.priority)) for u in uris
        ]
    except InvalidItem as exc:
        print(f"refused, nothing enqueued: {exc}", file=sys.stderr)
        return 2
    with open_queue(settings) as q:
        new = q.enqueue(items, force=args.force)
    _print_json({"enqueued": len(new), "already_known": len(items) - len(new), "new_ids": new})
    return 0


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
        print(f"queue {settings.queue.name!r} {'paused' if q.stats().paused else 'running'}")
    return 0


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
    for name, help_text in (
        ("coordinator", "the supervisor: leader or standby, until SIGTERM"),
        ("up", "everything on this machine (embedded Redis, local Ray, coordinator)"),
    ):
        sp = add(name, cmd_coordinator, help_text)
        sp.add_argument("--out", help="output directory or s3://bucket/prefix")
        sp.add_argument("--ray-address", help="a Ray cluster (default: start a local one)")
        _fleet_flags(sp)
    sp = add("api", cmd_api, "the HTTP API (items, queue, pause/resume) until SIGTERM")
    sp.add_argument("--host", help="address to bind (default 127.0.0.1, FRAMEFLEET_API_HOST)")
    sp.add_argument("--port", type=int, help="port (default 8321, FRAMEFLEET_API_PORT)")
    sp = add("enqueue", cmd_enqueue, "enqueue videos by URI or local path")
    sp.add_argument("uris", nargs="*")
    sp.add_argument("--file", help="read one URI per line from a file, or - for stdin")
    sp.add_argument("--id", help="the item id (default: derived from the URI)")
    sp.add_argument("--priority", default="5", help="0..9 or low|normal|high (default 5)")
    sp.add_argument("--force", action="store_true", help="run done/dead items again")
    add("stats", cmd_stats, "counts by state, age of the oldest queued item, counters")
    sp = add("check", cmd_check, "exit 0 if Redis answers and the leader's report is fresh")
    sp.add_argument("--max-age-s", type=float, default=30.0, help="freshness (default 30 s)")
    sp = add("show", cmd_show, "one item as stored")
    sp.add_argument("id")
    add("pause", cmd_pause, "stop handing out items")
    add("resume", cmd_pause, "hand out items again")
    add("reap", cmd_reap, "take back expired leases now")
    sp = add("cancel", cmd_cancel, "cancel a queued item (it becomes a dead letter)")
    sp.add_argument("id")
    sp.add_argument("--why", default="by request")
    sp = add("dead", cmd_dead, "dead letters: list, retry, purge")
    sp.add_argument("action", choices=("list", "retry", "purge"))
    sp.add_argument("ids", nargs="*")
    sp.add_argument("--all", action="store_true")
    sp.add_argument("--limit", type=int, default=100)
    sp = add("inbox", cmd_inbox, "the plain-client inbox: ingest now, or list rejected entries")
    sp.add_argument("action", choices=("ingest", "rejected"))
    sp.add_argument("--limit", type=int, default=1000)
    sp = add("redis", cmd_redis, "run the embedded server in the foreground")
    sp.add_argument("--port", type=int, default=0)
    sp.add_argument("--appendfsync", choices=("everysec", "always"))
    sp = add(
        "bench", cmd_bench, "run a benchmark: `framefleet bench queue|pipeline|recovery [args]`"
    )
    sp.add_argument("name", choices=("queue", "pipeline", "recovery"))
    sp.add_argument("bench_args", nargs=argparse.REMAINDER)
    return p


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
