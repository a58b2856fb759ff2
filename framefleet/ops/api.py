"""The HTTP API (`framefleet api`): FastAPI on uvicorn, on top of the queue's public API.

Every route but /healthz wants a bearer token (ops/auth.py); writes want the write token.
Input is checked before anything is written: a batch with one bad item writes nothing and
names it (422), a local path outside FRAMEFLEET_ALLOWED_ROOTS and an http(s) URL that
names a private, loopback or link-local address are refused at enqueue by the policy the
workers apply at fetch time. Here: items, the queue, dead letters (grouped by class, bulk
actions with a dry run), the audit log, workers, health, S3 event notifications and
Prometheus metrics (ops/metrics.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, unquote, urlparse

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StrictStr
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route

from framefleet.netpolicy import URLRefused, check_url
from framefleet.queue import Item, NewItem, Queue, State, Supervision
from framefleet.queue.model import InvalidItem
from framefleet.queue.queue import FIND_CAP
from framefleet.settings import Settings

from .auth import TokenGate, Tokens, may_read, may_write
from .metrics import registry as metrics_registry
from .s3events import records

MAX_BATCH = 10_000
log = logging.getLogger(__name__)
MetaValue = StrictStr | StrictInt | float | bool | None


def _utf8(text: str) -> str:
    try:
        text.encode()
    except UnicodeEncodeError:  # JSON may carry a lone surrogate ("\ud800"); Redis may not
        raise ValueError("not valid UTF-8 (a lone surrogate)") from None
    return text


Utf8 = Annotated[StrictStr, AfterValidator(_utf8)]


class ItemIn(BaseModel):
    """One video to process, by reference (the fields of Queue.enqueue)."""

    model_config = ConfigDict(extra="forbid")
    uri: StrictStr
    id: StrictStr | None = None
    priority: StrictInt | StrictStr = 5
    etag: StrictStr | None = None
    size: StrictInt | None = None
    meta: dict[str, MetaValue] | None = None


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[ItemIn] = Field(min_length=1, max_length=MAX_BATCH)


class Existing(BaseModel):
    id: str
    state: str | None


class Enqueued(BaseModel):
    new: list[str]
    existing: list[Existing]


class ItemOut(BaseModel):
    id: str
    uri: str
    state: str
    priority: int
    attempts: int
    deliveries: int
    chunks_done: int
    chunks_total: int | None
    chunks_expected: int | None  # what the container promises, until chunks_total is known
    owner: str | None
    finished_by: str | None  # the worker that acknowledged it, once done
    lease_age_s: float | None
    lease_left_s: float | None  # until the lease runs out unless renewed
    last_error: str | None
    dead_reason: str | None
    dead_class: str | None
    result: str | None
    created_at: float | None
    claimed_at: float | None
    done_at: float | None
    meta: dict[str, Any]


class Page(BaseModel):
    items: list[ItemOut]
    cursor: str | None  # pass back for the next page; None: this was the last


WINDOWS_MIN = (1, 5, 15, 60)


class Throughput(BaseModel):
    done: int
    dead: int
    per_s: float  # videos finished (done or dead) a second over the window


class QueueOut(BaseModel):
    name: str
    counts: dict[str, int]
    oldest_queued_age_s: float | None
    paused: bool
    counters: dict[str, int]
    throughput: dict[str, Throughput]  # "1m", "5m", "15m", "60m"
    drain_s: float | None  # the backlog at the last 5 minutes' rate (None: nothing finishes)


class Bulk(BaseModel):
    """A bulk action on dead letters: first without `confirm` (a dry run: the count it
    would touch), then with that count back as `confirm` and a `reason`."""

    model_config = ConfigDict(extra="forbid")
    dead_class: Utf8 | None = Field(None, alias="class")  # None: every class
    confirm: StrictInt | None = None
    reason: Utf8 | None = Field(None, min_length=1, max_length=500)


class WorkerOut(BaseModel):
    name: str
    kind: str
    node: str | None  # the Ray node id, as its heartbeats say
    host: str | None
    pid: int | None
    heartbeat_age_s: float
    items: list[str]


class Readiness(BaseModel):
    ready: bool
    problems: list[str]


class Problem(BaseModel):
    """An error: why in words (with the item's index or state where there is one), or
    FastAPI's list of the fields that fail validation."""

    detail: str | dict[str, Any] | list[dict[str, Any]]


WHY = {
    400: "the body is not JSON (or, for S3 events, not an event notification)",
    401: "no token, or a wrong one",
    403: "a write with the read token, or the API is read-only",
    404: "no such item",
    409: "the item is in another state, or the count changed since the dry run",
    413: "the body is over FRAMEFLEET_API_MAX_BODY_BYTES",
    422: "what is wrong with the input",
    503: "the queue's Redis does not answer",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The schema's `responses` for the errors a route answers besides FastAPI's own 422."""
    return {code: {"model": Problem, "description": WHY[code]} for code in codes}


def _seconds(ms: int | None) -> float | None:
    return None if ms is None else ms / 1000


def item_out(item: Item, now_ms: int) -> ItemOut:
    leased = item.state == "leased"
    return ItemOut(
        id=item.id,
        uri=item.uri,
        state=str(item.state),
        priority=item.priority,
        attempts=item.attempts,
        deliveries=item.deliveries,
        chunks_done=item.chunks_done,
        chunks_total=item.chunks_total,
        chunks_expected=item.chunks_expected,
        owner=item.owner if leased else None,
        finished_by=item.owner if item.state == "done" else None,
        lease_age_s=(now_ms - item.claimed_ms) / 1000 if leased and item.claimed_ms else None,
        lease_left_s=(
            (item.lease_until_ms - now_ms) / 1000 if leased and item.lease_until_ms else None
        ),
        last_error=item.last_error,
        dead_reason=item.dead_reason,
        dead_class=item.dead_class,
        result=item.result,
        created_at=_seconds(item.created_ms),
        claimed_at=_seconds(item.claimed_ms),
        done_at=_seconds(item.done_ms or item.dead_ms),
        meta=dict(item.meta),
    )


def _refused_by_policy(uri: str, settings: Settings, hosts: dict[str, str | None]) -> str | None:
    """Why the workers would refuse to fetch `uri` for where it points, or None. `hosts`
    keeps each host's verdict for the rest of the batch (one lookup a host, not an item)."""
    source = settings.source
    if uri.startswith(("http://", "https://")):
        try:
            host = urlparse(uri).netloc
        except ValueError as exc:  # an unbalanced or bad [IPv6] host
            return f"{uri}: {exc}"
        if host not in hosts:
            try:
                check_url(uri, source.allow_private_urls)
                hosts[host] = None
            except URLRefused as exc:  # a name that does not resolve now is the fetch's
                hosts[host] = None if exc.lookup else str(exc)
        return hosts[host]
    if uri.startswith(("/", "file://")):
        path = Path(unquote(urlparse(uri).path) if uri.startswith("file://") else uri)
        try:
            resolved = path.resolve()
        except (OSError, RuntimeError) as exc:  # a name too long, a symlink loop
            return f"{path}: {exc}"
        roots = [root.resolve() for root in source.allowed_roots]
        if not any(resolved.is_relative_to(root) for root in roots):
            allowed = ", ".join(map(str, roots)) or "none configured (FRAMEFLEET_ALLOWED_ROOTS)"
            return f"{path} is outside the allowed roots ({allowed})"
    return None


def _validated(batch: list[ItemIn], settings: Settings) -> list[NewItem]:
    items: list[NewItem] = []
    hosts: dict[str, str | None] = {}
    for index, given in enumerate(batch):
        try:
            item = NewItem(
                uri=given.uri,
                id=given.id,
                priority=given.priority,
                etag=given.etag,
                size=given.size,
                meta=given.meta or {},
            )
        except InvalidItem as exc:
            raise HTTPException(422, {"index": index, "error": str(exc)}) from None
        why = _refused_by_policy(item.uri, settings, hosts)
        if why is not None:
            raise HTTPException(422, {"index": index, "error": why})
        items.append(item)
    return items


router = APIRouter(responses=errors(401, 503))


# Dependencies that do no I/O are async: a sync one costs a hop to the thread pool and back.
async def _queue(request: Request) -> Queue:
    return request.app.state.queue  # type: ignore[no-any-return]


async def _settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def _now_ms(request: Request) -> int:
    return int(request.app.state.clock() * 1000)


QueueDep = Annotated[Queue, Depends(_queue)]
READ, WRITE = [Depends(may_read)], [Depends(may_write)]
WriterDep = Annotated[str, Depends(may_write)]  # the caller's name, for the audit log
CURSOR = r"^\d{1,20}:[^\s]{1,200}$"
CURSOR_RE = re.compile(CURSOR)
SettingsDep = Annotated[Settings, Depends(_settings)]


@router.get("/healthz", include_in_schema=False)
async def healthz() -> dict[str, str]:
    """Liveness: no token, no Redis call."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Readiness,
    dependencies=READ,
    responses={503: {"model": Readiness, "description": "not ready: problems says why"}},
)
def readyz(queue: QueueDep) -> JSONResponse:
    """Redis answers and a leader coordinator's health report is fresh and ok (503 says
    which of them fails)."""
    problems = []
    report = None
    try:
        queue.client.ping()
        report = Supervision(queue).health()
    except RedisError as exc:
        problems.append(f"redis: {exc}")
    if not problems and report is None:
        problems.append("coordinator: no fresh health report (no leader running?)")
    elif report is not None and not report.get("ok", False):
        problems.append(f"coordinator: {report.get('error', 'not ok')}")
    return JSONResponse({"ready": not problems, "problems": problems}, 200 if not problems else 503)


@router.post(
    "/v1/items", response_model=Enqueued, dependencies=WRITE, responses=errors(400, 403, 413, 422)
)
def enqueue(body: ItemIn | BatchIn, queue: QueueDep, settings: SettingsDep) -> Enqueued:
    """One item or a batch of up to 10,000, idempotent by id: which ids were new, and the
    state of those that already existed. A batch with one bad item writes nothing (422,
    with its index and why)."""
    items = _validated(body.items if isinstance(body, BatchIn) else [body], settings)
    new = queue.enqueue(items)
    if len(new) == len(items):  # every id new, and each once: nothing existed
        return Enqueued(new=new, existing=[])
    fresh = set(new)
    version = settings.queue.config_version
    known = [i for i in dict.fromkeys(x.resolved_id(version) for x in items) if i not in fresh]
    states = queue.states(known) if known else []
    existing = [Existing(id=i, state=s) for i, s in zip(known, states, strict=True)]
    return Enqueued(new=new, existing=existing)


@router.get("/v1/items/{item_id:path}/manifest", dependencies=READ, responses=errors(404))
def get_manifest(item_id: str, queue: QueueDep, settings: SettingsDep) -> dict[str, Any]:
    """The manifest of a done item's outputs (frames, chunks, model, decoder, timings and
    where its detections are), read from the output store this API is configured with;
    404 when the item is not done or its outputs are not in that store."""
    from framefleet.workers.outputs import OutputStore  # pyarrow: only when asked

    item = queue.get(item_id)
    if item is None or not item.result:
        raise HTTPException(404, f"no outputs for {item_id!r}")
    try:
        return OutputStore(settings.pipeline.out, settings.source).read_result(item.result)
    except (OSError, ValueError) as exc:  # not in this store, or not readable now
        raise HTTPException(404, f"{item.result}: {exc}") from None


@router.get(
    "/v1/items/{item_id:path}", response_model=ItemOut, dependencies=READ, responses=errors(404)
)
def get_item(item_id: str, queue: QueueDep, request: Request) -> ItemOut:
    item = queue.get(item_id)
    if item is None:
        raise HTTPException(404, f"no item {item_id!r}")
    return item_out(item, _now_ms(request))


@router.get("/v1/items", response_model=Page, dependencies=READ)
def list_items(
    queue: QueueDep,
    request: Request,
    state: Annotated[State | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(pattern=CURSOR)] = None,
    q: Annotated[str | None, Query(min_length=1, max_length=256, pattern=r"^\S+$")] = None,
) -> Page:
    """The items in one state (queued by default), newest first, a page at a time (`cursor`
    from the previous page: a place, so items that come and go meanwhile shift nothing).
    With `q`: the newest `limit` items whose id starts with it, in every state (or in
    `state`), on one page."""
    now_ms = _now_ms(request)
    if q is not None:
        many = limit if state is None else FIND_CAP
        found = [i for i in queue.find(q, many) if state is None or i.state is state][:limit]
        return Page(items=[item_out(i, now_ms) for i in found], cursor=None)
    found, after = queue.page((state or State.QUEUED).value, limit, cursor)
    return Page(items=[item_out(i, now_ms) for i in found], cursor=after)


@router.delete("/v1/items/{item_id:path}", responses=errors(403, 404, 409))
def cancel(item_id: str, queue: QueueDep, who: WriterDep) -> dict[str, str]:
    """Cancel a queued or delayed item (it becomes a dead letter); 409 for another state."""
    item = queue.get(item_id)
    if item is None:
        raise HTTPException(404, f"no item {item_id!r}")
    if not queue.cancel(item_id, "cancelled over the API"):
        state = str(item.state)
        raise HTTPException(409, {"error": f"{item_id} is {state}", "state": state})
    queue.record({"who": who, "action": "cancel", "ids": [item_id], "count": 1})
    return {"id": item_id, "state": "dead"}


@router.get("/v1/queue", response_model=QueueOut, dependencies=READ)
def queue_counts(queue: QueueDep, settings: SettingsDep) -> QueueOut:
    """Counts by state, the oldest queued item's age, paused or not, the counters, videos
    finished over the last 1, 5, 15 and 60 minutes, and the time to drain the backlog at
    the last 5 minutes' rate."""
    stats = queue.stats()
    now_ms = queue.now_ms()
    windows = {}
    finished = queue.finished_since_each([now_ms - m * 60_000 for m in WINDOWS_MIN])
    for minutes, (done, dead) in zip(WINDOWS_MIN, finished, strict=True):
        windows[f"{minutes}m"] = Throughput(
            done=done, dead=dead, per_s=round((done + dead) / (minutes * 60), 3)
        )
    backlog = sum(stats.counts[s] for s in ("queued", "delayed", "leased", "inbox"))
    rate = windows["5m"].per_s
    return QueueOut(
        name=settings.queue.name,
        counts=dict(stats.counts),
        oldest_queued_age_s=stats.oldest_queued_age_s,
        paused=stats.paused,
        counters=dict(stats.counters),
        throughput=windows,
        drain_s=round(backlog / rate, 1) if rate > 0 else (0.0 if backlog == 0 else None),
    )


@router.get("/v1/workers", response_model=list[WorkerOut], dependencies=READ)
def workers(queue: QueueDep) -> list[WorkerOut]:
    """Every worker heartbeating into this queue: its kind (the first part of its name:
    decoder, inference...), its node, host and pid (as it says), the seconds since its last
    heartbeat, the items it holds."""
    supervision = Supervision(queue)
    info = supervision.worker_info()
    out = []
    for name, age in sorted(supervision.workers().items()):
        said = info.get(name, {})
        pid = said.get("pid")
        out.append(
            WorkerOut(
                name=name,
                kind=name.split("-", 1)[0],
                node=str(said["node"]) if said.get("node") else None,
                host=str(said["host"]) if said.get("host") else None,
                pid=pid if isinstance(pid, int) else None,
                heartbeat_age_s=round(age, 3),
                items=sorted(supervision.held(name)),
            )
        )
    return out


@router.get("/v1/health", dependencies=READ)
def health(queue: QueueDep, request: Request) -> dict[str, Any]:
    """The leader coordinator's last health report (leader, GCS, nodes, pools, events) and
    its age; `report` is null when no leader has written one lately (it expires)."""
    report = Supervision(queue).health()
    at = report.get("at") if report else None
    age = round(request.app.state.clock() - at, 3) if isinstance(at, int | float) else None
    return {"report": report, "age_s": age}


@router.get("/v1/queue/history", dependencies=READ)
def history(queue: QueueDep, minutes: Annotated[int, Query(ge=1, le=1440)] = 60) -> dict[str, Any]:
    """Videos done and dead in each of the last `minutes` whole minutes and the current one,
    oldest first (`at`: the minute's start, unix seconds), from the done and dead sets'
    times: 2 x (minutes + 1) ZCOUNTs, whatever the number of items."""
    rows = queue.finished_per_minute(minutes)
    return {"minutes": [{"at": at / 1000, "done": d, "dead": x} for at, d, x in rows]}


@router.get("/v1/redis", dependencies=READ)
def redis_info(queue: QueueDep) -> dict[str, Any]:
    """The Redis server: version, memory used and its limit, eviction policy, persistence
    (AOF, its fsync policy and last write's status; the last RDB save's), uptime."""
    info = queue.server_info()
    server = info.get("valkey_version")
    server = f"Valkey {server}" if server else f"Redis {info.get('redis_version', '?')}"
    return {"reachable": True, "server": server, **info}


def json_text(body: Any) -> str:
    return json.dumps(body, indent=2, sort_keys=True)


@router.post("/v1/queue/pause", responses=errors(403))
def pause(queue: QueueDep, who: WriterDep) -> dict[str, bool]:
    queue.pause()
    queue.record({"who": who, "action": "pause"})
    return {"paused": True}


@router.post("/v1/queue/resume", responses=errors(403))
def resume(queue: QueueDep, who: WriterDep) -> dict[str, bool]:
    queue.resume()
    queue.record({"who": who, "action": "resume"})
    return {"paused": False}


# -- dead letters ---------------------------------------------------------------------------


@router.get("/v1/dead", response_model=Page, dependencies=READ)
def dead(
    queue: QueueDep,
    request: Request,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(pattern=CURSOR)] = None,
    dead_class: Annotated[Utf8 | None, Query(alias="class", max_length=64)] = None,
) -> Page:
    """Dead letters, newest first, with their reasons and classes; of one `class` only
    if given."""
    found, after = queue.page("dead", limit, cursor, dead_class=dead_class)
    now_ms = _now_ms(request)
    return Page(items=[item_out(i, now_ms) for i in found], cursor=after)


@router.get("/v1/dead/groups", dependencies=READ)
def dead_groups(queue: QueueDep) -> dict[str, Any]:
    """The dead letters counted by class (not_a_video, truncated, poison, ...)."""
    groups = queue.dead_classes()
    return {"groups": groups, "total": sum(groups.values())}


def _one_dead(
    queue: Queue, item_id: str, who: str, action: str, act: Callable[[list[str]], list[str]]
) -> None:
    """An action on one dead letter: 404 if unknown, 409 if it is not dead; audited."""
    item = queue.get(item_id)
    if item is None:
        raise HTTPException(404, f"no item {item_id!r}")
    if item.state != "dead" or not act([item_id]):
        raise HTTPException(409, {"error": f"{item_id} is {item.state}", "state": str(item.state)})
    queue.record({"who": who, "action": action, "ids": [item_id], "count": 1})


@router.post("/v1/dead/{item_id:path}/retry", responses=errors(403, 404, 409))
def retry_one(item_id: str, queue: QueueDep, who: WriterDep) -> dict[str, str]:
    """One dead letter back to the queue: the same item (id, uri, meta), fresh counts."""
    _one_dead(queue, item_id, who, "retry", queue.retry_dead)
    return {"id": item_id, "state": "queued"}


@router.delete("/v1/dead/{item_id:path}", responses=errors(403, 404, 409))
def purge_one(item_id: str, queue: QueueDep, who: WriterDep) -> dict[str, str]:
    """Delete one dead letter for good (its id becomes new again)."""
    _one_dead(queue, item_id, who, "purge", queue.purge_dead)
    return {"id": item_id, "state": "purged"}


def bulk(
    queue: Queue, who: str, action: str, body: Bulk, act: Callable[[list[str]], list[str]]
) -> dict[str, Any]:
    """A bulk action on the dead letters of a class (or all): a dry run without `confirm`,
    else the action, if the count is still the one confirmed, with a reason."""
    ids = queue.dead_ids(body.dead_class)
    scope = {"class": body.dead_class, "count": len(ids)}
    if body.confirm is None:
        return {"dry_run": True, **scope}
    if body.confirm != len(ids):
        raise HTTPException(409, {"error": "the count changed: look again", **scope})
    if not body.reason:
        raise HTTPException(422, "a bulk action needs a reason")
    done: list[str] = []
    for i in range(0, len(ids), 1000):
        done += act(ids[i : i + 1000])
    queue.record(
        {
            "who": who,
            "action": action,
            "class": body.dead_class,
            "count": len(done),
            "why": body.reason,
        }
    )
    return {"dry_run": False, "class": body.dead_class, "count": len(done)}


@router.post("/v1/dead/retry", responses=errors(400, 403, 409, 413, 422))
def retry_bulk(body: Bulk, queue: QueueDep, who: WriterDep) -> dict[str, Any]:
    """Every dead letter of a class (or all) back to the queue, as the same items."""
    return bulk(queue, who, "retry", body, lambda ids: queue.retry_dead(ids))


@router.delete("/v1/dead", responses=errors(403, 409, 422))
def purge_bulk(
    queue: QueueDep,
    who: WriterDep,
    dead_class: Annotated[str | None, Query(alias="class")] = None,
    confirm: Annotated[int | None, Query()] = None,
    reason: Annotated[str | None, Query(min_length=1, max_length=500)] = None,
) -> dict[str, Any]:
    """Delete every dead letter of a class (or all) for good; a dry run, then confirmed."""
    body = Bulk.model_validate({"class": dead_class, "confirm": confirm, "reason": reason})
    return bulk(queue, who, "purge", body, lambda ids: queue.purge_dead(ids))


@router.post("/v1/events/s3", dependencies=WRITE, responses=errors(400, 403, 413))
async def s3_events(request: Request, queue: QueueDep, settings: SettingsDep) -> dict[str, Any]:
    """An S3 event notification (AWS directly, through SNS or EventBridge, or MinIO's
    webhook): each ObjectCreated record of a key with a wanted suffix is enqueued as
    s3://bucket/key, its id standing for bucket, key and version (or eTag), its source in
    meta. Other events are answered and counted as ignored; a record that makes no valid
    item is refused alone (the others are enqueued), with its index and why."""
    try:
        body = json.loads(await request.body())
        found = list(records(body))
    except (ValueError, RecursionError) as exc:  # not JSON (or nested too deep), not an event
        raise HTTPException(400, f"not an S3 event notification: {exc}") from None
    if body.get("Type") == "SubscriptionConfirmation":  # nothing is fetched from here
        log.warning("SNS asks to confirm a subscription: open %s", body.get("SubscribeURL"))
    items, ignored, refused = [], 0, []
    for index, record in enumerate(found):
        if record is None or not record.created or not settings.api.takes_key(record.key):
            ignored += 1
            continue
        try:
            item = record.item(settings.queue.config_version)
        except InvalidItem as exc:
            refused.append({"index": index, "key": record.key[:200], "error": str(exc)})
            continue
        items.append(item)
    new = queue.enqueue(items) if items else []
    return {
        "enqueued": len(new),
        "duplicates": len(items) - len(new),  # delivered before (or twice in this body)
        "ignored": ignored,
        "refused": refused,
        "ids": [i.id for i in items],
    }


@router.get("/metrics", dependencies=READ, include_in_schema=False)
def metrics(request: Request) -> Response:
    """Prometheus's text format, read from Redis at scrape time (ops/metrics.py)."""
    return Response(generate_latest(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/audit", dependencies=READ)
def audit(queue: QueueDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[Any]:
    """What operators did (who: the token's name; what; how many; why; when), newest first."""
    return queue.audit(limit)


class _AsciiJSON(JSONResponse):
    """JSON with everything but ASCII escaped, so that a lone surrogate can be written."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, allow_nan=False, separators=(",", ":")).encode()


async def _invalid_input(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 (each error's type, loc and msg) without the input it echoes: a NaN or
    an infinity there cannot be written as JSON, nor a lone surrogate in a field's name,
    unescaped (each was a 500); and a batch need not come back whole."""
    assert isinstance(exc, RequestValidationError)
    found = [{k: v for k, v in error.items() if k != "input"} for error in exc.errors()]
    return _AsciiJSON({"detail": jsonable_encoder(found)}, 422)


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    """405 with every method of the path in Allow (Starlette's names those of the first route
    with the path only: POST for /v1/items, whose GET is another route)."""
    from . import ui

    if ui.is_page(request):
        return ui.pages_error(request, exc)
    partial = [
        route
        for route in router.routes
        if isinstance(route, Route) and route.matches(request.scope)[0] == Match.PARTIAL
    ]
    # a path of its own is its own resource, as the schema lists it: /v1/dead/groups is
    # GET only, whatever /v1/dead/{item_id} (DELETE) beside it would also match
    literal = [route for route in partial if not route.param_convertors]
    methods = {m for route in literal or partial for m in route.methods or ()}
    if not methods:  # none of the API's own: Starlette's word for it
        methods = set((getattr(exc, "headers", None) or {}).get("Allow", "").split(", ")) - {""}
    allow = {"Allow": ", ".join(sorted(methods))}
    return JSONResponse({"detail": "Method Not Allowed"}, 405, allow)


def create_app(settings: Settings, queue: Queue, clock: Callable[[], float] = time.time) -> FastAPI:
    """The API over `queue` (whose settings are `settings`)."""
    app = FastAPI(
        title="framefleet",
        version="1",
        docs_url=None,  # its page loads assets from a CDN; the schema is at /openapi.json
        redoc_url=None,
    )
    app.state.queue, app.state.settings, app.state.clock = queue, settings, clock
    app.state.tokens = Tokens.of(settings.api)
    app.state.metrics = metrics_registry(queue, settings, clock)
    app.include_router(router)
    from . import ui  # the dashboard: pages over the routes above

    app.include_router(ui.router)
    app.mount(f"{ui.PREFIX}/static", ui.static_files(), name="static")

    @app.exception_handler(RedisError)
    async def redis_down(request: Request, exc: RedisError) -> Response:
        if ui.is_page(request):
            return ui.pages_error(request, HTTPException(503, f"Redis does not answer: {exc}"))
        return JSONResponse({"detail": f"the queue's Redis does not answer: {exc}"}, 503)

    @app.exception_handler(StarletteHTTPException)  # the router's 404 too: a page on /ui
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if ui.is_page(request):
            return ui.pages_error(request, exc)
        return await http_exception_handler(request, exc)

    @app.exception_handler(ui.LoginNeeded)
    async def login_needed(request: Request, exc: ui.LoginNeeded) -> Response:
        return ui.pages_error(request, exc)

    def front() -> RedirectResponse:
        return RedirectResponse(f"{settings.api.root_path.rstrip('/')}{ui.PREFIX}/", 303)

    app.add_api_route("/", front, include_in_schema=False)
    app.add_exception_handler(RequestValidationError, _invalid_input)
    app.add_exception_handler(405, _method_not_allowed)
    app.add_middleware(TokenGate)  # the token before the body is read (auth.py)
    if settings.api.root_path:  # outermost: TokenGate and the routes see it
        app.add_middleware(RootPath, root=settings.api.root_path.rstrip("/"))
    return app


class RootPath:
    """ASGI middleware: FRAMEFLEET_API_ROOT_PATH as the scope's root_path (/ff/v1/queue
    routes as /v1/queue; links, redirects and cookies carry /ff). A proxy may keep the prefix
    in the path or strip it: a stripped path gets it back, since Starlette's mounts (the
    dashboard's assets) find their files only under a path that starts with the root path.
    FastAPI's own root_path parameter did the first half, and is deprecated."""

    def __init__(self, app: Any, root: str) -> None:
        self.app, self.root = app, root

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            path: str = scope["path"]
            if path != self.root and not path.startswith(self.root + "/"):
                scope["path"] = self.root + path
                if scope.get("raw_path") is not None:
                    scope["raw_path"] = quote(self.root).encode() + scope["raw_path"]
            scope["root_path"] = self.root
        await self.app(scope, receive, send)


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is answered 413 before the app
    sees it: by its Content-Length, or, sent without one, counted as it is read (it is then
    held, at most `limit` bytes, and handed to the app whole)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.limit:
                await _too_large(send, self.limit)
                return
            await self.app(scope, receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                await _too_large(send, self.limit)
                return
        sent = False

        async def replay() -> Any:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def _too_large(send: Any, limit: int) -> None:
    body = f'{{"detail":"the request body is over {limit} bytes"}}'.encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})


LOOPBACK = ("127.0.0.1", "::1", "localhost")


def serve(settings: Settings, queue: Queue) -> int:
    """Serve the API until SIGTERM or Ctrl-C (requests in flight are finished, within 10 s).
    With no token configured it binds only a loopback address."""
    api = settings.api
    if api.write_token() is None and api.host not in LOOPBACK:
        raise SystemExit(
            f"refusing to serve the API on {api.host} without a token: set"
            " FRAMEFLEET_API_TOKEN or FRAMEFLEET_API_TOKEN_FILE (or bind 127.0.0.1)"
        )
    # A thread validating and enqueueing a big batch holds the GIL: the event loop gets it
    # back every 1 ms instead of 5, so short requests meanwhile wait less (bench/api.py).
    sys.setswitchinterval(0.001)
    _server_class()(server_config(settings, queue)).run()
    return 0


def server_config(settings: Settings, queue: Queue, port: int | None = None) -> Any:
    """uvicorn's configuration of the API (the app inside its body limit), on the settings'
    address (or `port`)."""
    import uvicorn

    api = settings.api
    return uvicorn.Config(
        BodyLimit(create_app(settings, queue), api.max_body_bytes),
        host=api.host,
        port=api.port if port is None else port,
        log_level="warning",
        timeout_graceful_shutdown=10,
        access_log=False,
        proxy_headers=True,
        forwarded_allow_ips=api.forwarded_allow_ips,
    )


def _server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, whose SIGTERM or Ctrl-C ends the process with exit 0 once the
        requests in flight are done (uvicorn's own re-raises the signal at the end)."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, self.handle_exit)
            yield

    return Server
