"""A chaos run's history: every operation with its outcome, every fault, as JSON lines
(the events are in events.py), kept as the run's artifact.

Writing: one file per process, `<host>-<pid>-<random>.jsonl` under the history's folder,
opened O_APPEND|O_EXCL; each event is one `os.write` of one whole line under the writer's
lock, so threads never interleave and nothing waits in a Python buffer: once `write`
returns the event is the kernel's, and a kill of the process loses none of it (`close`
fsyncs; a power cut of the harness's machine is not a fault this record survives).

Why not every process appending to one file: O_APPEND keeps concurrent whole writes
apart, and lines under PIPE_BUF are the usual rule, but a writer killed with SIGKILL in the
middle of a write can still leave part of a line (Linux checks for a fatal signal between
the pages of one write, and a short line can straddle two), and the next process's line
would then be glued to that fragment: one torn event would cost a correct process its event
too. Kills are what a chaos run does. With a file per process a torn line can only be the
last line of a dead process's file, which the reader skips and counts (`History.torn`);
every other line must parse. It also works where O_APPEND is not atomic (NFS), and files
written on several nodes merge by copying them into one folder. The random part of the
name keeps a reused pid from appending to a dead process's file. After a fork the child
writes its own file.

Reading: `read(path)` takes the folder (or one file, e.g. `dump`'s) and returns the events
sorted by `t`, ties in file then line order. Events from different machines are ordered by
their clocks: keep them in sync (or the run on one host).
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from .events import Event, HistoryError, parse

REASON_MAX = 500  # characters of a free-text reason kept: a line is a few hundred bytes


@dataclass(frozen=True, slots=True)
class History:
    events: list[Event]
    torn: list[str]  # "file:line" of each unterminated last line skipped


def read(path: str | Path) -> History:
    """A history folder's files (or one file), merged and sorted by t."""
    path = Path(path)
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    keyed: list[tuple[float, int, int, Event]] = []
    torn: list[str] = []
    for n, file in enumerate(files):
        lines = file.read_bytes().split(b"\n")  # decoded a line at a time: a torn last
        for i, raw in enumerate(lines, 1):  # line may end inside a character
            if not raw:
                continue
            if i == len(lines):  # no newline after it: a write cut short by a kill
                torn.append(f"{file.name}:{i}")
                continue
            try:
                event = parse(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise HistoryError(f"{file}:{i}: not UTF-8 ({e})") from None
            except HistoryError as e:
                raise HistoryError(f"{file}:{i}: {e}") from None
            keyed.append((event.t, n, i, event))
    keyed.sort(key=lambda k: k[:3])
    return History([k[3] for k in keyed], torn)


def dump(events: Iterable[Event], path: str | Path) -> None:
    """Events into one file, sorted by t (a merged history, or a hand-made one)."""
    lines = [e.to_json() + "\n" for e in sorted(events, key=lambda e: e.t)]
    Path(path).write_text("".join(lines), encoding="utf-8")


_WRITERS: weakref.WeakSet[HistoryWriter] = weakref.WeakSet()


class HistoryWriter:
    """Appends events to this process's file in a history folder; thread-safe, fork-safe.

    `by` names the writer in every event it stamps (an event that names itself keeps its
    own); it defaults to host:pid. The file is created at the first event."""

    def __init__(self, folder: str | Path, by: str | None = None) -> None:
        self.folder = Path(folder)
        self._by = by
        self._lock = threading.Lock()
        self._fd: int | None = None
        _WRITERS.add(self)

    @property
    def by(self) -> str:
        return self._by or f"{socket.gethostname()}:{os.getpid()}"

    def write(self, event: Event) -> Event:
        """Appends the event (stamped with `by`, reasons clipped) and returns it as written."""
        if not event.by:
            event = replace(event, by=self.by)
        reason = getattr(event, "reason", None)
        if isinstance(reason, str) and len(reason) > REASON_MAX:
            event = replace(event, reason=reason[:REASON_MAX])  # type: ignore[call-arg]
        data = (event.to_json() + "\n").encode("utf-8")
        with self._lock:
            if self._fd is None:
                self._fd = self._open()
            view = memoryview(data)
            while view:  # a short write (a full disk) goes on, still under the lock
                view = view[os.write(self._fd, view) :]
        return event

    def _open(self) -> int:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}.jsonl"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
        return os.open(self.folder / name, flags, 0o644)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = None

    def _after_fork(self) -> None:
        """In a forked child: a fresh lock (another thread may have held the parent's) and
        no file yet, so that the child writes its own; the parent's fd is closed here."""
        self._lock = threading.Lock()
        if self._fd is not None:
            os.close(self._fd)
        self._fd = None

    def __enter__(self) -> HistoryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# As the logging module resets its handlers' locks: a WeakSet of writers, one hook.
def _reset_writers_in_child() -> None:
    for writer in list(_WRITERS):
        writer._after_fork()


os.register_at_fork(after_in_child=_reset_writers_in_child)
