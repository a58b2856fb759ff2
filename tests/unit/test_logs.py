"""framefleet/logs.py: the one logging set-up (text and JSON lines, levels, the actor's
context, `run`'s terminal) and the driver's printer of the actors' lines, on batches as
Ray ships them. No Ray here: the fleet test (tests/integration/test_logs_fleet.py) runs the
real thing."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from framefleet import logs
from framefleet.settings import LogSettings

NODE = "5f3e2a1b" + "c" * 48  # a Ray node id: 56 hex digits
TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
BASE_KEYS = ("time", "level", "logger", "message", "actor", "node", "pid")  # in this order


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """configure() replaces the root logger's handlers (pytest's too): put them back."""
    names = ("", "framefleet", "ray")
    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).level) for n in names}
    propagate = logging.getLogger("ray").propagate
    yield
    for name, (handlers, level) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.setLevel(level)
    logging.getLogger("ray").propagate = propagate


def _configured(settings: LogSettings, actor: str | None = None) -> io.StringIO:
    out = io.StringIO()
    logs.configure(settings, actor=actor, node=NODE if actor else None, stream=out)
    return out


def test_a_text_line_has_time_level_logger_actor_node_and_then_its_traceback() -> None:
    out = _configured(LogSettings(), actor="decoder-1a2b3c-0")
    log = logging.getLogger("framefleet.workers.pipeline")
    log.info("item %s done", "3f0c")
    try:
        raise TypeError("a bug")
    except TypeError:
        log.exception("item 9a1e: a bug")
    first, second, *traceback = out.getvalue().splitlines()
    where = r"\[decoder-1a2b3c-0 node=5f3e2a1b\]"
    head = rf"^{TIME} (INFO|ERROR) framefleet\.workers\.pipeline {where} "
    assert re.match(head + r"item 3f0c done$", first), first
    assert re.match(head + r"item 9a1e: a bug$", second), second
    assert traceback[0] == "Traceback (most recent call last):"
    assert traceback[-1] == "TypeError: a bug"


def test_outside_an_actor_a_text_line_has_no_context_brackets() -> None:
    out = _configured(LogSettings())
    logging.getLogger("framefleet.coordinator.supervisor").warning("c1 leads now")
    line = out.getvalue()
    assert re.match(rf"^{TIME} WARNING framefleet\.coordinator\.supervisor c1 leads now\n$", line)


def test_json_gives_one_object_a_line_with_stable_keys_extras_and_the_traceback() -> None:
    out = _configured(LogSettings(format="json"), actor="inference-1a2b3c-1")
    log = logging.getLogger("framefleet.workers.pipeline")
    log.info("item 3f0c done: /v/a\nb.mp4", extra={"event": "item", "item": "3f0c", "seconds": 1.5})
    log.warning("résumé \u2028 of a line")  # a separator str.splitlines() would split on
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        log.error("failed", exc_info=True)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    docs = [json.loads(line) for line in lines]
    assert [tuple(doc)[:7] for doc in docs] == [BASE_KEYS] * 3
    item, warning, error = docs
    assert re.fullmatch(TIME, item["time"])
    assert (item["level"], item["logger"]) == ("INFO", "framefleet.workers.pipeline")
    assert (item["actor"], item["node"]) == ("inference-1a2b3c-1", NODE)
    assert item["message"] == "item 3f0c done: /v/a\nb.mp4"
    assert (item["event"], item["item"], item["seconds"]) == ("item", "3f0c", 1.5)
    assert "exception" not in item and "exception" not in warning
    assert warning["message"] == "résumé \u2028 of a line"
    assert error["exception"].startswith("Traceback")
    assert error["exception"].endswith("ValueError: bad\nvalue")


def test_framefleet_logs_at_the_level_set_and_other_libraries_at_warning() -> None:
    out = _configured(LogSettings(level="DEBUG"))
    logging.getLogger("framefleet.workers.decode").debug("framefleet's debug")
    logging.getLogger("botocore.credentials").info("a library's info")
    logging.getLogger("botocore.credentials").warning("a library's warning")
    text = out.getvalue()
    assert "framefleet's debug" in text and "a library's warning" in text
    assert "a library's info" not in text
    out = _configured(LogSettings(level="ERROR"))
    logging.getLogger("framefleet.x").warning("framefleet's warning")
    logging.getLogger("botocore").warning("a library's warning")
    assert out.getvalue() == ""


def test_on_runs_terminal_only_warnings_print_and_each_clears_the_progress_line() -> None:
    out = _configured(LogSettings(terminal=True))
    log = logging.getLogger("framefleet.workers.pipeline")
    log.info("item 3f0c done")
    log.warning("inference actor gone")
    assert out.getvalue().startswith(logs.CLEAR_LINE)
    assert out.getvalue().count("\n") == 1 and "inference actor gone" in out.getvalue()
    assert "item 3f0c done" not in out.getvalue()


def test_rays_own_logger_goes_through_the_same_handler_once_ray_is_imported() -> None:
    import ray  # noqa: F401 - Ray's import gives its logger a handler and format of its own

    # as a fresh import leaves it (an earlier configure in this session may have taken the
    # handler Ray's import gave it away already)
    own = logging.StreamHandler(io.StringIO())
    ray_logger = logging.getLogger("ray")
    ray_logger.addHandler(own)
    ray_logger.propagate = False
    out = _configured(LogSettings(format="json"))
    assert own not in ray_logger.handlers
    logging.getLogger("ray._private.worker").warning("a Ray warning")
    logging.getLogger("ray._private.worker").info("a Ray info")
    [line] = out.getvalue().splitlines()
    assert json.loads(line)["logger"] == "ray._private.worker"


# -- the driver's printer of the actors' lines --------------------------------------------


def _own_lines(settings: LogSettings, actor: str) -> list[str]:
    """What an actor configured with `settings` writes for an INFO line and an ERROR with
    its traceback."""
    out = _configured(settings, actor=actor)
    log = logging.getLogger("framefleet.workers.pipeline")
    log.info("item 3f0c done")
    try:
        raise TypeError("a bug")
    except TypeError:
        log.exception("item 9a1e: a bug")
    return out.getvalue().splitlines()


def _batch(lines: list[str], **fields: object) -> dict[str, object]:
    return {"ip": "10.0.0.5", "pid": 4242, "actor_name": "DecodeActor", "is_err": True,
            "lines": lines, **fields}  # fmt: skip


def test_the_driver_prints_actors_lines_as_they_are_and_others_with_their_source() -> None:
    own = _own_lines(LogSettings(), "decoder-1a2b3c-0")
    out = io.StringIO()
    forward = logs.Forwarder(LogSettings(), out)
    forward(_batch(["a library's print"]))
    forward(_batch(own))
    forward(_batch(["another print"]))
    forward(_batch(["[repeated 2x] a raylet notice"], pid="raylet", actor_name=None))
    forward(_batch(["autoscaler event"], pid="autoscaler"))
    lines = out.getvalue().splitlines()
    assert lines[0] == "(DecodeActor pid=4242, ip=10.0.0.5) a library's print"
    assert lines[1 : 1 + len(own)] == own  # the traceback's lines too, unprefixed
    assert lines[-2:] == [
        "(DecodeActor pid=4242, ip=10.0.0.5) another print",
        "(raylet, ip=10.0.0.5) [repeated 2x] a raylet notice",
    ]
    assert len(lines) == len(own) + 3  # the autoscaler's batch left out


def test_in_json_the_driver_prints_one_object_a_line_whatever_an_actor_wrote() -> None:
    settings = LogSettings(format="json")
    own = _own_lines(settings, "decoder-1a2b3c-0")
    out = io.StringIO()
    forward = logs.Forwarder(settings, out)
    forward(_batch([*own, "Traceback (most recent call last):", "  a crash's dump"]))
    forward(_batch(["printed"], is_err=False))
    docs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(docs) == 5 and all(tuple(doc)[:7] == BASE_KEYS for doc in docs)
    assert docs[:2] == [json.loads(line) for line in own]
    assert docs[2]["message"] == "Traceback (most recent call last):"
    assert (docs[2]["level"], docs[2]["logger"], docs[2]["actor"]) == (
        "WARNING",
        "stderr",
        "DecodeActor",
    )
    assert (docs[2]["pid"], docs[2]["ip"]) == (4242, "10.0.0.5")
    assert (docs[4]["level"], docs[4]["logger"]) == ("INFO", "stdout")
    assert docs[4]["message"] == "printed"


def test_on_runs_terminal_the_driver_prints_only_the_actors_warnings() -> None:
    own = _own_lines(LogSettings(), "decoder-1a2b3c-0")  # the actors log at INFO
    out = io.StringIO()
    logs.Forwarder(LogSettings(terminal=True), out)(_batch(own))
    lines = out.getvalue().split("\n")[:-1]  # splitlines() would split on the \r too
    assert lines and all(line.startswith(logs.CLEAR_LINE) for line in lines)
    assert not any("item 3f0c done" in line for line in lines)
    assert "item 9a1e: a bug" in lines[0] and lines[-1].endswith("TypeError: a bug")


def test_the_driver_prints_the_lines_ray_ships_without_terminal_colours() -> None:
    """Ray colours some lines it ships (the raylet's notices): printed without the escape
    sequences, in text and in JSON."""
    coloured = "\x1b[33m(raylet)\x1b[0m \x1b[1mA worker died\x1b[0m or was killed"
    for settings in (LogSettings(), LogSettings(format="json")):
        out = io.StringIO()
        logs.Forwarder(settings, out)(_batch([coloured], pid="raylet", actor_name=None))
        printed = out.getvalue()
        assert "\x1b" not in printed and "(raylet) A worker died or was killed" in printed
    for formatter in (logs.TextFormatter(), logs.JsonFormatter()):
        record = logging.makeLogRecord({"name": "ray", "levelname": "WARNING", "msg": coloured})
        assert "\x1b" not in formatter.format(record), formatter
