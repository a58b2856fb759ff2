"""The health dashboard (`/ui/`): server-rendered pages (Jinja2) over the API's own routes.

Every figure on a page comes from a function of ops/api.py, the one an HTTP client calls
(queue_counts, list_items, dead_groups, ...): the page reads Redis by no other path. A
little script (static/app.js) refreshes a page's main part every few seconds while the tab
is visible and asks before each write; the throughput chart is SVG drawn here. Every asset
is served from the package; the Content-Security-Policy allows nothing else and no inline
script or style.

Login is the API token, once, for a session cookie (ops/session.py). A write needs the
write token's session, comes from one of these pages (Sec-Fetch-Site / Origin), and is
refused with 405 in read-only mode or with the read token's session.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, PackageLoader, select_autoescape
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from framefleet.queue import Queue, State
from framefleet.settings import Settings

from . import api, auth, schemas, session
from .units import duration

PREFIX = "/ui"
REFRESH_S = 5
NAV = (("/", "Overview"), ("/items", "Items"), ("/inflight", "In flight"),
       ("/dead", "Dead letters"), ("/workers", "Workers"))  # fmt: skip
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
STAGE_NAMES = {  # a manifest's timings (workers/pipeline.py), in words, in their order
    "fetch": "fetch",
    "open": "open",
    "decode": "decode",
    "decode_wait": "wait for the decoder",
    "submit": "hand to inference",
    "wait": "wait for inference",
    "infer": "model (at the actors)",
    "write": "write outputs (at the actors)",
}
EXPIRING = 0.25  # a lease with less than this share of lease_s left is marked

router = APIRouter(prefix=PREFIX, include_in_schema=False)
env = Environment(
    loader=PackageLoader("framefleet.ops", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def static_files() -> StaticFiles:
    return StaticFiles(directory=str(resources.files("framefleet.ops") / "static"))


# -- formatting ------------------------------------------------------------------------------


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # unreachable


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _relative(ts: float, now: float) -> str:
    delta = now - ts
    if abs(delta) < 5:
        return "just now"
    return f"{duration(delta)} ago" if delta > 0 else f"in {duration(-delta)}"


def chart(minutes: list[dict[str, Any]]) -> str:
    """Done and dead a minute as stacked SVG bars, newest at the right."""
    width, height, top = 600, 140, 14
    peak = max((m["done"] + m["dead"] for m in minutes), default=0)
    scale = (height - top) / peak if peak else 0
    step = width / max(1, len(minutes))
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height + 16}" preserveAspectRatio="none"'
        f' role="img" aria-label="videos done and dead a minute over the last hour">'
    ]
    for i, m in enumerate(minutes):
        x, w = i * step + 1, max(1.0, step - 2)
        done_h, dead_h = m["done"] * scale, m["dead"] * scale
        when = _iso(m["at"])
        if done_h:
            parts.append(
                f'<rect class="done" x="{x:.1f}" y="{height - done_h:.1f}" width="{w:.1f}"'
                f' height="{done_h:.1f}"><title>{when}: {m["done"]} done</title></rect>'
            )
        if dead_h:
            parts.append(
                f'<rect class="dead" x="{x:.1f}" y="{height - done_h - dead_h:.1f}"'
                f' width="{w:.1f}" height="{dead_h:.1f}"><title>{when}: {m["dead"]} dead'
                "</title></rect>"
            )
    parts.append(f'<line class="axis" x1="0" y1="{height}" x2="{width}" y2="{height}"/>')
    parts.append(f'<text x="2" y="10">{peak}/min</text>')
    parts.append(f'<text x="2" y="{height + 13}">60 min ago</text>')
    parts.append(f'<text x="{width - 2}" y="{height + 13}" text-anchor="end">now</text>')
    parts.append("</svg>")
    return "".join(parts)


# -- rendering -------------------------------------------------------------------------------


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def _can_write(request: Request, role: str | None) -> bool:
    settings: Settings = request.app.state.settings
    return role in ("write", "local") and not settings.api.read_only


def render(
    request: Request, name: str, role: str | None, status: int = 200, **ctx: Any
) -> Response:
    """A page, or only its main part for the script's refresh (X-Framefleet-Fragment)."""
    root, now = _root(request), request.app.state.clock()
    settings: Settings = request.app.state.settings
    values = {
        "root": root,
        "url": lambda path: f"{root}{PREFIX}{path}",
        "static": lambda path: f"{root}{PREFIX}/static/{path}",
        "iso": _iso,
        "relative": lambda ts: _relative(ts, now),
        "duration": duration,
        "bytes": _bytes,
        "nav": NAV,
        "page": ctx.pop("page", None),
        "role": role,
        "can_write": _can_write(request, role),
        "queue_name": settings.queue.name,
        "refresh": REFRESH_S if role else 0,
        "now_iso": _iso(now),
        "now_text": _iso(now).replace("T", " "),
        "title": ctx.pop("title", "framefleet"),
        "status": status,
        # the main part alone (base.html): rendered whole, so that the macros a page
        # imports at its top are defined in its main block too
        "fragment": bool(request.headers.get("x-framefleet-fragment")),
        **ctx,
    }
    headers = {**HEADERS, "X-Framefleet-Updated": values["now_iso"]}
    return HTMLResponse(env.get_template(name).render(values), status, headers=headers)


class LoginNeeded(Exception):
    def __init__(self, request: Request) -> None:
        self.request = request


def _reader(request: Request) -> str:
    """The caller's role, or a redirect to the login page."""
    role = session.role(request)
    if role is None:
        raise LoginNeeded(request)
    return role


async def _writer(request: Request) -> tuple[str, dict[str, str]]:
    """The caller's name for the audit log and the form, for a write from our own pages:
    405 in read-only mode or for a read-only session, 403 from elsewhere."""
    role = _reader(request)
    if not _can_write(request, role):
        raise HTTPException(405, "read-only: this action is refused")
    if not auth.same_origin(request):
        raise HTTPException(403, "a write must come from the dashboard's own pages")
    form = await request.form()
    return role, {k: str(v) for k, v in form.items()}


def _queue(request: Request) -> Queue:
    queue: Queue = request.app.state.queue
    return queue


def _back(request: Request, path: str) -> RedirectResponse:
    return RedirectResponse(f"{_root(request)}{PREFIX}{path}", 303, headers=HEADERS)


# -- pages -----------------------------------------------------------------------------------


@router.get("")
def home(request: Request) -> RedirectResponse:
    return _back(request, "/")


@router.get("/")
def overview(request: Request) -> Response:
    role = _reader(request)
    queue, settings = _queue(request), request.app.state.settings
    q = api.queue_counts(queue, settings)
    health = api.health(queue, request)
    history = api.history(queue, 60)
    redis = api.redis_info(queue)
    workers = api.workers(queue)
    stale = settings.coordinator.stale_s
    consumers = sum(w.kind == "decoder" and w.heartbeat_age_s < stale for w in workers)
    warnings = []
    if q.counts.get("queued", 0) and not consumers:
        warnings.append(f"{q.counts['queued']:,} videos queued and no decode actor to take them")
    if q.paused:
        warnings.append("The queue is paused: nothing new is claimed.")
    memory = queue.memory() if redis.get("full") else None
    if memory is not None and memory.full:
        warnings.append(f"Redis is {api.full_text(memory)}.")
    hour_ago = queue.now_ms() - 3_600_000
    failing = [f for f in queue.webhook_failures(100) if f.get("at", 0) >= hour_ago]
    if failing:
        last, given_up = failing[0], sum(bool(f.get("gave_up")) for f in failing)
        warnings.append(
            f"Webhooks are failing: {len(failing)} failed attempts in the last hour"
            f" ({given_up} given up); the latest, for {last.get('id')} to {last.get('url')}:"
            f" {last.get('error')}"
        )
    report = health["report"]
    if report and report.get("gcs") is False:
        warnings.append(
            "The coordinator has lost the Ray head (GCS): the fleet resumes when it is back"
        )
    return render(
        request, "overview.html", role, page="/", title="Overview", q=q, health=health,
        chart=chart(history["minutes"]), redis=redis, consumers=consumers, warnings=warnings,
    )  # fmt: skip


@router.get("/items")
def items(
    request: Request, state: str = "queued", cursor: str | None = None, q: str | None = None
) -> Response:
    role = _reader(request)
    queue = _queue(request)
    try:
        chosen = State(state)
    except ValueError:
        raise HTTPException(404, f"no state {state!r}") from None
    search = (q or "").strip()[:256] or None
    if cursor is not None and not api.CURSOR_RE.fullmatch(cursor):
        raise HTTPException(404, "not a cursor")
    if search:
        rows = api.list_items(queue, request, state=None, limit=50, cursor=None, q=search)
    else:
        rows = api.list_items(queue, request, state=chosen, limit=50, cursor=cursor, q=None)
    counts = api.queue_counts(queue, request.app.state.settings).counts
    return render(
        request, "items.html", role, page="/items", title=f"Items: {search or chosen.value}",
        states=[s.value for s in State], state=chosen.value, counts=counts, cursor=cursor,
        search=search, rows=rows,
    )  # fmt: skip


@router.get("/items/{item_id:path}/manifest")
def manifest(request: Request, item_id: str) -> Response:
    _reader(request)
    body = api.get_manifest(item_id, _queue(request), request.app.state.settings)
    return Response(api.json_text(body), media_type="application/json", headers=HEADERS)


@router.get("/items/{item_id:path}/previews/{name}")
def preview(request: Request, item_id: str, name: str) -> Response:
    _reader(request)
    return api.get_preview(item_id, name, _queue(request), request.app.state.settings)


@router.get("/items/{item_id:path}")
def item(request: Request, item_id: str) -> Response:
    role = _reader(request)
    queue = _queue(request)
    found = api.get_item(item_id, queue, request)
    timings: list[tuple[str, float]] = []
    manifest: dict[str, Any] = {}
    if found.result:
        try:
            manifest = api.get_manifest(item_id, queue, request.app.state.settings)
        except HTTPException:  # not in this API's output store
            manifest = {}
        laps = dict(manifest.get("timings_s") or {}) | dict(manifest.get("inference_s") or {})
        timings = [(name, float(laps[k])) for k, name in STAGE_NAMES.items() if k in laps]
        if "total" in laps:
            timings.append(("total", float(laps["total"])))
    source = {k: v for k, v in found.meta.items() if k.startswith(("s3_", "bucket", "key",
              "version", "etag", "sequencer", "event"))}  # fmt: skip
    return render(
        request, "item.html", role, page="/items", title=found.id, i=found, timings=timings,
        timings_max=max((s for _, s in timings), default=0), source=source or found.meta,
        previews=manifest.get("previews") or [], detections=manifest.get("rows", 0),
        frames=manifest.get("frames", 0),
    )  # fmt: skip


@router.get("/inflight")
def inflight(request: Request) -> Response:
    role = _reader(request)
    queue, settings = _queue(request), request.app.state.settings
    page = api.list_items(queue, request, state=State.LEASED, limit=500, cursor=None, q=None)
    nodes = {w.name: w.node for w in api.workers(queue)}
    lease_s = settings.queue.lease_s
    rows = []
    for found in page.items:
        left = found.lease_left_s
        rows.append(
            {
                "item": found,
                "node": nodes.get(found.owner or ""),
                "left_s": None if left is None else max(0.0, left),
                "expiring": left is not None and left < EXPIRING * lease_s,
            }
        )
    return render(request, "inflight.html", role, page="/inflight", title="In flight", leased=rows)


@router.get("/dead")
def dead(request: Request, cursor: str | None = None) -> Response:
    role = _reader(request)
    queue = _queue(request)
    cls = request.query_params.get("class") or None
    if cursor is not None and not api.CURSOR_RE.fullmatch(cursor):
        raise HTTPException(404, "not a cursor")
    page = api.dead(queue, request, limit=50, cursor=cursor, dead_class=cls)
    return render(
        request, "dead.html", role, page="/dead", title="Dead letters",
        groups=api.dead_groups(queue), cls=cls, letters=page.items, next_cursor=page.cursor,
        audit=api.audit(queue, limit=20),
    )  # fmt: skip


@router.get("/workers")
def workers(request: Request) -> Response:
    role = _reader(request)
    settings: Settings = request.app.state.settings
    stale = settings.coordinator.stale_s
    rows = []
    for w in api.workers(_queue(request)):
        rows.append({**w.model_dump(), "gpu": w.gpus, "stale": w.heartbeat_age_s > stale})
    return render(request, "workers.html", role, page="/workers", title="Workers", workers=rows,
                  stale_s=stale)  # fmt: skip


# -- login -----------------------------------------------------------------------------------


def _next(target: str | None) -> str:
    """A page of ours to go back to after the login (never another site)."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return "/"
    parts = urlsplit(target)
    return parts.path + (f"?{parts.query}" if parts.query else "")


@router.get("/login")
def login_page(request: Request, next: str | None = None) -> Response:
    return render(request, "login.html", None, title="Log in", next=_next(next), page=None)


@router.post("/login")
async def login(request: Request) -> Response:
    if not auth.same_origin(request):
        raise HTTPException(403, "log in from the login page")
    form = await request.form()
    given, target = str(form.get("token", "")), _next(str(form.get("next", "")))
    found = session.login(request.app.state.tokens, given)
    if found is None:
        # slows guessing a little (the token's length does the rest), without holding up
        # the event loop: every other request goes on meanwhile
        await asyncio.sleep(0.5)
        return render(request, "login.html", None, status=401, title="Log in",
                      error="That token is not known here.", next=target)  # fmt: skip
    _, cookie = found
    answer = _back(request, target)
    answer.set_cookie(
        session.COOKIE, cookie, max_age=session.SESSION_S, path=f"{_root(request)}{PREFIX}/",
        httponly=True, samesite="strict", secure=request.url.scheme == "https",
    )  # fmt: skip
    return answer


@router.post("/logout")
def logout(request: Request) -> Response:
    answer = _back(request, "/login")
    answer.delete_cookie(session.COOKIE, path=f"{_root(request)}{PREFIX}/")
    return answer


# -- actions ---------------------------------------------------------------------------------
# Each reads its form here, then calls the queue in the thread pool (as the API's plain-def
# routes are): a bulk action on many dead letters, or a Redis that is slow to answer, never
# holds up the event loop and every other request with it.


@router.post("/queue/pause")
async def pause(request: Request) -> Response:
    who, _ = await _writer(request)
    await run_in_threadpool(api.pause, _queue(request), who)
    return _back(request, "/")


@router.post("/queue/resume")
async def resume(request: Request) -> Response:
    who, _ = await _writer(request)
    await run_in_threadpool(api.resume, _queue(request), who)
    return _back(request, "/")


@router.post("/items/{item_id:path}/cancel")
async def cancel(request: Request, item_id: str) -> Response:
    who, _ = await _writer(request)
    await run_in_threadpool(api.cancel, item_id, _queue(request), who)
    return _back(request, f"/items/{quote(item_id)}")


@router.post("/dead/{item_id:path}/retry")
async def retry_one(request: Request, item_id: str) -> Response:
    who, _ = await _writer(request)
    await run_in_threadpool(api.retry_one, item_id, _queue(request), who)
    return _back(request, f"/items/{quote(item_id)}")


@router.post("/dead/{item_id:path}/purge")
async def purge_one(request: Request, item_id: str) -> Response:
    who, _ = await _writer(request)
    await run_in_threadpool(api.purge_one, item_id, _queue(request), who)
    return _back(request, "/dead")


@router.post("/dead/bulk")
async def bulk(request: Request) -> Response:
    """Without `confirm`: the page that shows the count and asks for a reason; with it,
    the action, through the API's own dry-run-then-confirm check."""
    who, form = await _writer(request)
    verb = form.get("action")
    if verb not in ("retry", "purge"):
        raise HTTPException(422, "action must be retry or purge")
    cls = form.get("class") or None
    confirm = form.get("confirm") or None
    if confirm is not None and not (confirm.isascii() and confirm.isdigit()):
        raise HTTPException(422, "confirm must be the count the dry run showed")
    try:
        body = schemas.Bulk.model_validate(
            {"class": cls, "confirm": None if confirm is None else int(confirm),
             "token": form.get("token") or None, "reason": form.get("reason") or None}
        )  # fmt: skip
    except ValidationError as exc:  # a reason over 500 characters, a class not UTF-8
        why = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise HTTPException(422, why) from None
    queue = _queue(request)
    act = queue.retry_dead if verb == "retry" else queue.purge_dead
    answer = await run_in_threadpool(api.bulk, queue, who, verb, body, act)
    if answer["dry_run"]:
        return render(request, "confirm.html", who, page="/dead", title=f"{verb} dead letters",
                      verb=verb, cls=cls, count=answer["count"], token=answer["token"])  # fmt: skip
    return _back(request, "/dead")


def pages_error(request: Request, exc: Exception) -> Response:
    """Errors on a page as a page (the API's routes keep their JSON)."""
    if isinstance(exc, LoginNeeded):
        # the page to come back to (as it was asked for: an id's "#" or "?" quoted); after
        # a write (a POST) the overview, not a GET of the action's path
        target = request.url.path.removeprefix(_root(request) + PREFIX) or "/"
        if request.url.query:
            target += f"?{request.url.query}"
        if request.method not in ("GET", "HEAD"):
            target = "/"
        if request.headers.get("x-framefleet-fragment"):
            return Response(status_code=401, headers=HEADERS)
        return _back(request, f"/login?next={quote(target)}")
    status, detail = 500, "internal error"
    if isinstance(exc, StarletteHTTPException):  # the router's 404 and 405 as well
        status, detail = exc.status_code, exc.detail
    text = detail if isinstance(detail, str) else str(detail.get("error", detail))
    return render(request, "message.html", session.role(request), status=status,
                  title=str(status), heading={404: "Not found", 405: "Not allowed", 403: "Refused",
                  409: "Changed meanwhile"}.get(status, "Error"), text=text,
                  back=f"{_root(request)}{PREFIX}/")  # fmt: skip


def is_page(request: Request) -> bool:
    path = request.url.path.removeprefix(_root(request))
    return path == PREFIX or path.startswith(PREFIX + "/")
