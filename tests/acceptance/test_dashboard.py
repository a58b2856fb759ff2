"""The dashboard in a real headless browser (issue 15), against `framefleet up` running the
tiny DETR (paced, so that a video is seen half-way) over generated videos, two of them
corrupt. The screenshots the README shows are taken here, of that fleet. The refresh's
period and what a stale decode actor looks like are seen against the API alone, in a
browser whose clock the test moves."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
from redis import Redis

from framefleet.queue import Queue, Supervision
from framefleet.queue.server import running_url
from framefleet.settings import (
    ApiSettings,
    CoordinatorSettings,
    ModelSettings,
    PipelineSettings,
    QueueSettings,
    RedisSettings,
    Settings,
    SourceSettings,
)
from tests.conftest import ManualClock
from tests.integration.test_api import Served
from tests.support.browser import (
    Watched,
    chromium,
    log_in,
    note_refreshes,
    playwright_or_fail,
    refreshes,
)
from tests.support.deadline import left
from tests.support.models import write_tiny_detr
from tests.support.servers import free_port
from tests.support.videos import write_corrupt, write_video

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "docs" / "screenshots"
WRITE_TOKEN, READ_TOKEN = "dashboard-write-token-0123456789", "dashboard-read-token-9876543210"
LONG = "long-video"  # 30 chunks at >= 0.6 s each: seen half-way by a page refreshed every 5 s
COUNTED = ("queued", "delayed", "leased", "done", "dead", "inbox")


@dataclass
class Up:
    """A running `framefleet up`: its API, the token's header, its process and log."""

    url: str
    auth: dict[str, str]
    proc: subprocess.Popen[bytes]
    log: Path

    def get(self, path: str) -> Any:
        answer = httpx.get(f"{self.url}{path}", headers=self.auth, timeout=10)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def _videos(videos: Path, scratch: Path) -> list[dict[str, Any]]:
    """The items to enqueue: one long video, two short ones, two corrupt, one not a video."""
    write_video(videos / "long.mp4", frames=240)
    for i in (1, 2):
        write_video(videos / f"clip-{i}.mp4", frames=16)
    source = write_video(scratch / "src.mp4", frames=60, width=160, height=120)
    for i in (1, 2):
        write_corrupt(videos / f"corrupt-{i}.mp4", source)
    (videos / "notes.mp4").write_text("no frames here\n" * 100)
    names = {LONG: "long", "clip-1": "clip-1", "clip-2": "clip-2", "corrupt-1": "corrupt-1",
             "corrupt-2": "corrupt-2", "notes": "notes"}  # fmt: skip
    return [{"id": k, "uri": str(videos / f"{v}.mp4")} for k, v in names.items()]


def _settings(tmp_path: Path, port: int) -> Settings:
    """The fleet `up` runs, as make_fleet's (tests/support/fleet.py): the tiny DETR paced
    to 0.3 s a batch of 4, 8-frame chunks, one decode and one inference actor."""
    (tmp_path / "api-token").write_text(f"{WRITE_TOKEN}\n")
    return Settings(
        redis=RedisSettings(data_dir=tmp_path / "redis"),
        source=SourceSettings(allowed_roots=(tmp_path / "videos",)),
        model=ModelSettings(
            model=str(write_tiny_detr(tmp_path / "detr")),
            plugin="tests.support.plugin_model:load_paced_detection",
            batch_size=4,
            torch_threads=1,
            score_threshold=0.15,  # the tiny model scores about 0.19: boxes for the previews
        ),
        pipeline=PipelineSettings(
            out=str(tmp_path / "out"),
            chunk_frames=8,
            max_inflight_chunks=2,
            decode_actors=1,
            inference_actors=1,
            gpus_per_inference=0.0,
            cpus_per_decoder=0.5,
            cpus_per_inference=0.5,
            previews=4,
        ),
        coordinator=CoordinatorSettings(
            ray_temp_dir=tempfile.mkdtemp(prefix="ffui-"), tick_s=0.5, stale_s=4.0
        ),
        api=ApiSettings(port=port, token_file=tmp_path / "api-token", read_token=READ_TOKEN),
    )


@contextlib.contextmanager
def _up(tmp_path: Path) -> Iterator[Up]:
    """`framefleet up` in a session of its own until the API answers; then Ctrl-C, and
    nothing of it left behind (whatever happened in between)."""
    port, data = free_port(), tmp_path / "redis"
    settings = _settings(tmp_path, port)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAMEFLEET_")}
    env.update(settings.to_env(), PYTHONPATH=str(ROOT))  # the paced model's module
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "framefleet", "up", "--out", str(tmp_path / "out")],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    up = Up(f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {WRITE_TOKEN}"}, proc, log)
    try:
        _wait(lambda: f"framefleet API on {up.url}" in log.read_text(), 120, "the API", up)
        yield up
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, up.tail()
    finally:
        if proc.poll() is None:  # the test failed: Ctrl-C, then kill what is left
            proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            with contextlib.suppress(OSError, ValueError, KeyError):  # its server's own session
                os.kill(int(json.loads((data / "server.json").read_text())["pid"]), signal.SIGKILL)
    assert running_url(data) is None  # the embedded server stopped with it
    time.sleep(1)
    assert not _session_left(proc.pid), f"still running after Ctrl-C: {_session_left(proc.pid)}"


def _session_left(sid: int) -> list[str]:
    found = []
    for p in psutil.process_iter(["name"]):
        with contextlib.suppress(psutil.Error, OSError):
            if os.getsid(p.pid) == sid and p.status() != psutil.STATUS_ZOMBIE:
                found.append(str(p.info["name"]))
    return found


def _wait(predicate: Callable[[], bool], timeout: float, what: str, up: Up) -> None:
    end = time.monotonic() + left(timeout)
    while not predicate():
        assert up.proc.poll() is None, f"`up` exited while waiting for {what}:\n{up.tail()}"
        assert time.monotonic() < end, f"timed out waiting for {what}:\n{up.tail()}"
        time.sleep(0.2)


def _cards(page: Any) -> dict[str, int]:
    """The overview's counts as the page shows them."""
    shown = page.eval_on_selector_all(
        "[data-count]",
        "cards => cards.map(c => [c.dataset.count, c.querySelector('.value').textContent])",
    )
    return {name: int(text.replace(",", "")) for name, text in shown}


def _counts_match(up: Up, page: Any, timeout: float = 30) -> dict[str, int]:
    """The overview's cards against GET /v1/queue, retried until equal (the fleet moves
    between the page's refresh and the API's answer)."""
    last: list[Any] = []

    def same() -> bool:
        api = {k: v for k, v in up.get("/v1/queue")["counts"].items() if k in COUNTED}
        last[:] = [_cards(page), api]
        return bool(last[0] == last[1])

    _wait(same, timeout, "the overview's counts to match GET /v1/queue", up)
    return dict(last[0])


def _progress(page: Any) -> tuple[str, int, int | None]:
    """An item page's state and progress: chunks done and the total (exact once the last
    frame is decoded; before, minus the container's promise shown as ~N, or None when the
    container says nothing). Without either, a bar moves only while the video is in
    flight: one that is not has none."""
    state, text, bar = page.evaluate(
        """() => { const bar = document.querySelector('.bigbar progress');
                   return [document.querySelector('h1 .state').textContent,
                           document.querySelector('.bigbar .num').textContent,
                           bar && [bar.getAttribute('value'), bar.getAttribute('max')]]; }"""
    )
    done, _, total = text.partition("/")
    if total.startswith("~"):  # the container's promise, until the last frame is decoded
        assert state == "leased" and bar == [done, total[1:]], (state, text, bar)
        return state, int(done), -int(total[1:])
    if total != "?":
        assert bar == [done, total], (text, bar)
        return state, int(done), int(total)
    assert bar == ([None, None] if state == "leased" else None), (state, text, bar)
    return state, int(done), None


def _watch_progress(up: Up, page: Any) -> list[tuple[str, int, int | None]]:
    """What the long video's page showed until it was done, without a reload: the script's
    refresh is the only thing that changes it."""
    page.goto(f"{up.url}/ui/items/{LONG}")
    page.evaluate("window.framefleetTestMark = 1")  # gone if the page were loaded again
    seen = [_progress(page)]

    def done() -> bool:
        now = _progress(page)
        if now != seen[-1]:
            seen.append(now)
        return now[0] == "done"

    _wait(done, 120, f"{LONG} to be done on its page (seen {seen})", up)
    assert page.evaluate("window.framefleetTestMark") == 1, "the page was loaded again"
    return seen


def _dead_groups(page: Any) -> dict[str, int]:
    rows = page.eval_on_selector_all(
        "table.groups tr[data-class]",
        "rows => rows.map(r => [r.dataset.class, r.cells[1].textContent])",
    )
    return {cls: int(n.replace(",", "")) for cls, n in rows}


def _ids(page: Any) -> list[str]:
    return list(
        page.eval_on_selector_all("table.items td.id a", "as => as.map(a => a.textContent)")
    )


def _fits(page: Any) -> None:
    """Nothing wider than the 1280-pixel page, nor than its panel: every button in view
    without a scroll sideways (a dead letter's Retry was 130 pixels past the right edge)."""
    wide = page.evaluate(
        """() => [document.documentElement, ...document.querySelectorAll('.panel')]
                   .filter(e => e.scrollWidth > e.clientWidth + 1)
                   .map(e => `${e.className || e.tagName}: ${e.scrollWidth} > ${e.clientWidth}`)"""
    )
    assert not wide, wide
    for box in page.eval_on_selector_all(
        "main button", "bs => bs.map(b => b.getBoundingClientRect().right)"
    ):
        assert box <= page.viewport_size["width"], box


def _shoot(page: Any, name: str) -> None:
    """docs/screenshots/NAME.png (light) and NAME-dark.png, the whole page."""
    _fits(page)
    SHOTS.mkdir(parents=True, exist_ok=True)
    for scheme, suffix in (("light", ""), ("dark", "-dark")):
        page.emulate_media(color_scheme=scheme)
        page.screenshot(path=str(SHOTS / f"{name}{suffix}.png"), full_page=True)
    page.emulate_media(color_scheme="light")


def _clean(watched: Watched, allowed_errors: tuple[str, ...] = ()) -> None:
    """Nothing left loopback; no request failed; no console error (a CSP violation is one)
    but those expected."""
    assert watched.requests and not watched.foreign(), watched.foreign()
    assert not watched.failed, watched.failed
    errors = [e for e in watched.errors if not any(a in e for a in allowed_errors)]
    assert not errors, errors


def test_the_dashboard_in_a_browser_follows_the_fleet_and_refuses_writes_when_read_only(
    tmp_path: Path,
) -> None:
    """Log in with the token; the overview's counts are the API's; a video's progress bar
    moves (the page refreshes itself) until done; the corrupt videos are dead letters under
    their class, one is retried (after a confirm) and queued again, in the audit log; the
    read token's session shows no retry button and its POST is refused with 405; search by
    id; every request stays on 127.0.0.1 with no failure or console error."""
    sync_playwright = playwright_or_fail()
    (tmp_path / "videos").mkdir()
    items = _videos(tmp_path / "videos", tmp_path)
    with _up(tmp_path) as up, sync_playwright() as pw:
        posted = httpx.post(f"{up.url}/v1/items", json={"items": items}, headers=up.auth)
        assert posted.status_code == 200 and len(posted.json()["new"]) == len(items), posted.text
        with chromium(pw, tmp_path, "write") as writer:
            _as_writer(up, writer)
        with chromium(pw, tmp_path, "read") as reader:
            _as_reader(up, reader)


def _as_writer(up: Up, w: Watched) -> None:
    """The write token's session, from the login to the screenshots."""
    log_in(w.page, up.url, WRITE_TOKEN)
    assert w.page.locator(".who .badge").last.text_content() == "write"
    _counts_match(up, w.page)
    _follow_a_video(up, w.page)
    _shoot(w.page, "item")
    _retry_a_dead_letter(up, w)
    _search(w.page, "corrupt-", ["corrupt-1", "corrupt-2"])
    assert w.page.locator("table.items progress").count() == 0  # dead: no bar that moves
    counts = w.page.locator("table.items td.bar").all_text_contents()  # 1 chunk, of ~N or ?
    assert len(counts) == 2 and all(re.fullmatch(r"1/(\?|~\d+)", c) for c in counts), counts
    _fits(w.page)
    w.page.click("nav >> text=Dead letters")
    _shoot(w.page, "dead")
    w.page.click("nav >> text=Overview")
    assert _counts_match(up, w.page) == {**dict.fromkeys(COUNTED, 0), "done": 3, "dead": 3}
    drains = w.page.locator("dt:text-is('backlog drains in') + dd").text_content()
    assert drains == "nothing waiting", drains  # not "0.0 s"
    _shoot(w.page, "overview")
    _clean(w)


def _follow_a_video(up: Up, page: Any) -> None:
    """The long video's page, refreshed by its script, from queued (or leased) to done."""
    seen = _watch_progress(up, page)
    halfway = [done for state, done, of in seen if state == "leased" and done and of]
    assert halfway, f"the bar was never seen half-way: {seen}"
    total = up.get(f"/v1/items/{LONG}")["chunks_total"]
    promised = {-of for state, _, of in seen if state == "leased" and of and of < 0}
    assert promised == {total}, seen  # the container's count was right: ~30 while leased
    assert [d for _, d, _ in seen] == sorted(d for _, d, _ in seen), f"it went back: {seen}"
    assert seen[-1] == ("done", total, total), seen
    stamp = page.locator("footer time.now")  # as the refresh left it: as the server writes it
    shown = stamp.text_content()
    assert shown == stamp.get_attribute("datetime").replace("T", " "), shown
    page.wait_for_selector("table.timings")  # where the time went, from its manifest
    # its previews, each loaded from the output store through the API, with its boxes
    page.wait_for_selector(".strip img")
    loaded = page.eval_on_selector_all(
        ".strip img", "imgs => imgs.map(i => [i.complete, i.naturalWidth, i.naturalHeight])"
    )
    assert loaded == [[True, 96, 64]] * 4, loaded  # the test video's size: not upscaled
    bar, facts = page.locator(".bigbar").bounding_box(), page.locator("dl").first.bounding_box()
    assert facts["y"] - (bar["y"] + bar["height"]) >= 8, (bar, facts)  # "30/30" set apart


def _retry_a_dead_letter(up: Up, w: Watched) -> None:
    """The corrupt videos under their class; one retried (the queue paused meanwhile, so
    that it is seen queued), in the audit log; the queue resumed, it dies again."""
    page = w.page
    page.click("nav >> text=Dead letters")
    groups = {"corrupt": 2, "not_a_video": 1}
    _wait(lambda: _dead_groups(page) == groups, 60, "the dead letters grouped by class", up)
    assert up.get("/v1/dead/groups")["groups"] == groups
    page.click("table.groups tr[data-class=corrupt] a")  # the class's own list
    page.wait_for_url("**/ui/dead?class=corrupt")
    assert sorted(_ids(page)) == ["corrupt-1", "corrupt-2"]
    _fits(page)
    _pause(up, w)
    page.goto(f"{up.url}/ui/dead?class=corrupt")
    page.click("table.items tr:has(a:text-is('corrupt-1')) button:text-is('Retry')")
    assert w.dialogs[-1] == "Send corrupt-1 back to the queue?"
    page.wait_for_url("**/ui/items/corrupt-1")
    assert page.locator("h1 .state").text_content() == "queued"
    assert up.get("/v1/items/corrupt-1")["state"] == "queued"
    page.click("nav >> text=Dead letters")
    row = page.locator("table.audit tbody tr").first.locator("td").all_text_contents()
    assert row[1:5] == ["write", "retry", "corrupt-1", "1"], row
    latest = up.get("/v1/audit")[0]
    assert (latest["who"], latest["action"], latest["ids"]) == ("write", "retry", ["corrupt-1"])
    _resume(up, w)
    _wait(lambda: up.get("/v1/items/corrupt-1")["state"] == "dead", 60, "corrupt-1 dead again", up)
    _wait(lambda: up.get("/v1/queue")["counts"]["done"] == 3, 60, "every good video done", up)


def _search(page: Any, text: str, ids: list[str]) -> None:
    """The Items page's search box: the ids that start with `text`, every state."""
    page.click("nav >> text=Items")
    page.fill("input[name=q]", text)
    page.press("input[name=q]", "Enter")
    page.wait_for_url(f"**/ui/items?q={text}")
    assert sorted(_ids(page)) == ids


def _pause(up: Up, w: Watched) -> None:
    w.page.goto(f"{up.url}/ui/")
    w.page.click("button:text-is('Pause')")
    assert w.dialogs[-1].startswith("Pause the queue")
    w.page.wait_for_selector(".badge.paused")
    assert up.get("/v1/queue")["paused"] is True


def _resume(up: Up, w: Watched) -> None:
    w.page.goto(f"{up.url}/ui/")
    w.page.click("button:text-is('Resume')")
    w.page.wait_for_selector("button:text-is('Pause')")
    assert up.get("/v1/queue")["paused"] is False


def _as_reader(up: Up, r: Watched) -> None:
    """The read token's session: the same pages without a control, and a write refused."""
    page = r.page
    log_in(page, up.url, READ_TOKEN)
    assert page.locator(".who .badge.ro").text_content() == "read-only"
    _counts_match(up, page)
    page.click("nav >> text=Dead letters")
    assert sorted(_ids(page)) == ["corrupt-1", "corrupt-2", "notes"]
    assert page.locator("main button, form[action*='/retry']").count() == 0  # no control
    status, text = page.evaluate(  # the Retry form's POST, from this session's page
        """async () => { const answer = await fetch('/ui/dead/corrupt-2/retry',
               {method: 'POST', body: new URLSearchParams(), credentials: 'same-origin'});
               return [answer.status, await answer.text()]; }"""
    )
    assert status == 405 and "read-only: this action is refused" in text, (status, text)
    assert up.get("/v1/items/corrupt-2")["state"] == "dead"  # nothing was done
    _search(page, LONG, [LONG])
    page.click(f"table.items a:text-is('{LONG}')")
    page.wait_for_url(f"**/ui/items/{LONG}")
    assert page.locator("h1 .state").text_content() == "done"
    assert page.locator(".controls button").count() == 0
    _on_a_phone(page)
    # The refused POST is the one error the browser logs ("Failed to load resource").
    _clean(r, allowed_errors=("status of 405",))


def _on_a_phone(page: Any) -> None:
    """At a phone's width (390 px) the pages fit: nothing wider than the screen but a wide
    table, which scrolls inside its own panel."""
    page.set_viewport_size({"width": 390, "height": 844})
    for name in ("Overview", "Items", "Dead letters", "Workers"):
        page.click(f"nav >> text={name}")
        page.wait_for_load_state()
        wide = page.evaluate("""() => document.documentElement.scrollWidth - window.innerWidth""")
        assert wide <= 0, f"{name}: the page is {wide} px wider than a phone's screen"
    page.set_viewport_size({"width": 1280, "height": 860})


def test_a_page_refreshes_itself_every_5_s_and_shows_a_decode_actor_gone_stale(
    tmp_path: Path, valkey_client: Redis
) -> None:
    """README: "a small script refreshes a page every 5 s", the overview warns when videos
    wait and no decode actor is there to take them, the workers page marks stale workers.
    In a browser whose clock the test moves: the overview's script asks for a refresh 5 s
    after the page loaded, not a millisecond sooner, then every 5 s; a decode actor whose
    heartbeats stopped turns, at the next refresh and without a reload, into the warning;
    the workers page marks it stale, and no longer once it heartbeats again. The API
    alone, without a fleet: a heartbeat is a queue write."""
    sync_playwright = playwright_or_fail()
    settings = Settings(
        queue=QueueSettings(name="dash-refresh"),
        api=ApiSettings(token=WRITE_TOKEN, read_token=READ_TOKEN),
    )
    queue = Queue(valkey_client, settings.queue)
    queue.enqueue(["s3://v/waiting-1.mp4", "s3://v/waiting-2.mp4"])
    supervision = Supervision(queue)
    supervision.heartbeat("decoder-g1-0")
    stale_by = ManualClock(int((time.time() - settings.coordinator.stale_s - 5) * 1000))
    warning = "2 videos queued and no decode actor to take them"
    with (
        Served(settings, queue) as served,
        sync_playwright() as pw,
        chromium(pw, tmp_path, "clock") as w,
    ):
        page = w.page
        page.clock.install(time=1_900_000_000)
        page.clock.pause_at(1_900_000_001)  # from now on, time moves when told to
        note_refreshes(page)
        log_in(page, served.url, WRITE_TOKEN)
        page.evaluate("window.framefleetTestMark = 1")  # gone if the page were loaded again
        loaded = page.evaluate("Date.now()")
        assert page.locator("p.warn").count() == 0
        assert page.locator("dt:text-is('consumers') + dd").text_content() == "1 decode actor"
        # its heartbeat, stale_s + 5 s old: the server sees it silent from now on
        Supervision(Queue(valkey_client, settings.queue, clock=stale_by)).heartbeat("decoder-g1-0")
        page.clock.run_for(4_999)
        assert refreshes(page) == [] and page.locator("p.warn").count() == 0
        page.clock.run_for(1)
        assert refreshes(page) == [loaded + 5_000]
        page.wait_for_selector(f"p.warn:text-is('{warning}')")
        assert page.locator("dt:text-is('consumers') + dd").text_content() == "0 decode actors"
        page.clock.run_for(5_000)
        assert refreshes(page) == [loaded + 5_000, loaded + 10_000]
        assert page.evaluate("window.framefleetTestMark") == 1, "the page was loaded again"

        page.click("nav >> text=Workers")
        page.wait_for_url("**/ui/workers")
        stale = page.locator("tr.stale")
        assert stale.locator("td").first.text_content() == "decoder-g1-0"
        assert stale.locator(".badge.bad").text_content() == "stale"
        supervision.heartbeat("decoder-g1-0")  # back
        page.clock.run_for(5_000)
        page.wait_for_selector("tr.stale", state="detached")
        assert page.locator("table.items tbody tr").count() == 1
        _clean(w)
