"""What `framefleet watch` and `framefleet items` draw in a terminal (rich).

A `Frame` is the queue's state read in one go through the queue's public API (`Queue`,
`Supervision`); `render` draws it. Reading and drawing are apart so that the CLI's live
loop can keep the last frame on screen while Redis does not answer, and `watch --once`
can draw one frame without a terminal. Throughput is counted as /v1/queue counts it: from
the done and dead sets' times, with no state of its own; the drain time is the backlog at
the last 5 minutes' rate.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from framefleet.queue import Item, Queue, Stats, Supervision
from framefleet.text import printable

from . import units


def shown(value: object) -> Text:
    """Text that came from outside (ids, URIs, worker names, errors), as it is: never parsed
    as rich markup (`cam1[/]` is an id, not a closing tag), each control character written as
    an escape (framefleet.text.printable)."""
    return Text(printable(value))


WINDOWS_MIN = (1, 5, 15)  # throughput windows shown, in minutes
DRAIN_WINDOW_MIN = 5  # the rate the drain time is counted at (as /v1/queue's drain_s)
BACKLOG = ("queued", "delayed", "leased", "inbox")  # what is left to do
STATES = ("queued", "delayed", "leased", "done", "dead")
EXTRA = ("inbox", "rejected")  # shown when not empty
BAR_WIDTH = 16
_BOX = box.SIMPLE_HEAD  # a rule under the header, nothing else


@dataclass(frozen=True, slots=True)
class Frame:
    """One reading of a queue, for one frame of `watch`."""

    queue: str
    stats: Stats
    finished: Mapping[int, tuple[int, int]]  # window (minutes) -> (done, dead) within it
    workers: Mapping[str, float]  # name -> seconds since its heartbeat
    stale_s: float  # a worker silent longer is dead or stopped (FRAMEFLEET_STALE_S)
    leader: str | None
    health: Mapping[str, Any] | None  # the leader's last health report, if fresh
    health_age_s: float | None
    leased: Sequence[Item]  # up to the limit asked for, longest held first
    now_ms: int  # the queue's time

    @property
    def backlog(self) -> int:
        return sum(self.stats.counts.get(s, 0) for s in BACKLOG)

    def done_per_min(self, minutes: int) -> float:
        return self.finished[minutes][0] / minutes

    def drain_s(self) -> float | None:
        """Seconds to finish the backlog at the last 5 minutes' rate: 0 with nothing left,
        None when nothing finished in those 5 minutes."""
        if self.backlog == 0:
            return 0.0
        done, dead = self.finished[DRAIN_WINDOW_MIN]
        rate = (done + dead) / (DRAIN_WINDOW_MIN * 60)
        return self.backlog / rate if rate > 0 else None


def read_frame(
    queue: Queue,
    limit: int = 20,
    clock: Callable[[], float] = time.time,
    stale_s: float = 10.0,
) -> Frame:
    """Read what a frame shows: counts, throughput, workers (alive: heard within stale_s),
    leader and health, and up to `limit` leased items. `clock` (seconds) dates the health
    report, as the API does."""
    supervision = Supervision(queue)
    stats = queue.stats()
    now_ms = queue.now_ms()
    each = queue.finished_since_each([now_ms - m * 60_000 for m in WINDOWS_MIN])
    finished = dict(zip(WINDOWS_MIN, each, strict=True))
    leased: list[Item] = []
    if stats.counts.get("leased", 0) and limit > 0:
        leased, _ = queue.page("leased", limit)
        leased.sort(key=lambda i: (i.claimed_ms or 0, i.id))  # steady rows between frames
    health = supervision.health()
    at = health.get("at") if health else None
    return Frame(
        queue=queue.settings.name,
        stats=stats,
        finished=finished,
        workers=supervision.workers(),
        stale_s=stale_s,
        leader=supervision.leader(),
        health=health,
        health_age_s=max(0.0, clock() - at) if isinstance(at, int | float) else None,
        leased=leased,
        now_ms=now_ms,
    )


def duration(seconds: float | None) -> str:
    """A terminal's short duration: 850ms, 4.2s, 42s, 3m 05s, 2h 10m, 3d 04h."""
    return units.duration(seconds, short=True)


# -- watch -----------------------------------------------------------------------------------


def render(frame: Frame, error: str | None = None) -> RenderableType:
    """The whole frame: the summary, then one progress bar per leased item. `error` (Redis
    does not answer) is shown above a frame that is then the last one read."""
    parts: list[RenderableType] = []
    if error:
        warning = shown(f"not updating: {error}")
        warning.stylize("bold red")
        parts.append(warning)
    parts += [_summary(frame), Text(), _leased(frame)]
    return Group(*parts)


def _summary(frame: Frame) -> Table:
    stats = frame.stats
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    state = Text("PAUSED", style="bold red") if stats.paused else Text("running", style="green")
    grid.add_row("queue", Text.assemble(shown(f"{frame.queue}  "), state))
    listed = [*STATES, *(name for name in EXTRA if stats.counts.get(name))]
    counts = "  ".join(f"{name} {stats.counts.get(name, 0)}" for name in listed)
    grid.add_row("items", counts)
    grid.add_row("oldest queued", duration(stats.oldest_queued_age_s))
    rates = "  ".join(f"{m}m {frame.done_per_min(m):.1f}" for m in WINDOWS_MIN)
    dead = frame.finished[DRAIN_WINDOW_MIN][1]
    if dead:
        rates += f"  (dead {dead / DRAIN_WINDOW_MIN:.1f}/min over {DRAIN_WINDOW_MIN}m)"
    grid.add_row("done/min", rates)
    grid.add_row("drain", _drain(frame))
    grid.add_row("workers", shown(_workers(frame.workers, frame.stale_s)))
    grid.add_row("leader", _leader(frame))
    return grid


def _drain(frame: Frame) -> str:
    eta = frame.drain_s()
    if eta == 0:
        return "nothing left to do"
    if eta is None:
        return f"unknown: nothing finished in the last {DRAIN_WINDOW_MIN} minutes"
    return f"ETA {duration(eta)} ({frame.backlog} left at the last {DRAIN_WINDOW_MIN}m's rate)"


def _workers(workers: Mapping[str, float], stale_s: float) -> str:
    """The workers heard within stale_s, by kind; the silent ones (killed, stopped: the
    coordinator replaces them, and the queue forgets them soon) only counted apart."""
    alive = {name: age for name, age in workers.items() if age <= stale_s}
    silent = len(workers) - len(alive)
    kinds: dict[str, int] = {}
    for name in alive:
        kind = name.split("-", 1)[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    by_kind = ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
    text = "none heartbeating"
    if alive:
        text = f"{len(alive)} ({by_kind}); oldest heartbeat {duration(max(alive.values()))} ago"
    if silent:
        text += f"; {silent} silent for over {stale_s:g} s (dead or stopped)"
    return text


def _leader(frame: Frame) -> Text:
    if frame.leader is None:
        return Text("none (no coordinator leads this queue)", style="yellow")
    text = shown(frame.leader)
    report = frame.health
    if report is None:
        return text.append("; no fresh health report", style="yellow")
    text.append(f"; health report {duration(frame.health_age_s)} old, ")
    if report.get("ok", False):
        return text.append("ok", style="green")
    error = shown(f"not ok: {report.get('error', 'no reason given')}")
    error.stylize("bold red")
    return text.append_text(error)


def _leased(frame: Frame) -> RenderableType:
    total = frame.stats.counts.get("leased", 0)
    if not total:
        return Text("no item leased")
    count = len(frame.leased)
    title = f"leased: {total}" + (f" ({count} shown: --limit for more)" if count < total else "")
    table = Table(title=title, title_justify="left", box=_BOX, padding=(0, 1, 0, 0))
    table.add_column("item", no_wrap=True, min_width=24)
    table.add_column("progress", no_wrap=True)
    table.add_column("chunks", justify="right", no_wrap=True, min_width=6)
    table.add_column("owner", no_wrap=True, min_width=18)
    table.add_column("held", justify="right", no_wrap=True, min_width=6)
    table.add_column("video", no_wrap=True, overflow="ellipsis")
    for item in frame.leased:
        known = item.chunks_total or item.chunks_expected  # the container's promise, ~N
        bar = ProgressBar(total=known, completed=item.chunks_done, width=BAR_WIDTH)
        of = "?" if known is None else f"{'' if item.chunks_total else '~'}{known}"
        table.add_row(
            shown(item.id),
            bar,
            f"{item.chunks_done}/{of}",
            shown(item.owner or "?"),
            duration(_held_s(item, frame.now_ms)),
            shown(_name(item.uri)),
        )
    return table


def _name(uri: str) -> str:
    return PurePosixPath(uri).name or uri


def _held_s(item: Item, now_ms: int) -> float | None:
    return None if item.claimed_ms is None else (now_ms - item.claimed_ms) / 1000


# -- items -----------------------------------------------------------------------------------

_NOTE = {
    "queued": "last error",
    "delayed": "retry in",
    "leased": "owner, held",
    "done": "result",
    "dead": "why",
}


def items_table(items: Sequence[Item], state: str, now_ms: int, width: int = 120) -> Table:
    """One page of items in one state, newest first, with what matters in that state: one
    line a row within `width` columns (the uri and the note cut short with an ellipsis:
    --json or `show` for all of them)."""
    rest = max(20, width - 24 - 3 - 5 - 6 - 6 - 7)  # what the fixed columns and gaps leave
    table = Table(
        title=f"{state} items, newest first", title_justify="left", box=_BOX, padding=(0, 1, 0, 0)
    )
    table.add_column("id", no_wrap=True, min_width=24)
    table.add_column("pri", justify="right", no_wrap=True, min_width=3)
    table.add_column("tries", justify="right", no_wrap=True, min_width=5)
    table.add_column("chunks", justify="right", no_wrap=True, min_width=6)
    table.add_column("age", justify="right", no_wrap=True, min_width=6)
    # the two share what is left: each its width if both fit, else the longer gives way
    uris = [len(shown(item.uri)) for item in items] or [0]
    notes = [len(shown(_note(item, now_ms))) for item in items] or [0]
    uri_width = min(max(uris), max(rest // 2, rest - max(notes)))
    table.add_column("uri", no_wrap=True, overflow="ellipsis", max_width=max(3, uri_width))
    table.add_column(
        _NOTE.get(state, ""), no_wrap=True, overflow="ellipsis", max_width=max(3, rest - uri_width)
    )
    for item in items:
        total = "?" if item.chunks_total is None else str(item.chunks_total)
        table.add_row(
            shown(item.id),
            str(item.priority),
            str(item.attempts),
            f"{item.chunks_done}/{total}",
            duration((now_ms - item.created_ms) / 1000),
            shown(item.uri),
            shown(_note(item, now_ms)),
        )
    return table


def _note(item: Item, now_ms: int) -> str:
    state = str(item.state)
    if state == "leased":
        return f"{item.owner or '?'}, {duration(_held_s(item, now_ms))}"
    if state == "delayed" and item.ready_at_ms is not None:
        return duration((item.ready_at_ms - now_ms) / 1000)
    if state == "dead":
        return f"{item.dead_class or 'unknown'}: {item.dead_reason or ''}".rstrip(": ")
    if state == "done":
        return item.result or ""
    return item.last_error or ""
