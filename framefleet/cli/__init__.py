"""The `framefleet` command line. Every command reads one Settings (environment, then flags)."""

# The docstring above is also the description `framefleet --help` prints. The commands live in
# `fleet` (run, up, coordinator, api, check, demo, bench, chaos), `queue` (enqueue, stats, show,
# items, pause/resume, reap, cancel, dead, inbox, redis, watch) and `results`; this module
# builds the parser (in the order `--help` lists the commands), reads the Settings and maps
# errors to exit codes.

from __future__ import annotations

import argparse
import faulthandler
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from redis.exceptions import ConnectionError as RedisConnectionError

from framefleet import logs
from framefleet.cli.fleet import (
    cmd_api,
    cmd_bench,
    cmd_chaos,
    cmd_check,
    cmd_coordinator,
    cmd_demo,
    cmd_run,
    cmd_up,
)
from framefleet.cli.queue import (
    cmd_cancel,
    cmd_dead,
    cmd_enqueue,
    cmd_inbox,
    cmd_items,
    cmd_outcomes,
    cmd_pause,
    cmd_reap,
    cmd_redis,
    cmd_show,
    cmd_stats,
    cmd_watch,
)
from framefleet.cli.results import add_parser as add_results_parser
from framefleet.cli.results import cmd_results
from framefleet.queue import ServerError, State, redacted
from framefleet.queue.server import found_data_dir
from framefleet.settings import (
    FLEET_FLAGS,
    LOG_LEVELS,
    Settings,
    SettingsError,
    variable_default,
)

__all__ = ["Command", "build_parser", "main"]

Command = Callable[[argparse.Namespace, Settings], int]


def _settings(args: argparse.Namespace) -> Settings:
    """The environment's settings, with the flags given over them (a fleet flag as its
    variable, FLEET_FLAGS)."""
    flags = {
        var: str(value)
        for flag, (var, _) in FLEET_FLAGS.items()
        if (value := getattr(args, flag[2:].replace("-", "_"), None)) is not None
    }
    s = Settings.from_env({**os.environ, **flags})
    redis = s.redis
    if args.redis_url:
        redis = replace(redis, url=args.redis_url)
        if redacted(args.redis_url) != args.redis_url:
            print(
                "warning: --redis-url holds a password, which every user of this machine can"
                " read in its command line (/proc, ps): give it in FRAMEFLEET_REDIS_URL",
                file=sys.stderr,
            )
    if args.data_dir:
        redis = replace(redis, data_dir=Path(args.data_dir))
    elif not os.environ.get("FRAMEFLEET_DATA_DIR"):  # found upward, as git finds its repository
        redis = replace(redis, data_dir=found_data_dir())
        if not os.environ.get("FRAMEFLEET_OUT"):  # and the outputs beside it: .framefleet/out
            s = replace(s, pipeline=replace(s.pipeline, out=str(redis.data_dir.parent / "out")))
    queue = replace(s.queue, name=args.queue) if args.queue else s.queue
    log = replace(s.log, level=args.log_level) if args.log_level else s.log
    return replace(s, redis=redis, queue=queue, log=log)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="framefleet", description=__doc__)
    p.add_argument(
        "--redis-url",
        help="Redis/Valkey URL (default: $FRAMEFLEET_REDIS_URL, else the embedded server)",
    )
    p.add_argument(
        "--data-dir",
        help="embedded server data dir (default: $FRAMEFLEET_DATA_DIR, else the nearest"
        " .framefleet/redis here or above, else ./.framefleet/redis)",
    )
    p.add_argument("--queue", help="queue name (default: $FRAMEFLEET_QUEUE or 'videos')")
    p.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        help="what is logged on stderr (default: $FRAMEFLEET_LOG_LEVEL or INFO; JSON lines"
        " with FRAMEFLEET_LOG_FORMAT=json)",
    )
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
        if name == "coordinator":
            sp.add_argument(
                "--join",
                metavar="HEAD",
                help="keep a zero-CPU Ray node joined to HEAD (host:port) running here and"
                " drive that cluster: a coordinator in a container or pod of its own",
            )
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
    sp = add("outcomes", cmd_outcomes, "each video's end (done, dead): one JSON line each")
    sp.add_argument(
        "--after",
        default="0",
        help="the entry to read after (default 0: the oldest kept; $: only those to come)",
    )
    sp.add_argument("--follow", action="store_true", help="wait for more until Ctrl-C")
    sp.add_argument("--count", type=_positive, default=100, help="read at a time (default 100)")
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
    add_results_parser(sub, cmd_results)
    sp = add("show", cmd_show, "one item as stored")
    sp.add_argument("id")
    _json_flag(sp)
    _json_flag(add("pause", cmd_pause, "stop handing out items"))
    _json_flag(add("resume", cmd_pause, "hand out items again"))
    _json_flag(add("reap", cmd_reap, "take back expired leases now"))
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
    _json_flag(sp)
    sp = add("redis", cmd_redis, "run the embedded server in the foreground")
    sp.add_argument("--port", type=int, default=0)
    sp.add_argument("--appendfsync", choices=("everysec", "always"))
    sp = add(
        "chaos",
        cmd_chaos,
        "the proof suite: `chaos run [args]` strikes a fleet with faults (bench/chaos.py);"
        " `chaos check HISTORY` checks a recorded history (FRAMEFLEET_HISTORY)",
    )
    sp.add_argument("action", choices=("run", "check"))
    sp.add_argument("chaos_args", nargs=argparse.REMAINDER)
    sp = add("bench", cmd_bench, "run a benchmark: `framefleet bench NAME [args]` (bench/NAME.py)")
    names = (
        "queue", "pipeline", "recovery", "recovery_ray_data", "api", "dashboard", "scale",
        "simulate", "million", "keyspace", "chaos", "soak", "burst",
    )  # fmt: skip
    sp.add_argument("name", choices=names)
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
    for flag, (var, what) in FLEET_FLAGS.items():
        default = variable_default(var)
        shown = "" if default is None else f", default {default}"
        sp.add_argument(flag, help=f"{what} ({var}{shown})")
    sp.add_argument(
        "--random-weights",
        action="store_true",
        help="a randomly initialised model of the same architecture (smoke runs, no download)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    # `kill -USR1 <pid>` prints every thread's stack on stderr: what a hung command is doing
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    args = build_parser().parse_args(argv)
    try:
        settings = _settings(args)
        logs.configure(settings.log)
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
