"""The queue commands: `enqueue`, `stats`, `show`, `items`, `pause`/`resume`, `reap`,
`cancel`, `dead` and `inbox` each read or write the queue once and answer on stdout; `watch`
shows it live, and `redis` runs the embedded server in the foreground."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from framefleet.cli.common import answer, as_uri, print_json
from framefleet.netpolicy import refusal
from framefleet.queue import EmbeddedServer, InvalidItem, NewItem, Queue, connect, open_queue
from framefleet.settings import Settings
from framefleet.text import printable

if TYPE_CHECKING:
    from rich.progress import Progress


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
            items = _checked(uris, args.id, _priority(args.priority), settings, bar)
        except InvalidItem as exc:
            print(f"refused, nothing enqueued: {exc}", file=sys.stderr)
            return 2
        with open_queue(settings) as q:
            new = _written(q, items, args.force, bar)
    known = len(items) - len(new)
    value = {"enqueued": len(new), "already_known": known, "new_ids": new}
    answer(args.json, value, f"enqueued {len(new)}, already known {known}" + _listed(new))
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
    uris: list[str],
    item_id: str | None,
    priority: int | str,
    settings: Settings,
    bar: Progress | None,
) -> list[NewItem]:
    """The items, each valid and one the workers would fetch (as the API checks: a local
    path inside FRAMEFLEET_ALLOWED_ROOTS, a URL the network policy allows); InvalidItem for
    the first that is not."""
    task = None if bar is None else bar.add_task("checked", total=len(uris))
    source, hosts = settings.source, dict[str, str | None]()
    items: list[NewItem] = []
    for start in range(0, len(uris), CHECK_STEP):
        given = uris[start : start + CHECK_STEP]
        step = [NewItem(uri=as_uri(u), id=item_id, priority=priority) for u in given]
        for item in step:
            why = refusal(item.uri, source.allow_private_urls, source.allowed_roots, hosts)
            if why is not None:
                raise InvalidItem(why)
        items += step
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


def cmd_stats(args: argparse.Namespace, settings: Settings) -> int:
    with open_queue(settings) as q:
        stats = q.stats()
    if args.json:
        print_json(stats.as_dict())
        return 0
    counts = ", ".join(f"{k} {n:,}" for k, n in stats.counts.items())
    paused = " (paused: nothing is handed out)" if stats.paused else ""
    print(f"queue {settings.queue.name!r}: {counts}{paused}")
    if stats.oldest_queued_age_s is not None:
        print(f"oldest queued: {stats.oldest_queued_age_s:.0f} s")
    if stats.counters:
        print("counters: " + ", ".join(f"{k} {n:,}" for k, n in sorted(stats.counters.items())))
    return 0


def cmd_outcomes(args: argparse.Namespace, settings: Settings) -> int:
    """Each item's end from the outcomes stream, one JSON object a line, oldest first; with
    --follow, on as they come until Ctrl-C (what an enqueuer would read with XREAD)."""
    after = args.after
    # SIGINT too: a process started with it ignored (a shell's background job, a CI runner)
    # keeps it ignored, and a follower would wait in XREAD for ever
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupt)
    with open_queue(settings) as q:
        if after == "$":  # only those to come: from the newest one now
            after = q.last_outcome()
        try:
            while True:
                block = 5.0 if args.follow else None
                told = q.outcomes(after, count=args.count, block_s=block)
                for outcome in told:
                    print(json.dumps(outcome.to_json(), separators=(",", ":")), flush=True)
                if told:
                    after = told[-1].entry
                elif not args.follow:
                    return 0
        except KeyboardInterrupt:  # Ctrl-C, wherever it lands: the end asked for
            return 0


def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    with open_queue(settings) as q:
        item = q.get(args.id)
        if item is None:
            print(f"no item {args.id!r}", file=sys.stderr)
            return 1
        history = q.events(args.id)
        chunks = sorted(q.chunks(args.id))
    if args.json:
        print_json({"chunks": chunks, **_item_dict(item), "history": history})
        return 0
    for name, value in _item_dict(item).items():
        if value not in (None, "", {}, 0) or name in ("attempts", "deliveries"):
            shown = _when(value) if name.endswith(("_at", "_ms")) else printable(str(value))
            print(f"{name:>16}  {shown}")
    print(f"{'chunks done':>16}  {len(chunks)}")
    print("history:" if history else "history: nothing yet")
    for event in history:
        detail = f"  {printable(str(event.get('detail')))}" if event.get("detail") else ""
        print(f"  {_when(event.get('at'))}  {event.get('what', '')}{detail}")
    return 0


def _when(ms: Any) -> str:
    """A time the queue keeps (ms since the epoch) as UTC, to the second."""
    if not isinstance(ms, int | float):
        return str(ms)
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ms / 1000))


def _item_dict(item: Any) -> dict[str, Any]:
    return {f: getattr(item, f) for f in item.__slots__}


def cmd_pause(args: argparse.Namespace, settings: Settings) -> int:
    with open_queue(settings) as q:
        if args.command == "pause":
            q.pause()
        else:
            q.resume()
        paused = q.stats().paused
    words = f"queue {settings.queue.name!r} {'paused' if paused else 'running'}"
    answer(args.json, {"queue": settings.queue.name, "paused": paused}, words)
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
            print_json({"state": args.state, "items": items, "cursor": cursor})
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

    console = Console()
    console.print(items_table(found, args.state, now_ms, console.width))
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
    stale_s = settings.coordinator.stale_s
    frame = read_frame(queue, args.limit, stale_s=stale_s)
    console = Console()
    if args.once:
        console.print(render(frame))
        return 0
    caption = Text(f"every {args.interval:g} s; Ctrl-C to quit", style="dim")
    # SIGINT too: a process started with it ignored (a shell's background job) keeps it so
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupt)
    read_at = time.monotonic()
    try:
        with Live(Group(render(frame), caption), console=console, refresh_per_second=4) as live:
            while True:
                time.sleep(args.interval)
                try:
                    frame, error = read_frame(queue, args.limit, stale_s=stale_s), None
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
    value = {"requeued": r.requeued, "poisoned": r.poisoned, "promoted": r.promoted}
    words = f"requeued {r.requeued}, poisoned {r.poisoned}, retries due {r.promoted}"
    answer(args.json, value, words)
    return 0


def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    with open_queue(settings) as q:
        ok = q.cancel(args.id, args.why)
    print("cancelled" if ok else f"not cancelled: {args.id!r} is not queued or delayed")
    return 0 if ok else 1


def cmd_dead(args: argparse.Namespace, settings: Settings) -> int:
    with open_queue(settings) as q:
        if args.action == "list":
            dead = q.dead(limit=args.limit)
            if args.json:
                print_json([_item_dict(i) for i in dead])
                return 0
            if not dead:
                print("no dead letters")
                return 0
            now_ms = q.now_ms()
            from rich.console import Console

            from framefleet.ops.watch import items_table

            console = Console()
            console.print(items_table(dead, "dead", now_ms, console.width))
            return 0
        if not args.ids and not args.all:
            print(f"dead {args.action}: give ids or --all", file=sys.stderr)
            return 2
        op = q.retry_dead if args.action == "retry" else q.purge_dead
        moved = op(args.ids, limit=args.limit) if args.ids else _drain(op, args.limit)
    done = "retried" if args.action == "retry" else "purged"
    answer(args.json, {done: moved}, f"{done} {len(moved)}" + _listed(moved))
    return 0


def _listed(ids: list[str], shown: int = 10) -> str:
    """`: a, b, c` (the first `shown`, then how many more), or nothing."""
    if not ids:
        return ""
    more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
    return ": " + ", ".join(printable(i) for i in ids[:shown]) + more


def _drain(op: Callable[..., list[str]], limit: int) -> list[str]:
    out: list[str] = []
    while batch := op((), limit=limit):
        out += batch
    return out


def cmd_inbox(args: argparse.Namespace, settings: Settings) -> int:
    with open_queue(settings) as q:
        if args.action == "ingest":
            r = q.ingest_inbox(limit=args.limit)
            counts = {
                "ingested": r.ingested,
                "rejected": r.rejected,
                "duplicates": r.duplicates,
                "remaining": r.remaining,
            }
            answer(args.json, counts, ", ".join(f"{k} {n}" for k, n in counts.items()))
            return 0
        rejected = q.rejected(limit=args.limit)
    lines = [printable(json.dumps(entry, sort_keys=True)) for entry in rejected]
    answer(args.json, rejected, "\n".join(lines) or "no rejected inbox entries")
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
