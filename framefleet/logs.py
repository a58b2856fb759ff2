"""One logging set-up for every framefleet process: the CLI (main), the coordinator, its Ray
driver (a child process) and each actor (at its start), from the one LogSettings.

Every line goes to the process's stderr, with its time (UTC), level, logger and message, and
in an actor the actor's name and its Ray node:

    text: 2026-05-01T12:00:00.123Z INFO framefleet.workers.pipeline [decoder-1a2b3c-0
          node=5f3e2a1b] item 3f0c... done: ...            (one line; the node's first 8 hex)
    json: {"time": ..., "level": ..., "logger": ..., "message": ..., "actor": ..., "node": ...,
          "pid": ...} plus the record's `extra=` fields (an item's outcome: event, item, uri,
          outcome, attempt, seconds, ...) and `exception` (its traceback), one object a line.

framefleet's loggers log at the level set; other libraries at WARNING (or that level when
higher), so that DEBUG is framefleet's own and INFO is not drowned by theirs.

An actor's stderr is a file in Ray's log directory (worker-*.err); Ray ships its lines to the
driver, where `Forwarder` prints them on the driver's stderr as they are: without Ray's
"(Actor pid=..)" prefix and its de-duplication (which would merge the lines of two actors and
break JSON), each line whole. In `framefleet run` on a terminal (`LogSettings.terminal`) only
WARNING and above reach the terminal, each clearing the progress line first.
"""

from __future__ import annotations

import json
import logging
import logging.config
import re
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any, TextIO

from framefleet.settings import LogSettings

__all__ = ["Forwarder", "JsonFormatter", "TextFormatter", "configure", "console_level"]

CLEAR_LINE = "\r\x1b[K"  # back to the start of the terminal's line, and clear it
# a terminal's escape sequence (colours, cursor moves): Ray colours some of what it ships
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
_BASE_KEYS = ("time", "level", "logger", "message", "actor", "node", "pid")
# A LogRecord's own attributes: whatever else a record carries came with `extra=`.
_RECORD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_TEXT_HEAD = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (" + "|".join(_LEVELS) + ") ")


def console_level(settings: LogSettings) -> int:
    """The lowest level this process prints: WARNING at least on `run`'s terminal."""
    level = logging.getLevelName(settings.level)
    return max(level, logging.WARNING) if settings.terminal else int(level)


def _utc(created: float) -> str:
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{whole}.{int(created % 1 * 1000):03d}Z"


class Context(logging.Filter):
    """Gives every record passing the handler the process's actor name and Ray node."""

    def __init__(self, actor: str | None, node: str | None) -> None:
        super().__init__()
        self.actor, self.node = actor or None, node or None

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "actor"):
            record.actor = self.actor
        if not hasattr(record, "node"):
            record.node = self.node
        return True


class TextFormatter(logging.Formatter):
    """time level logger [actor node=xxxxxxxx] message, then the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        actor, node = getattr(record, "actor", None), getattr(record, "node", None)
        parts = [p for p in (actor, f"node={node[:8]}" if node else None) if p]
        where = f"[{' '.join(parts)}] " if parts else ""
        text = f"{_utc(record.created)} {record.levelname} {record.name} {where}"
        text += _ANSI.sub("", record.getMessage())  # a library may colour its messages
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            text += "\n" + record.exc_text
        if record.stack_info:
            text += "\n" + self.formatStack(record.stack_info)
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object a record, on one line (newlines in strings are escaped, and so is
    anything outside ASCII, which str.splitlines() might split on): the base keys always,
    the record's `extra=` fields after them, `exception` when there is a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": _utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": _ANSI.sub("", record.getMessage()),
            "actor": getattr(record, "actor", None),
            "node": getattr(record, "node", None),
            "pid": record.process,
        }
        for key, value in vars(record).items():  # not Ray's private ones (_ray_timestamp_ns)
            if key not in _RECORD_ATTRS and key not in doc and not key.startswith("_"):
                doc[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            doc["exception"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, default=str)


class TerminalHandler(logging.StreamHandler[TextIO]):
    """A line on `run`'s terminal: the progress line is cleared first (and redrawn by the
    next progress tick below it)."""

    def format(self, record: logging.LogRecord) -> str:
        return CLEAR_LINE + super().format(record)


def configure(
    settings: LogSettings,
    *,
    actor: str | None = None,
    node: str | None = None,
    stream: TextIO | None = None,
) -> None:
    """Set this process's logging up (again: each call replaces the last one's handler).
    Once Ray is imported, its own logger goes through this handler too: call it again after
    connecting to Ray."""
    level = console_level(settings)
    handler: dict[str, Any] = {
        "()": TerminalHandler if settings.terminal else logging.StreamHandler,
        "stream": stream or sys.stderr,
        "formatter": settings.format,
        "filters": ["context"],
    }
    others = max(level, logging.WARNING)
    loggers: dict[str, Any] = {"framefleet": {"level": level}}
    if "ray" in sys.modules:  # Ray's logger has a handler and format of its own: ours instead
        loggers["ray"] = {"level": others, "handlers": [], "propagate": True}
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "filters": {"context": {"()": Context, "actor": actor, "node": node}},
            "formatters": {"text": {"()": TextFormatter}, "json": {"()": JsonFormatter}},
            "handlers": {"stderr": handler},
            "loggers": loggers,
            "root": {"level": others, "handlers": ["stderr"]},
        }
    )


class Forwarder:
    """In the Ray driver: prints the lines Ray ships from the actors' stdout and stderr (one
    batch a call: ip, pid, actor_name, is_err, lines) on this process's stderr.

    framefleet's own lines (an actor logs in this format) are printed as they are. Any other
    line (a library's print or warning, a crash's dump, the raylet's notices) is given the
    actor, pid and ip it came from: in JSON a record of its own (logger `stderr`, `stdout`
    or `ray.raylet`; WARNING from stderr, INFO from stdout), in text Ray's "(name pid=..,
    ip=..)" prefix, except the lines that follow one of framefleet's own in the same batch
    (its traceback: a record is written at once), which take its level. Lines under the
    console level are left out; the autoscaler's batches are too (`ray status` and its own
    log say the same)."""

    def __init__(self, settings: LogSettings, stream: TextIO | None = None) -> None:
        self.json = settings.format == "json"
        self.level = console_level(settings)
        self.prefix = CLEAR_LINE if settings.terminal else ""
        self.stream = stream
        self._lock = threading.Lock()

    def __call__(self, batch: Mapping[str, Any]) -> None:
        try:
            self._print(batch)
        except OSError:  # stderr is gone: Ray's thread that calls this ends
            raise
        except Exception:  # a bug here must not end Ray's thread, and every line after it
            logging.getLogger(__name__).exception("an actor's lines could not be printed")

    def _print(self, batch: Mapping[str, Any]) -> None:
        if batch.get("pid") == "autoscaler":
            return
        out = []
        last = None  # the level of this batch's last own line
        for raw in batch.get("lines", ()):
            line = _ANSI.sub("", raw)  # a log file or a log shipper gets plain text
            level = self._own_level(line)
            if level is not None:
                last, text = level, line
            elif not self.json and last is not None:  # the next line of its traceback
                level, text = last, line
            else:
                level, text = self._foreign(line, batch)
            if level >= self.level:
                out.append(self.prefix + text + "\n")
        if out:
            stream = self.stream or sys.stderr
            with self._lock:
                stream.write("".join(out))
                stream.flush()

    def _own_level(self, line: str) -> int | None:
        """The level of one of framefleet's own lines, None for any other line."""
        if self.json:
            if not line.startswith("{"):
                return None
            try:
                doc = json.loads(line)
            except ValueError:
                return None
            if not isinstance(doc, dict) or not set(_BASE_KEYS) <= set(doc):
                return None
            level = logging.getLevelName(str(doc["level"]))
            return level if isinstance(level, int) else logging.INFO
        match = _TEXT_HEAD.match(line)
        return None if match is None else int(logging.getLevelName(match.group(1)))

    def _foreign(self, line: str, batch: Mapping[str, Any]) -> tuple[int, str]:
        pid, ip = batch.get("pid"), batch.get("ip")
        name = batch.get("actor_name") or batch.get("task_name") or None
        if pid == "raylet":
            level, logger = logging.WARNING, "ray.raylet"
        elif batch.get("is_err"):
            level, logger = logging.WARNING, "stderr"
        else:
            level, logger = logging.INFO, "stdout"
        if not self.json:
            who = f"{name} pid={pid}" if name else f"{pid}"
            return level, f"({who}, ip={ip}) {line}"
        doc = {
            "time": _utc(time.time()),
            "level": logging.getLevelName(level),
            "logger": logger,
            "message": line,
            "actor": name,
            "node": None,
            "pid": int(str(pid)) if str(pid).isdigit() else None,
            "ip": ip,
        }
        return level, json.dumps(doc)
