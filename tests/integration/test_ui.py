"""The dashboard (/ui/) served by uvicorn on a loopback port over the embedded Redis, called
with httpx as a browser would (a cookie jar, Sec-Fetch-Site, form posts): the login and its
cookie, each page's figures against the API's own answers, the security headers and
same-origin assets, the writes and what refuses them, a root path, and a page's cost in
Redis commands whatever the number of items."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import numpy as np
import pytest
from redis import Redis

from framefleet.ops import session
from framefleet.ops.webhooks import GROUP
from framefleet.queue import NewItem, Queue, Supervision
from framefleet.settings import Settings
from framefleet.workers import previews
from framefleet.workers.model import DETECTION_SCHEMA
from framefleet.workers.outputs import OutputStore, records_table
from tests.conftest import ManualClock, monitored
from tests.integration.test_api import READ, WRITE, Served, _kill, _settings
from tests.integration.test_metrics import _work
from tests.support.deadline import wait_for

SAME = {"Sec-Fetch-Site": "same-origin"}
FRAGMENT = {"X-Framefleet-Fragment": "1"}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
LEASE_S = 30.0


# -- a small DOM: the pages are parsed, not grepped --------------------------------------------

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source"}


class Node:
    def __init__(self, tag: str, attrs: dict[str, str], parent: Node | None) -> None:
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Node | str] = []

    def __iter__(self) -> Iterator[Node]:
        for child in self.children:
            if isinstance(child, Node):
                yield child
                yield from child

    def text(self) -> str:
        parts = [c if isinstance(c, str) else c.text() for c in self.children]
        return " ".join(" ".join(parts).split())

    def all(self, tag: str, cls: str | None = None, **attrs: str) -> list[Node]:
        """The descendants with this tag (and class, and attributes: "" for any value)."""
        return [
            n
            for n in self
            if n.tag == tag
            and (cls is None or cls in n.attrs.get("class", "").split())
            and all(k in n.attrs and v in ("", n.attrs[k]) for k, v in attrs.items())
        ]

    def one(self, tag: str, cls: str | None = None, **attrs: str) -> Node:
        found = self.all(tag, cls, **attrs)
        assert len(found) == 1, (tag, cls, attrs, [n.text() for n in found])
        return found[0]


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = self.top = Node("#document", {}, None)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs}, self.top)
        self.top.children.append(node)
        if tag not in VOID:
            self.top = node

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.top.children.append(Node(tag, {k: v or "" for k, v in attrs}, self.top))

    def handle_endtag(self, tag: str) -> None:
        node: Node | None = self.top
        while node is not None and node.tag != tag:
            node = node.parent
        assert node is not None and node.parent is not None, f"</{tag}> closes nothing"
        self.top = node.parent

    def handle_data(self, data: str) -> None:
        self.top.children.append(data)


def parse(html: str) -> Node:
    builder = _Builder()
    builder.feed(html)
    builder.close()
    return builder.root


def _number(text: str) -> int:
    return int(text.replace(",", ""))


def _ids(page: Node) -> list[str]:
    return [a.text() for td in page.all("td", "id") for a in td.all("a")]


def _write_forms(page: Node) -> list[str]:
    """The actions of the forms that post something but a logout."""
    return [
        f.attrs["action"]
        for f in page.all("form", method="post")
        if not f.attrs["action"].endswith("/ui/logout")
    ]


# -- serving and logging in ----------------------------------------------------------------


def _ui_settings(tmp_path: Path, name: str, **api: Any) -> Settings:
    """test_api's settings, with an output store of its own for the manifests."""
    settings = _settings(tmp_path, name, **api)
    return replace(
        settings,
        queue=replace(settings.queue, lease_s=LEASE_S),
        pipeline=replace(settings.pipeline, out=str(tmp_path / "out")),
    )


@dataclass
class Dash:
    served: Served
    queue: Queue
    settings: Settings


@pytest.fixture
def dash(tmp_path: Path, valkey_client: Redis, request: pytest.FixtureRequest) -> Iterator[Dash]:
    settings = _ui_settings(tmp_path, f"ui-{request.node.name[:40]}")
    queue = Queue(valkey_client, settings.queue)
    with Served(settings, queue) as served:
        yield Dash(served, queue, settings)


@contextlib.contextmanager
def _login(served: Served, token: str = WRITE, root: str = "") -> Iterator[httpx.Client]:
    """A browser (a cookie jar, no bearer token) with a session of `token`."""
    with served.client(None) as browser:
        got = browser.post(f"{root}/ui/login", data={"token": token, "next": "/"}, headers=SAME)
        assert got.status_code == 303, got.text
        yield browser


def _fresh_login(
    served: Served, token: str, target: str, headers: dict[str, str] = SAME
) -> httpx.Response:
    """A login POST from a browser of its own."""
    with served.client(None) as browser:
        return browser.post("/ui/login", data={"token": token, "next": target}, headers=headers)


def _page(browser: httpx.Client, path: str, status: int = 200) -> Node:
    got = browser.get(path)
    assert got.status_code == status, (path, got.status_code, got.text[:500])
    assert got.headers["content-type"].startswith("text/html")
    return parse(got.text)


def _signed(token: str, role: str, until: int) -> str:
    """A cookie value as the server makes one (its format, to forge variants of it)."""
    message = f"framefleet-dashboard:{role}:{until}".encode()
    return f"{role}.{until}.{hmac.new(token.encode(), message, hashlib.sha256).hexdigest()}"


def _with_cookie(served: Served, value: str, path: str = "/ui/") -> httpx.Response:
    """A request with this session cookie, sent as bytes (Latin-1, as servers read them)."""
    cookie = f"{session.COOKIE}={value}".encode("latin-1")
    return httpx.get(served.url + path, headers={b"Cookie": cookie}, timeout=30)


def _next_of(location: str) -> str:
    where = urlsplit(location)
    assert where.path.endswith("/ui/login"), location
    [target] = parse_qs(where.query)["next"]
    return target


# -- a known state ---------------------------------------------------------------------------


def _done_with_manifest(queue: Queue, settings: Settings, item_id: str) -> str:
    """An item done with real outputs (one chunk of detections, merged, a manifest) in the
    API's output store, as a decode actor finishes one; the manifest's URI."""
    [lease] = _claim_one(queue, NewItem(uri=f"s3://v/{item_id}.mp4", id=item_id), "decoder-g1-0")
    store = OutputStore(settings.pipeline.out, settings.source)
    video = store.video(item_id, "v1")
    box = {"label_id": 1, "label": "person", "score": 0.9, "x0": 1.0, "y0": 2.0, "x1": 3.0}
    records = [{"frame": 0, **box, "y1": 4.0}]
    table = records_table(
        item_id, "tiny-detr", DETECTION_SCHEMA, records, np.arange(1), np.zeros(1)
    )
    frame = np.full((64, 96, 3), 90, np.uint8)
    previews.write(store, video, frame[None], np.arange(1), (0,), records, (96, 64))
    assert store.write_chunk(video, 0, table)
    manifest = {
        "item": item_id,
        "previews": previews.listed(store, video),
        "timings_s": {"fetch": 0.25, "decode": 1.5, "write": 0.125, "total": 2.5},
        "inference_s": {"infer": 0.75},
    }
    uri = store.finalize(video, 1, DETECTION_SCHEMA, manifest)
    assert queue.progress(lease, 0, 1) and queue.ack(lease, uri)
    return uri


def _claim_one(queue: Queue, item: NewItem, worker: str) -> list[Any]:
    """`item` enqueued alone and claimed by `worker` (nothing else is queued meanwhile)."""
    assert queue.stats().counts["queued"] == 0
    queue.enqueue([item])
    leases = queue.claim(1, worker)
    assert [lease.id for lease in leases] == [item.id]
    return leases


def _populate(queue: Queue, settings: Settings, valkey_client: Redis) -> dict[str, Any]:
    """One item done with a manifest; one leased with 2 of 10 chunks done; one leased 27 s
    of its 30 ago (3 s left: expiring); 3 + 1 dead letters of two classes; 4 queued, one of
    them with "#" and "?" in its id; a decode actor's heartbeat with its node, host, pid."""
    done = "cam1-done"
    manifest = _done_with_manifest(queue, settings, done)
    [busy] = _claim_one(queue, NewItem(uri="s3://v/busy.mp4", id="cam1-busy"), "decoder-g1-0")
    assert queue.progress(busy, 0, 10) and queue.progress(busy, 1, 10)
    # the same queue on a clock 27 s behind: its lease ends 3 s from now, as the app counts
    behind = ManualClock(int(time.time() * 1000) - 27_000)
    old = Queue(valkey_client, settings.queue, clock=behind)
    [late] = _claim_one(old, NewItem(uri="s3://v/late.mp4", id="cam1-late"), "decoder-g1-1")
    corrupt = _kill(queue, 3, "corrupt", "cam2")
    missing = _kill(queue, 1, "not_found", "cam3")
    queued = ["cam1-q0", "cam1-q1", "cam1-q2", "cam#7?x"]
    queue.enqueue([NewItem(uri=f"s3://v/{i}.mp4", id=i) for i in queued])
    info: dict[str, str | int] = {"node": "node-ab12", "host": "gpu-3", "pid": 4242}
    Supervision(queue).heartbeat("decoder-g1-0", holding=[busy.id], info=info)
    return {
        "done": done,
        "manifest": manifest,
        "busy": busy.id,
        "late": late.id,
        "corrupt": corrupt,
        "missing": missing,
        "queued": queued,
    }


# -- 1. without a session --------------------------------------------------------------------

PAGES = (
    "/",
    "/items",
    "/items?state=dead",
    "/items?q=cam1-q",
    "/items/cam1-done",
    "/inflight",
    "/dead",
    "/dead?class=corrupt",
    "/workers",
)


def test_without_a_session_each_page_redirects_to_the_login_and_a_refresh_gets_401(
    dash: Dash,
) -> None:
    served = dash.served
    with served.client(None) as browser:
        for page in PAGES:
            got = browser.get(f"/ui{page}")
            assert got.status_code == 303, (page, got.text)
            assert _next_of(got.headers["location"]) == page
            assert got.headers["content-security-policy"] == CSP
            refresh = browser.get(f"/ui{page}", headers=FRAGMENT)
            assert refresh.status_code == 401 and refresh.text == "", page
        # an id with "#" and "?" comes back whole after the login
        got = browser.get("/ui/items/cam%237%3Fx")
        assert _next_of(got.headers["location"]) == "/items/cam%237%3Fx"
        # a write without a session: after the login, the overview (not a GET of the action)
        got = browser.post("/ui/queue/pause", headers=SAME)
        assert got.status_code == 303 and _next_of(got.headers["location"]) == "/"
        css = browser.get("/ui/static/app.css")
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
        assert "--bg" in css.text
        assert browser.get("/ui/static/app.js").status_code == 200
        front = browser.get("/")
        assert front.status_code == 303 and front.headers["location"] == "/ui/"
        assert browser.get("/ui").headers["location"] == "/ui/"
        login = _page(browser, "/ui/login?next=/items%3Fstate%3Ddead")
        assert login.one("input", name="next").attrs["value"] == "/items?state=dead"
        assert login.one("input", name="token").attrs["type"] == "password"
        # a page that is not there is a page too, not the API's JSON
        missing = browser.get("/ui/nope")
        assert missing.status_code == 404 and missing.headers["content-type"].startswith("text/")
        assert "Not found" in parse(missing.text).one("h1").text()


# -- 2. the login ----------------------------------------------------------------------------


def test_the_login_gives_a_signed_strict_cookie_and_lands_on_our_own_pages(
    dash: Dash,
) -> None:
    served = dash.served
    with served.client(None) as browser:
        wrong = browser.post("/ui/login", data={"token": "guess", "next": "/"}, headers=SAME)
        assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
        assert "not known" in parse(wrong.text).one("p", "bad").text() and not browser.cookies
        # a login posted from elsewhere: no Sec-Fetch-Site nor Origin, another site's
        for headers in ({}, {"Sec-Fetch-Site": "cross-site"}, {"Origin": "http://evil.example"}):
            refused = browser.post("/ui/login", data={"token": WRITE}, headers=headers)
            assert refused.status_code == 403, headers
            assert "set-cookie" not in refused.headers and not browser.cookies
        ok = browser.post(
            "/ui/login", data={"token": WRITE, "next": "/items?state=dead"}, headers=SAME
        )
        assert ok.status_code == 303 and ok.headers["location"] == "/ui/items?state=dead"
        name, _, rest = ok.headers["set-cookie"].partition("=")
        value, *attributes = [part.strip() for part in rest.split(";")]
        flags = {a.partition("=")[0].lower(): a.partition("=")[2] for a in attributes}
        assert name == session.COOKIE and value.startswith("write.")
        assert "httponly" in flags and flags["samesite"].lower() == "strict"
        assert flags["path"] == "/ui/" and int(flags["max-age"]) == session.SESSION_S
        assert "secure" not in flags  # plain http on loopback: a secure cookie would be lost
        assert "write" in [b.text() for b in _page(browser, "/ui/").all("span", "badge")]
        # by Origin alone (a browser without Sec-Fetch-Site), this host's
        by_origin = _fresh_login(served, READ, "/dead", {"Origin": served.url})
        assert by_origin.status_code == 303 and by_origin.headers["location"] == "/ui/dead"
        # `next` never leads off this site
        for target in ("//evil.example/x", "https://evil.example/", "http:evil", "", "items"):
            got = _fresh_login(served, WRITE, target)
            assert got.status_code == 303 and got.headers["location"] == "/ui/", target
        odd = _fresh_login(served, WRITE, "/items/cam%237%3Fx")
        assert odd.headers["location"] == "/ui/items/cam%237%3Fx"
        logout = browser.post("/ui/logout", headers=SAME)
        assert logout.status_code == 303 and logout.headers["location"] == "/ui/login"
        assert session.COOKIE in logout.headers["set-cookie"]
        assert "Path=/ui/" in logout.headers["set-cookie"] and not browser.cookies
        assert browser.get("/ui/").status_code == 303


def test_a_forged_or_expired_cookie_is_refused(dash: Dash) -> None:
    served = dash.served
    with _login(served, READ) as reader:
        [value] = [c.value or "" for c in reader.cookies.jar if c.name == session.COOKIE]
    role, until, mac = value.split(".")
    assert role == "read" and _with_cookie(served, value).status_code == 200
    flipped = mac[:-1] + ("0" if mac[-1] != "0" else "1")
    now = int(time.time())
    assert _with_cookie(served, _signed(READ, "read", now + 60)).status_code == 200  # as made
    forged = {
        "the role raised": f"write.{until}.{mac}",
        "the HMAC altered": f"read.{until}.{flipped}",
        "its end moved": f"read.{int(until) + 3600}.{mac}",
        "signed, but ended": _signed(READ, "read", now - 1),
        "signed with the read token for write": _signed(READ, "write", now + 60),
        "no HMAC": f"read.{until}",
        "a digit int() refuses": "read.²³.00",
        "not ASCII": f"read.{until}.{mac[:-1]}é",
        "empty": "",
    }
    for why, bad in forged.items():
        got = _with_cookie(served, bad)
        assert got.status_code == 303, (why, got.status_code, got.text[:300])
        assert _next_of(got.headers["location"]) == "/", why


def test_changing_the_token_ends_its_sessions(tmp_path: Path, valkey_client: Redis) -> None:
    """A session's cookie is signed with the token it was made with: the API restarted with
    the same tokens keeps its sessions; restarted with a new write token, the write session
    is sent to the login (the read one, its token unchanged, goes on), the old token logs in
    no more and the new one does; a new read token ends the read session too."""
    settings = _ui_settings(tmp_path, "ui-new-token")
    queue = Queue(valkey_client, settings.queue)
    cookies: dict[str, str] = {}
    with Served(settings, queue) as served:
        for token in (WRITE, READ):
            with _login(served, token) as browser:
                [cookies[token]] = [
                    c.value or "" for c in browser.cookies.jar if c.name == session.COOKIE
                ]
    with Served(settings, queue) as served:  # a restart alone ends nothing
        for token, value in cookies.items():
            assert _with_cookie(served, value).status_code == 200, token
    new_write, new_read = "a-new-write-token-0123456789", "a-new-read-token-0123456789"
    changed = replace(settings, api=replace(settings.api, token=new_write))
    with Served(changed, queue) as served:
        ended = _with_cookie(served, cookies[WRITE])
        assert ended.status_code == 303 and _next_of(ended.headers["location"]) == "/"
        assert _with_cookie(served, cookies[READ]).status_code == 200
        assert _fresh_login(served, WRITE, "/").status_code == 401
        with _login(served, new_write) as browser:
            assert "write" in [b.text() for b in _page(browser, "/ui/").all("span", "badge")]
    both = replace(changed, api=replace(changed.api, read_token=new_read))
    with Served(both, queue) as served:
        for token, value in cookies.items():
            ended = _with_cookie(served, value)
            assert ended.status_code == 303, token
            assert _next_of(ended.headers["location"]) == "/", token


def test_a_wrong_token_is_slowed_without_holding_up_other_requests(
    dash: Dash,
) -> None:
    """The half second a wrong token waits is the login's own: a request that comes in
    meanwhile is answered at once, before the login is."""
    served = dash.served
    ended: dict[str, float] = {}

    def guess() -> None:
        with served.client(None) as browser:
            got = browser.post("/ui/login", data={"token": "guess"}, headers=SAME)
            assert got.status_code == 401
        ended["login"] = time.monotonic()

    thread = threading.Thread(target=guess)
    thread.start()
    time.sleep(0.15)
    with served.client(None) as other:
        assert other.get("/healthz").status_code == 200
    ended["healthz"] = time.monotonic()
    thread.join(10)
    assert ended["healthz"] < ended["login"] - 0.1, ended


# -- 3. the pages' figures ---------------------------------------------------------------------


def test_every_page_shows_the_figures_the_api_gives(dash: Dash, valkey_client: Redis) -> None:
    served, queue = dash.served, dash.queue
    known = _populate(queue, dash.settings, valkey_client)
    with _login(served) as browser, served.client() as api:
        status = api.get("/v1/queue").json()
        overview = _page(browser, "/ui/")
        cards = {
            a.attrs["data-count"]: a.one("span", "value").text() for a in overview.all("a", "card")
        }
        assert {k: _number(v) for k, v in cards.items()} == {
            k: status["counts"][k] for k in ("queued", "delayed", "leased", "done", "dead", "inbox")
        }
        assert (status["counts"]["queued"], status["counts"]["leased"]) == (4, 2)
        assert "1 decode actor" in overview.text() and "no decode actor" not in overview.text()
        assert overview.one("svg", "chart").all("rect", "done")  # the item done this minute

        # items: a state's page, its tabs' counts, a search
        queued = _page(browser, "/ui/items?state=queued")
        tabs = {a.text().rsplit(" ", 1)[0]: _number(a.one("span", "count").text())
                for a in queued.all("a", role="tab")}  # fmt: skip
        assert tabs == {s: status["counts"][s] for s in tabs} and len(tabs) == 5
        api_queued = [
            i["id"] for i in api.get("/v1/items", params={"state": "queued"}).json()["items"]
        ]
        assert _ids(queued) == api_queued and sorted(api_queued) == sorted(known["queued"])
        dead = _page(browser, "/ui/items?state=dead")
        api_dead = [i["id"] for i in api.get("/v1/items", params={"state": "dead"}).json()["items"]]
        assert _ids(dead) == api_dead and len(api_dead) == 4
        found = _page(browser, "/ui/items?q=cam1-q")
        api_found = [i["id"] for i in api.get("/v1/items", params={"q": "cam1-q"}).json()["items"]]
        assert _ids(found) == api_found and sorted(api_found) == ["cam1-q0", "cam1-q1", "cam1-q2"]
        # an id with "#" and "?" links to its own page
        [link] = [a for a in queued.all("a") if a.text() == "cam#7?x"]
        assert link.attrs["href"] == "/ui/items/cam%237%3Fx"
        odd = _page(browser, link.attrs["href"])
        assert odd.one("h1").text() == "cam#7?x queued"

        # an item in flight, and one done with its manifest
        busy = _page(browser, f"/ui/items/{known['busy']}")
        assert busy.one("div", "bigbar").one("span", "num").text() == "2/10"
        assert "decoder-g1-0" in busy.text()
        done = _page(browser, "/ui/items/cam1-done")
        [outputs] = [a for a in done.all("a") if a.text() == known["manifest"]]
        assert outputs.attrs["href"] == "/ui/items/cam1-done/manifest"
        manifest = browser.get(outputs.attrs["href"])
        assert (
            manifest.status_code == 200 and manifest.headers["content-type"] == "application/json"
        )
        assert manifest.json() == api.get("/v1/items/cam1-done/manifest").json()
        assert manifest.json()["rows"] == 1 and manifest.headers["x-frame-options"] == "DENY"
        timings = {tr.one("th").text(): tr.one("td", "num").text()
                   for tr in done.one("table", "timings").all("tr")}  # fmt: skip
        assert timings == {"fetch": "250 ms", "decode": "1.5 s", "model (at the actors)": "750 ms",
                           "write outputs (at the actors)": "125 ms", "total": "2.5 s"}  # fmt: skip
        finished = {dt.text(): dd.text() for dt, dd in zip(done.all("dt"), done.all("dd"),
                    strict=False)}  # fmt: skip
        # its previews: a strip of the frames with their boxes, from the output store
        [img] = done.one("div", "strip").all("img")
        assert img.attrs["src"] == "/ui/items/cam1-done/previews/00000000.jpg"
        shown_jpeg = browser.get(img.attrs["src"])
        assert shown_jpeg.status_code == 200 and shown_jpeg.headers["content-type"] == "image/jpeg"
        assert shown_jpeg.content == api.get("/v1/items/cam1-done/previews/00000000.jpg").content
        assert shown_jpeg.content[:3] == b"\xff\xd8\xff"  # a JPEG
        outputs_store = OutputStore(dash.settings.pipeline.out, dash.settings.source)
        video = outputs_store.video_of(known["manifest"])
        outputs_store.put(f"{video}/previews/x.jpg", b"\xff\xd8\xff not a preview's name")
        for bad in ("00000001.jpg", "..%2F_manifest.json", "x.jpg"):  # x.jpg is there
            assert api.get(f"/v1/items/cam1-done/previews/{bad}").status_code == 404, bad
        by = api.get("/v1/items/cam1-done").json()["finished_by"]
        assert by and finished.get("finished by") == by, (by, finished)

        # in flight: progress, owner, node; the lease 3 s from its end is marked
        inflight = _page(browser, "/ui/inflight")
        rows = {tr.one("td", "id").text(): tr for tr in inflight.one("tbody").all("tr")}
        assert sorted(rows) == sorted([known["busy"], known["late"]])
        cells = [td.text() for td in rows[known["busy"]].all("td")]
        assert cells[2] == "2/10" and cells[3:5] == ["decoder-g1-0", "node-ab12"]
        assert "expiring" not in rows[known["busy"]].attrs["class"]
        assert "expiring" in rows[known["late"]].attrs["class"]
        assert rows[known["late"]].one("span", "badge").text() == "expiring"
        assert "expiring" not in rows[known["busy"]].text()

        # dead letters: the classes and counts, one class's letters
        groups = api.get("/v1/dead/groups").json()
        letters = _page(browser, "/ui/dead")
        shown = {tr.attrs["data-class"]: _number(tr.all("td")[1].text())
                 for tr in letters.all("tr", **{"data-class": ""})}  # fmt: skip
        assert shown == groups["groups"] == {"corrupt": 3, "not_found": 1}
        assert f"{groups['total']} in all" in letters.one("h1").text()
        corrupt = _page(browser, "/ui/dead?class=corrupt")
        api_corrupt = api.get("/v1/dead", params={"class": "corrupt"}).json()["items"]
        assert _ids(corrupt) == [i["id"] for i in api_corrupt]
        assert sorted(_ids(corrupt)) == sorted(known["corrupt"])

        # workers: the decode actor's pid, node and host, the item it holds
        workers = _page(browser, "/ui/workers")
        [row] = workers.one("tbody").all("tr")
        cells = [td.text() for td in row.all("td")]
        assert cells[:5] == ["decoder-g1-0", "decoder", "node-ab12", "gpu-3", "4242"]
        assert cells[7] == known["busy"]

        # the script's refresh: the main part alone, the same as the page's
        for page in PAGES:
            whole = browser.get(f"/ui{page}")
            part = browser.get(f"/ui{page}", headers=FRAGMENT)
            assert part.status_code == whole.status_code == 200, (page, part.text[:300])
            assert "<html" not in part.text and "<header" not in part.text, page
            assert "<main" not in part.text and "<footer" not in part.text, page
            main = parse(whole.text).one("main")
            links = sorted(a.attrs["href"] for a in main.all("a"))
            assert sorted(a.attrs["href"] for a in parse(part.text).all("a")) == links, page
            assert part.headers["content-security-policy"] == CSP
        refreshed = parse(browser.get("/ui/", headers=FRAGMENT).text).all("a", "card")
        assert {a.attrs["data-count"]: a.one("span", "value").text() for a in refreshed} == cards


def _warnings(page: Node) -> list[str]:
    return [p.text() for p in page.all("p", "warn")]


def test_the_overview_warns_of_videos_queued_with_no_decode_actor_to_take_them(
    dash: Dash, valkey_client: Redis
) -> None:
    """Videos queued and no decode actor heartbeating within FRAMEFLEET_STALE_S: warned (an
    inference actor is no consumer, nor a decode actor gone stale); the workers page marks
    the stale actor, and only it. A fresh heartbeat ends both; with nothing queued there is
    nothing to warn of, decode actor or not."""
    served, queue, settings = dash.served, dash.queue, dash.settings
    stale_s = settings.coordinator.stale_s
    ids = queue.enqueue([f"s3://v/wait-{i}.mp4" for i in range(3)])
    # a decode actor last heard stale_s + 5 s ago: its heartbeat on a clock that far behind
    behind = ManualClock(int((time.time() - stale_s - 5) * 1000))
    Supervision(Queue(valkey_client, settings.queue, clock=behind)).heartbeat("decoder-g1-0")
    supervision = Supervision(queue)
    supervision.heartbeat("inference-g1-0")
    warning = "3 videos queued and no decode actor to take them"
    with _login(served) as browser:
        overview = _page(browser, "/ui/")
        assert _warnings(overview) == [warning]
        assert overview.one("p", "warn").attrs["role"] == "alert"
        assert "0 decode actors" in overview.text()
        workers = _page(browser, "/ui/workers")
        rows = {tr.all("td")[0].text(): tr for tr in workers.one("tbody").all("tr")}
        assert sorted(rows) == ["decoder-g1-0", "inference-g1-0"]
        stale = rows["decoder-g1-0"]
        assert "stale" in stale.attrs["class"].split()
        assert stale.one("span", "badge").text() == "stale"
        assert stale.all("td")[6].text().endswith("ago stale")
        fresh = rows["inference-g1-0"]
        assert "stale" not in fresh.attrs["class"].split() and not fresh.all("span", "badge")
        assert "stale after 10 s" in workers.one("h1").text()

        supervision.heartbeat("decoder-g1-0")  # it is back
        overview = _page(browser, "/ui/")
        assert _warnings(overview) == [] and "1 decode actor" in overview.text()
        assert not _page(browser, "/ui/workers").all("tr", "stale")

        supervision.leave("decoder-g1-0")  # gone, and nothing waits
        assert _warnings(_page(browser, "/ui/")) == [warning]
        for item_id in ids:
            assert queue.cancel(item_id)
        assert _warnings(_page(browser, "/ui/")) == []


def test_an_items_page_tells_its_history_and_labels_a_death_as_one(dash: Dash) -> None:
    """The item page's History: each claim, failure and its end, with why; a dead item's time
    is labelled dead, not done; an item done at its first claim says there is nothing more."""
    queue = dash.queue
    queue.enqueue(
        [NewItem(uri="s3://v/hist.mp4", id="hist"), NewItem(uri="s3://v/ok.mp4", id="ok")]
    )
    leases = {lease.id: lease for lease in queue.claim(2, "decoder-g1-0")}
    assert queue.release(leases["hist"], "worker stopping").ok
    assert queue.ack(leases["ok"], "s3://out/ok/").ok
    [lease] = queue.claim(1, "decoder-g1-1")
    assert queue.fail(lease, "moov atom not found", retryable=False, cls="not_a_video").ok
    with _login(dash.served) as browser:
        page = _page(browser, "/ui/items/hist")
        rows = [
            [c.text() for c in tr.all("th") + tr.all("td")[1:]]
            for tr in page.one("table", "history").all("tr")
        ]
        assert rows == [
            ["claimed", "by decoder-g1-0 (claim 1)"],
            ["released", "worker stopping (not charged)"],
            ["claimed", "by decoder-g1-1 (claim 2)"],
            ["dead", "not_a_video: failed (not retryable): moov atom not found"],
        ]
        labels = [dt.text() for dt in page.all("dt")]
        assert "dead" in labels and "done" not in labels
        clean = _page(browser, "/ui/items/ok")
        assert "done at its first claim: nothing else happened" in clean.text()
        assert "done" in [dt.text() for dt in clean.all("dt")]


def test_the_workers_page_shows_the_gpu_share_each_actor_has_not_the_setting(
    dash: Dash,
) -> None:
    """On a machine without a GPU the fleet's inference actors ask for none: the page shows
    the share each says it has (0), not FRAMEFLEET_GPUS_PER_INFERENCE's 0.25."""
    assert dash.settings.pipeline.gpus_per_inference == 0.25
    supervision = Supervision(dash.queue)
    supervision.heartbeat("inference-g1-0", info={"pid": 4343, "host": "cpu-1", "gpus": "0.0"})
    supervision.heartbeat("decoder-g1-0", info={"pid": 4242, "host": "cpu-1"})
    with _login(dash.served) as browser:
        rows = {
            tr.all("td")[0].text(): [td.text() for td in tr.all("td")]
            for tr in _page(browser, "/ui/workers").one("tbody").all("tr")
        }
        assert rows["inference-g1-0"][5] == "0.0" and rows["decoder-g1-0"][5] == "–"
    with dash.served.client() as api:
        [actor] = [w for w in api.get("/v1/workers").json() if w["kind"] == "inference"]
        assert actor["gpus"] == 0.0


def test_the_overview_warns_of_webhooks_failing_in_the_last_hour(
    dash: Dash, valkey_client: Redis
) -> None:
    """Failed webhook attempts (ops/webhooks.py records each) within the last hour: warned,
    with the latest's item, URL and error; older ones are not."""
    queue = dash.queue
    queue.outcome_group(GROUP)
    an_hour_ago = ManualClock(int((time.time() - 3700) * 1000))  # an old failure
    old = Queue(valkey_client, dash.settings.queue, clock=an_hour_ago)
    failure = {"id": "v1", "url": "https://hooks.example/ff", "attempt": 1, "gave_up": False}
    old.webhook_result(GROUP, "1-1", "retry", {**failure, "error": "HTTP 502"})
    with _login(dash.served) as browser:
        assert _warnings(_page(browser, "/ui/")) == []
        queue.webhook_result(GROUP, "1-1", "retry", {**failure, "error": "HTTP 500"})
        final = {**failure, "attempt": 2, "gave_up": True, "error": "HTTP 503 Unavailable"}
        queue.webhook_result(GROUP, "1-1", "gave_up", final)
        assert _warnings(_page(browser, "/ui/")) == [
            "Webhooks are failing: 2 failed attempts in the last hour (1 given up); the latest,"
            " for v1 to https://hooks.example/ff: HTTP 503 Unavailable"
        ]


def _panel(page: Node, title: str) -> dict[str, str]:
    """An overview panel's figures: each <dt>'s text to its <dd>'s."""
    [panel] = [d for d in page.all("div", "panel") if d.one("h2").text() == title]
    return {dt.text(): dd.text() for dt, dd in zip(panel.all("dt"), panel.all("dd"), strict=True)}


def test_the_overview_shows_the_coordinators_report_and_the_redis_server(
    dash: Dash, valkey_client: Redis
) -> None:
    """The Coordinator panel: the leader, its report's age and ok, the Ray GCS lost for how
    long (or up), nodes alive and draining, pools running and wanted, as the driver reports
    them; none reported, it says so. The Redis panel: GET /v1/redis's server, memory and
    its limit, eviction policy, AOF and its last write, uptime."""
    served, queue = dash.served, dash.queue
    supervision = Supervision(queue)
    lost = {"ok": False, "leader": "coordinator-a1", "gcs": False, "gcs_lost_for": 42.4,
            "error": "the GCS at 10.0.0.5:6379 is unreachable"}  # fmt: skip
    running = {"ok": True, "leader": "coordinator-a1", "gcs": True, "nodes": 3,
               "draining_nodes": 1, "decoders": 2, "decoders_wanted": 4, "ready_inference": 1,
               "inference": 2, "inference_wanted": 2}  # fmt: skip
    with _login(served) as browser, served.client() as api:
        none = _page(browser, "/ui/")
        assert "No leader has reported lately" in none.one("p", "bad").text()
        assert "Coordinator" in [h.text() for h in none.all("h2")]

        supervision.write_health({**lost, "at": time.time() - 125}, ttl_s=60)
        shown = _panel(_page(browser, "/ui/"), "Coordinator")
        assert shown["leader"] == "coordinator-a1"
        assert re.fullmatch(r"2 min 0[5-9] s old · not ok", shown["report"]), shown
        assert shown["Ray GCS"] == "lost for 42 s"
        assert shown["error"] == lost["error"]
        overview = _page(browser, "/ui/")
        assert any("lost the Ray head" in w for w in _warnings(overview)), _warnings(overview)

        supervision.write_health({**running, "at": time.time()}, ttl_s=60)
        overview = _page(browser, "/ui/")
        shown = _panel(overview, "Coordinator")
        assert re.fullmatch(r"\d+ ms old · ok|\d\.\d s old · ok", shown["report"]), shown
        assert shown["Ray GCS"] == "up" and shown["nodes"] == "3 alive, 1 draining"
        assert shown["decode actors"] == "2 running / 4 wanted"
        assert shown["inference actors"] == "1 ready, 2 running / 2 wanted"
        assert not [w for w in _warnings(overview) if "Ray" in w]
        # a CPU-bound fleet: fewer fit than the backlog wants, and the page says why
        bound = {**running, "inference": 1, "inference_wanted": 4, "inference_room": 1}
        supervision.write_health({**bound, "at": time.time()}, ttl_s=60)
        shown = _panel(_page(browser, "/ui/"), "Coordinator")
        assert shown["inference actors"] == (
            "1 ready, 1 running / 4 wanted (room for 1: the free CPUs and GPUs)"
        )
        supervision.write_health({**running, "at": time.time()}, ttl_s=60)
        overview = _page(browser, "/ui/")

        redis = api.get("/v1/redis").json()
        shown = _panel(overview, "Redis")
        assert shown["server"] == redis["server"] and redis["server"].startswith("Valkey ")
        assert redis["maxmemory"] == 0 and redis["maxmemory_policy"] == "noeviction"
        assert re.fullmatch(r"\d+(\.\d+)?[KMG] · noeviction", shown["memory"]), shown
        assert redis["appendfsync"] == "everysec"
        assert shown["AOF"] == "on, last write ok · fsync everysec"
        assert re.fullmatch(r"[\d.]+ (ms|s|min \d\d s|h \d\d min)", shown["up for"]), shown
        valkey_client.config_set("maxmemory", 1 << 30)
        try:
            shown = _panel(_page(browser, "/ui/"), "Redis")
            assert " of 1.0 GiB · noeviction" in shown["memory"], shown
        finally:
            valkey_client.config_set("maxmemory", 0)


def test_every_page_asks_its_script_for_a_refresh_every_5_s(
    dash: Dash, valkey_client: Redis
) -> None:
    """The pages' <main> carries the refresh's period for static/app.js (5 s, README); the
    login page, which has nothing to refresh, none. (A browser keeps to it: test_dashboard.)"""
    _populate(dash.queue, dash.settings, valkey_client)
    with _login(dash.served, READ) as browser:
        for page in PAGES:
            main = _page(browser, f"/ui{page}").one("main")
            assert main.attrs["data-refresh"] == "5", page
        script = [s.attrs["src"] for s in _page(browser, "/ui/").all("script")]
        assert script == ["/ui/static/app.js"]
    with dash.served.client(None) as anonymous:
        assert _page(anonymous, "/ui/login").one("main").attrs["data-refresh"] == "0"


# -- 4. security headers, and nothing from elsewhere --------------------------------------------


def _foreign(page: Node) -> list[str]:
    """What in a page is not of its own origin, or would need the CSP to allow inline code:
    a src, href or action that is not a path from the root or a fragment; a script with a
    body or without a src; a style attribute or element; an inline event handler."""
    found = []
    for node in page:
        for name in ("src", "href", "action", "formaction", "srcset", "poster", "data"):
            value = node.attrs.get(name)
            if value is not None and not (
                (value.startswith("/") and not value.startswith("//")) or value.startswith("#")
            ):
                found.append(f"<{node.tag} {name}={value!r}>")
        if node.tag == "script" and (node.text() or "src" not in node.attrs):
            found.append(f"<script> with a body: {node.text()[:80]!r}")
        if node.tag == "style" or "style" in node.attrs:
            found.append(f"<{node.tag} style>")
        found += [f"<{node.tag} {k}>" for k in node.attrs if k.startswith("on")]
    return found


def test_every_page_has_the_security_headers_and_only_its_own_assets(
    dash: Dash, valkey_client: Redis
) -> None:
    served = dash.served
    known = _populate(dash.queue, dash.settings, valkey_client)
    pages = [*PAGES, "/items?state=leased", f"/items/{known['corrupt'][0]}", "/items/cam%237%3Fx"]
    with _login(served) as browser:
        assets: set[str] = set()
        dry_run = {"action": "retry"}
        answers = [(p, 200, browser.get(f"/ui{p}")) for p in pages]
        answers += [
            ("login", 200, browser.get("/ui/login")),
            ("a page not there", 404, browser.get("/ui/nope")),
            ("an item not there", 404, browser.get("/ui/items/nope")),
            ("a GET of an action", 405, browser.get("/ui/queue/pause")),
            ("the dry run", 200, browser.post("/ui/dead/bulk", data=dry_run, headers=SAME)),
        ]
        for page, status, got in answers:
            assert got.status_code == status, (page, got.status_code, got.text[:300])
            assert got.headers["content-type"].startswith("text/html"), page
            headers = got.headers
            assert headers["content-security-policy"] == CSP, page
            assert "unsafe-inline" not in headers["content-security-policy"]
            assert (
                headers["x-frame-options"] == "DENY"
                and headers["x-content-type-options"] == "nosniff"
            )
            assert headers["cache-control"] == "no-store", page
            html = parse(got.text)
            assert _foreign(html) == [], page
            assert "http://" not in got.text and "https://" not in got.text, page
            assets |= {n.attrs["href"] for n in html.all("link")}
            assets |= {n.attrs["src"] for n in html.all("script")}
        assert assets == {"/ui/static/app.css", "/ui/static/icon.svg", "/ui/static/app.js"}
        for asset in sorted(assets):
            got = browser.get(asset)
            assert got.status_code == 200, asset
        # with a token, the API's own pages want it as a bearer: no link to them from here
        overview = _page(browser, "/ui/")
        assert not [
            a for a in overview.all("a") if a.attrs["href"] in ("/metrics", "/openapi.json")
        ]
        redirect = browser.post("/ui/queue/pause", headers=SAME)
        assert redirect.status_code == 303 and redirect.headers["x-frame-options"] == "DENY"


# -- 5. writes -------------------------------------------------------------------------------


def _state(api: httpx.Client) -> dict[str, Any]:
    """What a write would change: the counts, paused, the dead letters' classes, the audit
    log, every item's state."""
    status = api.get("/v1/queue").json()
    states = {
        i["id"]: i["state"]
        for state in ("queued", "delayed", "leased", "done", "dead")
        for i in api.get("/v1/items", params={"state": state, "limit": 1000}).json()["items"]
    }
    return {
        "counts": status["counts"],
        "paused": status["paused"],
        "groups": api.get("/v1/dead/groups").json(),
        "audit": api.get("/v1/audit").json(),
        "states": states,
    }


def _writes(queued: str, dead: str, cls: str, count: int) -> list[tuple[str, dict[str, str]]]:
    """Every write a page can post, each one that would change something."""
    return [
        ("/ui/queue/pause", {}),
        ("/ui/queue/resume", {}),
        (f"/ui/items/{queued}/cancel", {}),
        (f"/ui/dead/{dead}/retry", {}),
        (f"/ui/dead/{dead}/purge", {}),
        ("/ui/dead/bulk", {"action": "retry", "class": cls, "confirm": str(count), "reason": "x"}),
        ("/ui/dead/bulk", {"action": "purge", "confirm": str(count + 1), "reason": "x"}),
    ]


def test_writes_from_the_pages_change_the_queue_and_the_bulk_ones_are_confirmed_and_audited(
    dash: Dash,
) -> None:
    served, queue = dash.served, dash.queue
    corrupt = _kill(queue, 3, "corrupt", "cam1")
    missing = _kill(queue, 2, "not_found", "cam2")
    queue.enqueue([NewItem(uri=f"s3://v/w{i}.mp4", id=f"w-{i}") for i in range(3)])
    with _login(served) as browser, served.client() as api:
        overview = _page(browser, "/ui/")
        assert _write_forms(overview) == ["/ui/queue/pause"]
        paused = browser.post("/ui/queue/pause", headers=SAME)
        assert paused.status_code == 303 and paused.headers["location"] == "/ui/"
        assert api.get("/v1/queue").json()["paused"] is True
        overview = _page(browser, "/ui/")
        assert _write_forms(overview) == ["/ui/queue/resume"]
        assert "The queue is paused" in overview.one("section", "warnings").text()
        # by Origin alone (no Sec-Fetch-Site), this host's
        resumed = browser.post("/ui/queue/resume", headers={"Origin": served.url})
        assert resumed.status_code == 303 and api.get("/v1/queue").json()["paused"] is False

        assert "/ui/items/w-0/cancel" in _write_forms(_page(browser, "/ui/items/w-0"))
        cancelled = browser.post("/ui/items/w-0/cancel", headers=SAME)
        assert cancelled.status_code == 303 and cancelled.headers["location"] == "/ui/items/w-0"
        item = api.get("/v1/items/w-0").json()
        assert (item["state"], item["dead_class"]) == ("dead", "cancelled")
        again = browser.post("/ui/items/w-0/cancel", headers=SAME)  # dead now: a 409 page
        assert (
            again.status_code == 409 and "Changed meanwhile" in parse(again.text).one("h1").text()
        )

        before = api.get(f"/v1/items/{missing[0]}").json()
        assert f"/ui/dead/{missing[0]}/retry" in _write_forms(_page(browser, "/ui/dead"))
        retried = browser.post(f"/ui/dead/{missing[0]}/retry", headers=SAME)
        assert retried.status_code == 303
        after = api.get(f"/v1/items/{missing[0]}").json()
        assert (after["state"], after["id"], after["uri"]) == (
            "queued",
            before["id"],
            before["uri"],
        )
        purged = browser.post(f"/ui/dead/{missing[1]}/purge", headers=SAME)
        assert purged.status_code == 303 and purged.headers["location"] == "/ui/dead"
        assert api.get(f"/v1/items/{missing[1]}").status_code == 404

        # a bulk retry: first the count, then the count back with a reason
        unchanged = _state(api)
        dry = browser.post(
            "/ui/dead/bulk", data={"action": "retry", "class": "corrupt"}, headers=SAME
        )
        assert dry.status_code == 200, dry.text
        confirm = parse(dry.text)
        assert "Retry 3 dead letters of class corrupt" in confirm.one("h1").text()
        form = confirm.one("form", action="/ui/dead/bulk")
        fields = {i.attrs["name"]: i.attrs.get("value") for i in form.all("input")}
        token = fields.pop("token")
        assert token and len(token) == 16
        assert fields == {"action": "retry", "class": "corrupt", "confirm": "3", "reason": None}
        fields["token"] = token
        assert _state(api) == unchanged
        for bad, status in [
            ({"confirm": "2", "reason": "decoder fixed"}, 409),  # someone acted meanwhile
            ({"confirm": "3"}, 422),  # no reason
            ({"confirm": "3", "reason": "r" * 501}, 422),
            ({"confirm": "³", "reason": "decoder fixed"}, 422),  # a digit int() refuses
            ({"confirm": "three", "reason": "decoder fixed"}, 422),
            ({"token": "0" * 16, "reason": "decoder fixed"}, 409),  # another set of 3
            ({"token": "", "reason": "decoder fixed"}, 422),  # a confirm without its token
        ]:
            got = browser.post("/ui/dead/bulk", data={**fields, **bad}, headers=SAME)
            assert got.status_code == status, (bad, got.status_code, got.text[:300])
            assert got.headers["content-type"].startswith("text/html"), bad
            assert _state(api) == unchanged, bad
        done = browser.post(
            "/ui/dead/bulk", data={**fields, "reason": "decoder fixed in 1.4"}, headers=SAME
        )
        assert done.status_code == 303 and done.headers["location"] == "/ui/dead"
        for item_id in corrupt:
            item = api.get(f"/v1/items/{item_id}").json()
            assert item["state"] == "queued" and item["uri"].startswith("s3://v/cam1-")
        entry = api.get("/v1/audit").json()[0]
        assert {k: entry.get(k) for k in ("who", "action", "class", "count", "why")} == {
            "who": "write",
            "action": "retry",
            "class": "corrupt",
            "count": 3,
            "why": "decoder fixed in 1.4",
        }
        audit = _page(browser, "/ui/dead").one("table", "audit").one("tbody").all("tr")[0]
        assert [td.text() for td in audit.all("td")][1:] == [
            "write", "retry", "corrupt", "3", "decoder fixed in 1.4"
        ]  # fmt: skip
        assert api.get("/v1/dead/groups").json() == {"groups": {"cancelled": 1}, "total": 1}


def test_an_id_with_slashes_has_its_page_links_and_actions(dash: Dash) -> None:
    served, queue = dash.served, dash.queue
    slashed = "cam1/2026-12-01/clipé#1.mp4"
    queue.enqueue([NewItem(uri="s3://v/cam1/clip.mp4", id=slashed)])
    href = "/ui/items/" + quote(slashed)  # as the pages write it: the slashes as they are
    with _login(served) as browser, served.client() as api:
        listed = _page(browser, "/ui/items?state=queued")
        assert [a.attrs["href"] for td in listed.all("td", "id") for a in td.all("a")] == [href]
        page = _page(browser, href)
        assert slashed in page.one("h1").text()
        assert _write_forms(page) == [href + "/cancel"]
        cancelled = browser.post(href + "/cancel", headers=SAME)
        assert cancelled.status_code == 303 and cancelled.headers["location"] == href
        assert api.get("/v1/items/" + quote(slashed)).json()["state"] == "dead"
        assert f"/ui/dead/{quote(slashed)}/retry" in _write_forms(_page(browser, "/ui/dead"))
        retried = browser.post(f"/ui/dead/{quote(slashed)}/retry", headers=SAME)
        assert retried.status_code == 303 and retried.headers["location"] == href
        assert api.get("/v1/items/" + quote(slashed)).json()["state"] == "queued"


def test_a_write_from_another_site_or_from_nowhere_is_refused(dash: Dash) -> None:
    """Sec-Fetch-Site cross-site or same-site, an Origin of another host, or neither header
    (a browser always sends one of them on a form post): 403, and nothing changes."""
    served, queue = dash.served, dash.queue
    [dead] = _kill(queue, 1, "corrupt", "cam1")
    queue.enqueue([NewItem(uri="s3://v/q.mp4", id="q-1")])
    with _login(served) as browser, served.client() as api:
        unchanged = _state(api)
        for headers in (
            {"Sec-Fetch-Site": "cross-site"},
            {"Sec-Fetch-Site": "same-site"},
            {"Origin": "http://evil.example"},
            {"Origin": "null"},
            {},
        ):
            for path, data in _writes("q-1", dead, "corrupt", 1):
                got = browser.post(path, data=data, headers=headers)
                assert got.status_code == 403, (path, headers, got.status_code)
                assert "Refused" in parse(got.text).one("h1").text()
            assert _state(api) == unchanged, headers


def test_a_write_waits_for_redis_in_a_thread_not_on_the_event_loop(
    dash: Dash, valkey_client: Redis
) -> None:
    """With Redis holding every write back (CLIENT PAUSE WRITE), a pause from the page waits
    for it, and a request that comes meanwhile is answered first."""
    served = dash.served
    answers: list[int] = []
    with _login(served) as browser, served.client(None) as other:

        def pause() -> None:
            answers.append(browser.post("/ui/queue/pause", headers=SAME).status_code)

        def blocked() -> int:
            return int(valkey_client.info("clients")["blocked_clients"])

        valkey_client.client_pause(30_000, all=False)
        try:
            before = blocked()
            thread = threading.Thread(target=pause)
            thread.start()
            wait_for(lambda: blocked() > before, 10, "the pause's write held by Redis", 0.02)
            assert other.get("/healthz").status_code == 200
            assert thread.is_alive() and not answers, "the pause did not wait for Redis"
        finally:
            valkey_client.client_unpause()
        thread.join(10)
        assert answers == [303]
        assert dash.queue.stats().paused


# -- 6. read-only ----------------------------------------------------------------------------


def test_a_read_session_and_read_only_mode_show_no_writes_and_refuse_them_with_405(
    tmp_path: Path, valkey_client: Redis
) -> None:
    settings = _ui_settings(tmp_path, "ui-read-only")
    queue = Queue(valkey_client, settings.queue)
    [dead] = _kill(queue, 2, "corrupt", "cam1")[:1]
    queue.enqueue([NewItem(uri="s3://v/q.mp4", id="q-1")])
    read_only = replace(settings, api=replace(settings.api, read_only=True))
    for config, token in ((settings, READ), (read_only, WRITE)):
        with Served(config, queue) as served, _login(served, token) as browser:
            with served.client() as api:
                unchanged = _state(api)
            for page in ("/ui/", "/ui/dead", "/ui/items/q-1", f"/ui/items/{dead}"):
                shown = _page(browser, page)
                assert _write_forms(shown) == [], (token, page)
                assert not shown.all("button", "danger"), (token, page)
            assert "read-only" in [b.text() for b in shown.all("span", "badge")]
            for path, data in _writes("q-1", dead, "corrupt", 2):
                got = browser.post(path, data=data, headers=SAME)
                assert got.status_code == 405, (token, path, got.status_code)
                assert "Not allowed" in parse(got.text).one("h1").text()
            with served.client(READ) as api:
                assert _state(api) == unchanged, token


# -- 7. under a root path --------------------------------------------------------------------


def test_under_a_root_path_links_assets_redirects_and_the_cookie_carry_it(
    tmp_path: Path, valkey_client: Redis
) -> None:
    """FRAMEFLEET_API_ROOT_PATH=/ff behind a proxy that keeps the prefix in the path (as
    `framefleet api` says where it serves: the host's URL and the root path)."""
    settings = _ui_settings(tmp_path, "ui-root", root_path="/ff")
    queue = Queue(valkey_client, settings.queue)
    [dead] = _kill(queue, 1, "corrupt", "cam1")
    with Served(settings, queue) as served, served.client(None) as browser:
        front = browser.get("/ff/")
        assert front.status_code == 303 and front.headers["location"] == "/ff/ui/"
        assert browser.get("/ff/ui").headers["location"] == "/ff/ui/"
        asked = browser.get("/ff/ui/items?state=dead")
        assert asked.status_code == 303
        assert asked.headers["location"].startswith("/ff/ui/login?")
        assert _next_of(asked.headers["location"]) == "/items?state=dead"
        login = _page(browser, asked.headers["location"])
        assert login.one("form", method="post").attrs["action"] == "/ff/ui/login"
        got = browser.post(
            "/ff/ui/login", data={"token": WRITE, "next": "/items?state=dead"}, headers=SAME
        )
        assert got.status_code == 303 and got.headers["location"] == "/ff/ui/items?state=dead"
        assert "Path=/ff/ui/" in got.headers["set-cookie"]
        for page in ("/ff/ui/", "/ff/ui/items?state=dead", f"/ff/ui/items/{dead}", "/ff/ui/dead"):
            html = _page(browser, page)  # the cookie goes back under /ff/ui/
            refs = [n.attrs[k] for n in html for k in ("href", "src", "action") if k in n.attrs]
            refs = [r for r in refs if r != "#"]
            assert refs and all(r.startswith("/ff/") for r in refs), (page, refs)
            assert "/ff/ui/static/app.css" in refs and "/ff/ui/static/app.js" in refs
        for asset in ("app.css", "app.js", "icon.svg"):
            assert browser.get(f"/ff/ui/static/{asset}").status_code == 200, asset
        assert _ids(_page(browser, "/ff/ui/dead")) == [dead]
        paused = browser.post("/ff/ui/queue/pause", headers=SAME)
        assert paused.status_code == 303 and paused.headers["location"] == "/ff/ui/"
        retried = browser.post(f"/ff/ui/dead/{dead}/retry", headers=SAME)
        assert retried.headers["location"] == f"/ff/ui/items/{dead}"
        with served.client() as api:  # the API under the prefix, with its token
            status = api.get("/ff/v1/queue").json()
            assert status["paused"] is True and status["counts"]["queued"] == 1
        logout = browser.post("/ff/ui/logout", headers=SAME)
        assert logout.headers["location"] == "/ff/ui/login"
        assert "Path=/ff/ui/" in logout.headers["set-cookie"] and not browser.cookies
        assert browser.get("/ff/ui/").status_code == 303


def test_behind_a_proxy_that_strips_the_prefix_and_ends_tls(
    tmp_path: Path, valkey_client: Redis
) -> None:
    """A proxy may take /ff off the path (nginx's `proxy_pass http://api/;`): the routes
    still match and the links still carry /ff. One that ends TLS says so in X-Forwarded-Proto:
    believed from FRAMEFLEET_API_FORWARDED_ALLOW_IPS (loopback by default), the cookie is then
    Secure; from another address the header is not believed."""
    https = {**SAME, "X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7"}
    login = {"token": WRITE, "next": "/dead"}
    settings = _ui_settings(tmp_path, "ui-strip", root_path="/ff")
    queue = Queue(valkey_client, settings.queue)
    [dead] = _kill(queue, 1, "corrupt", "cam1")
    with Served(settings, queue) as served, served.client(None) as browser:
        plain = browser.post("/ui/login", data=login, headers=SAME)  # as the proxy sends it
        assert plain.status_code == 303 and plain.headers["location"] == "/ff/ui/dead"
        assert "Path=/ff/ui/" in plain.headers["set-cookie"]
        assert "secure" not in plain.headers["set-cookie"].lower()
        # the browser sends its cookie to /ff/ui/dead, which reaches us as /ui/dead
        cookie = {"Cookie": plain.headers["set-cookie"].split(";")[0]}
        got = browser.get("/ui/dead", headers=cookie)
        assert got.status_code == 200, got.text[:300]
        html = parse(got.text)
        refs = [n.attrs[k] for n in html for k in ("href", "src", "action") if k in n.attrs]
        assert refs and all(r.startswith("/ff/") for r in refs if r != "#"), refs
        assert _ids(html) == [dead] and browser.get("/ui/static/app.js").status_code == 200
        tls = browser.post("/ui/login", data=login, headers=https)
        assert tls.status_code == 303 and "; secure" in tls.headers["set-cookie"].lower()
        with served.client() as api:
            assert api.get("/v1/queue").json()["counts"]["dead"] == 1
    untrusted = replace(settings, api=replace(settings.api, forwarded_allow_ips="192.0.2.1"))
    with Served(untrusted, queue) as served, served.client(None) as browser:
        tls = browser.post("/ui/login", data=login, headers=https)
        assert tls.status_code == 303 and "secure" not in tls.headers["set-cookie"].lower()


# -- 8. a page's cost ------------------------------------------------------------------------


def test_a_page_costs_the_same_redis_commands_with_100_or_20000_items_queued(
    tmp_path: Path, valkey_client: Redis
) -> None:
    """O(page): the overview, a page of queued items and the dead letters run the same Redis
    commands (MONITOR shows each one a script runs) with 100 items queued and with 20,000."""
    settings = _ui_settings(tmp_path, "ui-cost")
    queue = Queue(valkey_client, settings.queue)
    _kill(queue, 3, "corrupt", "cam1")
    queue.enqueue([f"s3://v/{i}.mp4" for i in range(100)])
    pages = ("/ui/", "/ui/items?state=queued", "/ui/dead")

    def commands(browser: httpx.Client) -> dict[str, list[str]]:
        found = {}
        for page in pages:
            got, seen = monitored(valkey_client, lambda: browser.get(page))  # noqa: B023
            assert got.status_code == 200, (page, got.text[:300])
            found[page] = _work(seen)
        return found

    with Served(settings, queue) as served, _login(served) as browser:
        commands(browser)  # the scripts loaded, the connections open
        small = commands(browser)
        queue.enqueue([f"s3://v/more-{i}.mp4" for i in range(20_000 - 100)])
        big = commands(browser)
        cards = _page(browser, "/ui/").all("a", "card")
        queued = {a.attrs["data-count"]: a.one("span", "value").text() for a in cards}["queued"]
        assert queued == "20,000"
        assert len(_ids(_page(browser, "/ui/items?state=queued"))) == 50
    for page in pages:
        assert big[page] == small[page], page
        assert len(big[page]) < 200, (page, len(big[page]), big[page])
