"""`framefleet run PATHS... --out DIR`: the main job for a person, on embedded defaults.

Enqueue the videos (idempotent: a video already done is not done again, unless its outputs
are not in this run's output root with this configuration), run a coordinator until every
one of them is done or dead, showing progress, then print a summary. Exit 0 only when every
video is done. On a terminal, the log lines of the run, its driver and its actors that reach
it are warnings and errors only, each clearing the progress line first; the actors' INFO
lines (each video's outcome) are in Ray's log files (logs.py).
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from framefleet import logs
from framefleet.queue import Item, NewItem, Queue, Supervision, default_id, queue_at
from framefleet.settings import VIDEO_SUFFIXES, Settings
from framefleet.text import printable
from framefleet.workers.model import ModelLoadError, pin_weights, preflight
from framefleet.workers.outputs import OutputStore, item_dir, made_with
from framefleet.workers.results import Results

from .supervisor import Coordinator


def expand(paths: list[str]) -> list[str]:
    """URIs pass as they are; a local file becomes absolute; a folder gives its videos."""
    uris: list[str] = []
    for text in paths:
        if "://" in text:
            uris.append(text)
            continue
        path = Path(text).expanduser().absolute()
        if path.is_dir():
            found = (p for p in path.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
            uris += sorted(str(p) for p in found if p.is_file())
        else:
            uris.append(str(path))
    return uris


def run_job(settings: Settings, redis_url: str, uris: list[str], out: TextIO = sys.stderr) -> int:
    if out.isatty():  # the progress line stays readable: warnings only (logs.py)
        settings = replace(settings, log=replace(settings.log, terminal=True))
        logs.configure(settings.log)
    # the weights pinned once for the check below and the fleet (whose driver keeps the pin)
    settings = replace(settings, model=pin_weights(settings.model))
    queue = queue_at(redis_url, settings)  # enqueue waits for replicas if asked to
    queue.enqueue(uris)
    ids = list(dict.fromkeys(default_id(u, settings.queue.config_version) for u in uris))
    again = elsewhere(settings, queue.items(ids))
    if again:  # done, but into another output root or with another configuration
        queue.enqueue(
            [NewItem(i.uri, id=i.id, priority=i.priority, etag=i.etag) for i in again], force=True
        )
    started = time.monotonic()
    progress = Progress(queue, ids, out)
    code = 0
    if progress.settled():
        out.write("each video is done or dead already: no fleet started")
    else:
        try:  # at once, not after the actors' download timeouts (none on a cluster's nodes)
            if settings.coordinator.ray_address is None:
                preflight(settings.model)
        except ModelLoadError as exc:
            out.write(f"error: {exc}\n{model_hint(str(exc))}")
            return 2
        coordinator = Coordinator(settings, redis_url)
        code = coordinator.run(until=progress.finished)
        progress.finished()
        if coordinator.fatal is not None:
            out.write(f"\nerror: {coordinator.fatal}\n{model_hint(coordinator.fatal)}")
            return 2
    out.write("\n")
    if code != 0:
        return code
    spent = time.monotonic() - started
    return summarize(settings, queue, ids, spent, out, progress.processing_s())


def elsewhere(settings: Settings, items: list[Item]) -> list[Item]:
    """The done items whose outputs are not in this run's output root with its
    configuration (a run with another --out or --model before): `run` does them again, as
    new revisions, instead of reporting the other outputs."""
    store = OutputStore(settings.pipeline.out, settings.source)
    config = settings.pipeline.config_hash(settings.model)
    found = []
    for item in items:
        if item.state != "done":
            continue
        video = store.video_of(item.result or "")
        where, _, version = (video or "").rpartition("/")
        if video is None or where != item_dir(item.id) or not made_with(version, config, item.rev):
            found.append(item)
    return found


class Progress:
    """`run`'s progress line: videos done, dead and running, frames through the model and
    their rate, an ETA once a video has finished, and the fleet's state. The rate and the
    ETA count from the first frame through the model, not from the start-up."""

    def __init__(self, queue: Queue, ids: list[str], out: TextIO) -> None:
        self.queue, self.ids, self.out = queue, ids, out
        self.supervision = Supervision(queue)
        self.frames0 = self._frames()  # the queue's counter before this run
        self.first_frame_at: float | None = None  # monotonic: the first checkpointed frames
        self.frames = 0

    def _frames(self) -> int:
        return int(self.queue.stats().counters.get("frames_total", 0))

    def processing_s(self) -> float | None:
        """Seconds since the first frames came through the model (None: none yet)."""
        return None if self.first_frame_at is None else time.monotonic() - self.first_frame_at

    def settled(self) -> bool:
        """Whether every video is done or dead (nothing printed)."""
        states = self.queue.states(self.ids)
        return states.count("done") + states.count("dead") == len(self.ids)

    def finished(self) -> bool:
        states = self.queue.states(self.ids)
        done, dead = states.count("done"), states.count("dead")
        running = states.count("leased")
        n = len(self.ids)
        bar = "#" * int(30 * (done + dead) / max(1, n))
        health = self.supervision.health() or {}
        if not health.get("gcs"):
            fleet = "starting the fleet: Ray"
        elif not health.get("ready_inference"):  # the model loads in each inference actor
            fleet = f"loading the model in {health.get('inference', 0)} inference actors"
        else:
            fleet = f"{health.get('decoders', 0)} decoders, {health['ready_inference']} models"
        self.frames = self._frames() - self.frames0
        if self.frames > 0 and self.first_frame_at is None:
            self.first_frame_at = time.monotonic()
        line = f"\r[{bar:<30}] {done}/{n} done, {dead} dead, {running} running"
        line += f"; {self.frames} frames{self._rate(done + dead, n)} ({fleet})"
        self.out.write(line.ljust(120))
        self.out.flush()
        return done + dead == n

    def _rate(self, finished: int, n: int) -> str:
        spent = self.processing_s()
        if spent is None or spent < 1.0:
            return ""
        text = f", {self.frames / spent:.1f} frames/s"
        if 0 < finished < n:
            text += f", ETA {spent * (n - finished) / finished:.0f} s"
        return text


def summarize(
    settings: Settings,
    queue: Queue,
    ids: list[str],
    seconds: float,
    out: TextIO,
    processing_s: float | None = None,
) -> int:
    store = OutputStore(settings.pipeline.out, settings.source)
    done: list[Any] = []
    dead: list[Any] = []
    frames = 0
    for item in queue.items(ids):
        if item.state == "done":
            done.append(item)
            frames += int(store.read_result(item.result or "").get("frames", 0))
        elif item.state == "dead":
            dead.append(item)
    busy = seconds if processing_s is None else min(seconds, processing_s)
    out.write(
        f"done {len(done)} of {len(ids)}, dead {len(dead)}; {frames} frames in {seconds:.1f} s"
        f" ({frames / max(busy, 1e-9):.1f} frames/s over the {busy:.1f} s from the first frame"
        f" through the model, start-up left out); outputs in {settings.pipeline.out}\n"
    )
    results = Results(store)
    out.write(
        f"  the videos: framefleet results --out {settings.pipeline.out}"
        f" (index: {results.index})\n"
        f"  every current detection, one dataset: {results.dataset}"
        " (DuckDB, pandas or pyarrow: see the README's Results)\n"
    )
    if settings.model.random_weights:
        out.write(
            "  a smoke run: the model's weights are random, so its detections mean nothing"
            " (they show the outputs' shape)\n"
        )
    for item in dead:
        out.write(f"  dead: {printable(item.uri)}: {printable(item.dead_reason)}\n")
    return 0 if len(done) == len(ids) else 1


def model_hint(error: str) -> str:
    """What to do when the model cannot be loaded (its error text), or nothing."""
    if "RANDOM_WEIGHTS" in error or "cannot be fetched" in error or "offline" in error.lower():
        return (
            "hint: for a smoke run without the weights, `--random-weights` runs a randomly"
            " initialised model of the same architecture; or give a local model directory"
            " with `--model DIR`.\n"
        )
    return ""
