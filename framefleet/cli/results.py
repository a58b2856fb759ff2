"""`framefleet results`: the finished videos of an output root (its index), one video's
detections, an export of the current detections of all, and a rebuild of the index.

It reads the output root only (workers/results.py): no queue, no server started."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from typing import Any

from framefleet.settings import Settings
from framefleet.workers.errors import InfraError
from framefleet.workers.outputs import OutputStore
from framefleet.workers.results import FORMATS, Entry, Results, export, select, tables

from .common import answer, as_uri, print_json

STATES = ("current", "superseded", "all")


def add_parser(sub: Any, fn: Any) -> None:
    """The `results` command and its own commands (list is the default)."""
    sp = sub.add_parser(
        "results",
        help="the finished videos and their detections (list, show, export, rebuild)",
        description="The finished videos of an output root, from its index (<out>/_index);"
        " the current detections of all are one dataset at <out>/_dataset.",
    )
    sp.set_defaults(fn=fn, action="list", state="current", prefix=None, label=None, limit=50)
    _common(sp, None, False)
    actions = sp.add_subparsers(dest="action", metavar="{list,show,export,rebuild}")

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = actions.add_parser(name, help=help_, description=help_)
        _common(p, argparse.SUPPRESS, argparse.SUPPRESS)  # given before the command: kept
        return p

    p = add("list", "videos with their state and counts (the default)")
    _filters(p)
    p.add_argument("--limit", type=int, default=50, help="videos shown (default 50; 0: all)")
    p = add("show", "one video's current detections")
    p.add_argument("video", help="its item id or URI")
    p.add_argument("--limit", type=int, default=50, help="rows shown (default 50; 0: all)")
    p = add("export", "the current detections of every video (or those filtered) as one file")
    _filters(p, states=False)
    p.add_argument("--format", choices=FORMATS, default="parquet", help="(default parquet)")
    p.add_argument("--to", default="-", help="the file to write (default -: stdout)")
    add("rebuild", "the index and the dataset anew from the manifests")


def _common(p: argparse.ArgumentParser, out: Any, json: Any) -> None:
    """--out and --json, before the command or after it (`results --out X export` or
    `results export --out X`)."""
    p.add_argument("--out", default=out, help="the output root (default $FRAMEFLEET_OUT)")
    p.add_argument("--json", action="store_true", default=json, help="one JSON document")


def _filters(p: argparse.ArgumentParser, states: bool = True) -> None:
    if states:
        p.add_argument("--state", choices=STATES, default="current", help="(default current)")
    p.add_argument("--prefix", help="only videos whose URI starts so")
    p.add_argument("--label", help="only videos with detections of this label")


def cmd_results(args: argparse.Namespace, settings: Settings) -> int:
    out = as_uri(args.out) if args.out else settings.pipeline.out
    store = OutputStore(out, settings.source)
    if not store.is_s3 and not store.root.is_dir():
        print(f"no output root at {store.root} (give the run's --out)", file=sys.stderr)
        return 1
    results = Results(store)
    try:
        if args.action == "show":
            return _show(args, results)
        if args.action == "export":
            return _export(args, results)
        if args.action == "rebuild":
            rebuilt = results.rebuild()
            unread = f"; {rebuilt.skipped} unreadable, left out (see above)"
            words = (
                f"index rebuilt from {rebuilt.videos} manifests in {out}; {rebuilt.removed}"
                " dataset files of videos without outputs removed"
                + (unread if rebuilt.skipped else "")
            )
            answer(args.json, {"out": out, **asdict(rebuilt)}, words)
            return 1 if rebuilt.skipped else 0
        return _list(args, results, out)
    except InfraError as exc:
        print(f"error: the output root cannot be read: {exc}", file=sys.stderr)
        return 1


def _list(args: argparse.Namespace, results: Results, out: str) -> int:
    entries = results.entries()
    chosen = select(entries, args.state, args.prefix, args.label)
    shown = chosen[: args.limit] if args.limit > 0 else chosen
    if args.json:
        print_json(
            {
                "out": out,
                "index": results.index,
                "dataset": results.dataset,
                "videos": [e.model_dump() for e in shown],
                "total": len(chosen),
            }
        )
        return 0
    if not chosen:
        current = sum(e.current for e in entries)
        print(f"no {args.state} videos match in {out} ({current} current in all)")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, show_edge=False, pad_edge=False)
    for name, justify in (
        ("URI", "left"),
        ("state", "left"),
        ("frames", "right"),
        ("detections", "right"),
        ("top labels", "left"),
        ("finished", "right"),
    ):
        table.add_column(  # one line a video: the labels cut short, not wrapped
            name,
            justify=justify,  # type: ignore[arg-type]
            no_wrap=name != "URI",
            overflow="fold" if name == "URI" else "ellipsis",
            min_width=24 if name == "URI" else None,
            max_width=28 if name == "top labels" else None,
        )
    now = time.time()
    for e in shown:
        table.add_row(
            e.uri,
            "current" if e.current else "superseded",
            str(e.frames),
            str(e.detections),
            _top(e),
            _ago(now - e.finished_at) if e.finished_at else "-",
        )
    console = Console()
    console.print(table)
    more = f" (first {len(shown)} shown; --limit 0: all)" if len(shown) < len(chosen) else ""
    print(f"{len(chosen)} videos{more}; all current detections: {results.dataset}")
    return 0


def _top(e: Entry, n: int = 3) -> str:
    best = sorted(e.labels.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    return ", ".join(f"{label} {count}" for label, count in best)


def _ago(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{max(seconds, 0):.0f} s ago"


def _show(args: argparse.Namespace, results: Results) -> int:
    wanted = {args.video, as_uri(args.video)}
    found = [e for e in results.current() if e.id in wanted or e.uri in wanted]
    if not found:
        print(f"no finished video {args.video!r} in {results.store.base}", file=sys.stderr)
        return 1
    entry = found[0]
    table = results.detections(entry)
    rows = table.slice(0, args.limit) if args.limit > 0 else table
    if args.json:
        print_json({**entry.model_dump(), "rows": rows.to_pylist(), "total": table.num_rows})
        return 0
    print(f"{entry.uri} ({entry.id}, version {entry.version}): {table.num_rows} detections")
    if not table.num_rows:
        return 0
    from rich.console import Console
    from rich.table import Table

    view = Table(box=None, show_edge=False, pad_edge=False)
    names = [n for n in rows.column_names if n not in ("uri", "video_id", "model")]
    for name in names:
        view.add_column(name, justify="left" if name == "label" else "right")
    for row in rows.to_pylist():
        view.add_row(*(_cell(row[n]) for n in names))
    Console().print(view)
    if rows.num_rows < table.num_rows:
        print(f"(first {rows.num_rows} of {table.num_rows}; --limit 0: all; export: every video)")
    return 0


def _cell(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _export(args: argparse.Namespace, results: Results) -> int:
    chosen = select(results.entries(), "current", args.prefix, args.label)
    if not chosen:
        where = results.store.base
        print(f"nothing to export: no current videos match in {where}", file=sys.stderr)
        return 1
    try:
        if args.to == "-":
            rows = export(tables(results, chosen, args.label), args.format, sys.stdout.buffer)
        else:
            with open(args.to, "wb") as sink:
                rows = export(tables(results, chosen, args.label), args.format, sink)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    where = "stdout" if args.to == "-" else args.to
    print(f"{rows} detections of {len(chosen)} videos to {where} ({args.format})", file=sys.stderr)
    return 0
