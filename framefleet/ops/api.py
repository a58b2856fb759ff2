"""The HTTP API (`framefleet api`): FastAPI on uvicorn, on top of the queue's public API.

Every route but /healthz wants a bearer token (ops/auth.py); writes want the write token.
Input is checked before anything is written: a batch with one bad item writes nothing and
names it (422), a local path outside FRAMEFLEET_ALLOWED_ROOTS and an http(s) URL that
names a private, loopback or link-local address are refused at enqueue by the policy the
workers apply at fetch time. Here: items, the queue, dead letters (grouped by class, bulk
actions with a dry run), the audit log, workers, health, S3 event notifications and
Prometheus metrics (ops/metrics.py). The models are in ops/schemas.py; serving it (uvicorn,
the root path, the body limit) in ops/server.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route

from framefleet.netpolicy import refusal
from framefleet.queue import Item, Memory, NewItem, Queue, QueueFull, State, Supervision
from framefleet.queue.model import InvalidItem
from framefleet.queue.reader import FIND_CAP
from framefleet.settings import Settings

from .auth import TokenGate, Tokens, may_read, may_write
from .limits import BodyLimit
from .metrics import registry as metrics_registry
from .s3events import records
from .schemas import (
    WINDOWS_MIN,
    BatchIn,
    Bulk,
    Detections,
    Enqueued,
    Existing,
    ItemDetail,
    ItemIn,
    Page,
    QueueOut,
    Readiness,
    Throughput,
    Utf8,
    WorkerOut,
    errors,
    item_detail,
    item_out,
)

log = logging.getLogger(__name__)


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
        source = settings.source
        why = refusal(item.uri, source.allow_private_urls, source.allowed_roots, hosts)
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
    """Redis answers and has room (not over its maxmemory), and a leader coordinator's
    health report is fresh and ok (503 says which of them fails)."""
    problems = []
    report = None
    try:
        queue.client.ping()
        report = Supervision(queue).health()
        memory = queue.memory()
        if memory is not None and memory.full:
            problems.append(f"redis: {full_text(memory)}")
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
    with its index and why); a batch is written whole or not at all, in one script call."""
    items = _validated(body.items if isinstance(body, BatchIn) else [body], settings)
    new = queue.enqueue(items, atomic=True)  # all or nothing, should this process die
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
    from framefleet.workers.outputs import MANIFEST

    item, body = _output_file(item_id, MANIFEST, queue, settings)
    try:
        manifest: dict[str, Any] = json.loads(body)
    except ValueError as exc:  # not one framefleet wrote
        raise HTTPException(404, f"{item.result}: {exc}") from None
    return manifest


def _output_file(item_id: str, name: str, queue: Queue, settings: Settings) -> tuple[Item, bytes]:
    """A done item, and one file of its outputs (`name`, under its version's folder) read
    from the output store this API is configured with (never from the source); 404 when the
    item is not done, or its outputs are not in that store or not readable now."""
    from framefleet.workers.outputs import OutputStore  # boto3, pyarrow: only when asked

    item = queue.get(item_id)
    if item is None or not item.result:
        raise HTTPException(404, f"no outputs for {item_id!r}")
    from framefleet.workers.errors import InfraError

    store = OutputStore(settings.pipeline.out, settings.source)
    video = store.video_of(item.result)
    try:
        if video is None:
            raise FileNotFoundError(f"not a manifest under {store.base}")
        return item, store.get(f"{video}/{name}")
    except InfraError as exc:  # the store does not answer: try again later
        raise HTTPException(503, f"the output store: {exc}") from None
    except (OSError, ValueError) as exc:
        raise HTTPException(404, f"{item.result}: {name}: {exc}") from None


@router.get(
    "/v1/items/{item_id:path}/detections",
    response_model=Detections,
    dependencies=READ,
    responses=errors(404),
)
def get_detections(
    item_id: str,
    queue: QueueDep,
    settings: SettingsDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Detections:
    """A done item's detections, a page at a time (`next`: the offset of the next page, null
    after the last), read from the output store this API is configured with; each row as
    the model wrote it (frame_index, pts_s, label, score, box...). 404 when the item is not
    done or its outputs are not in that store."""
    import pyarrow.parquet as pq  # only when asked

    from framefleet.workers.outputs import DETECTIONS

    item, body = _output_file(item_id, DETECTIONS, queue, settings)
    table = pq.read_table(io.BytesIO(body))
    page = table.slice(offset, limit).drop_columns(
        [c for c in ("uri", "video_id") if c in table.column_names]
    )
    after = offset + page.num_rows
    return Detections(
        id=item_id,
        uri=item.uri,
        total=table.num_rows,
        offset=offset,
        next=after if after < table.num_rows else None,
        rows=page.to_pylist(),
    )


@router.get(
    "/v1/items/{item_id:path}/previews/{name}",
    dependencies=READ,
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}, **errors(404)},
)
def get_preview(item_id: str, name: str, queue: QueueDep, settings: SettingsDep) -> Response:
    """One of a done item's previews (a JPEG of a frame with its boxes drawn: its name is in
    the manifest's `previews`), read from the output store; never from the source."""
    from framefleet.workers import previews

    if not previews.NAME.fullmatch(name):
        raise HTTPException(404, f"no preview {name!r} of {item_id!r}")
    _, body = _output_file(item_id, f"{previews.FOLDER}/{name}", queue, settings)
    return Response(body, media_type="image/jpeg", headers={"Cache-Control": "private"})


@router.get(
    "/v1/items/{item_id:path}", response_model=ItemDetail, dependencies=READ, responses=errors(404)
)
def get_item(item_id: str, queue: QueueDep, request: Request) -> ItemDetail:
    """One item, with its history (claims, releases, failures, lost leases and their blame,
    retries, its end)."""
    item = queue.get(item_id)
    if item is None:
        raise HTTPException(404, f"no item {item_id!r}")
    return item_detail(item, _now_ms(request), queue.events(item_id))


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
                gpus=_share(said.get("gpus")),
                heartbeat_age_s=round(age, 3),
                items=sorted(supervision.held(name)),
            )
        )
    return out


def _share(said: Any) -> float | None:
    try:
        return None if said is None else float(said)
    except (TypeError, ValueError):
        return None


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
    memory = queue.memory()
    full = None if memory is None else memory.full
    return {"reachable": True, "server": server, "full": full, **info}


def full_text(memory: Memory) -> str:
    """What a full server means, for /readyz and the dashboard."""
    return (
        f"full: {memory.used_bytes:,} bytes used of maxmemory {memory.max_bytes:,}; new videos"
        " are not enqueued, ingested or claimed until the sweep's retention frees memory"
        " (leases out carry on and are acked); purge dead letters, shorten"
        " FRAMEFLEET_DONE_TTL_S or raise maxmemory"
    )


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


def set_token(ids: list[str]) -> str:
    """What stands for one set of dead letters: a bulk action goes ahead only on the set its
    dry run showed, not on another one of the same size (one retried, another died)."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:16]


def bulk(
    queue: Queue, who: str, action: str, body: Bulk, act: Callable[[list[str]], list[str]]
) -> dict[str, Any]:
    """A bulk action on the dead letters of a class (or all): a dry run without `confirm`,
    else the action, if the set is still the one confirmed (its count and token), with a
    reason."""
    ids = queue.dead_ids(body.dead_class)
    scope = {"class": body.dead_class, "count": len(ids), "token": set_token(ids)}
    if body.confirm is None:
        return {"dry_run": True, **scope}
    if body.confirm != len(ids) or body.token != scope["token"]:
        raise HTTPException(409, {"error": "the dead letters changed: look again", **scope})
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
    token: Annotated[str | None, Query(max_length=64)] = None,
    reason: Annotated[str | None, Query(min_length=1, max_length=500)] = None,
) -> dict[str, Any]:
    """Delete every dead letter of a class (or all) for good; a dry run, then confirmed."""
    try:
        body = Bulk.model_validate(
            {"class": dead_class, "confirm": confirm, "token": token, "reason": reason}
        )
    except ValidationError as exc:  # a confirm without its token
        raise HTTPException(422, "; ".join(e["msg"] for e in exc.errors())) from None
    return bulk(queue, who, "purge", body, lambda ids: queue.purge_dead(ids))


@router.post("/v1/events/s3", dependencies=WRITE, responses=errors(400, 403, 413, 415))
async def s3_events(request: Request, queue: QueueDep, settings: SettingsDep) -> dict[str, Any]:
    """An S3 event notification (AWS directly, through SNS or EventBridge, or MinIO's
    webhook): each ObjectCreated record of a key with a wanted suffix is enqueued as
    s3://bucket/key, its id standing for bucket, key and version (or eTag), its source in
    meta. Other events are answered and counted as ignored; a record that makes no valid
    item is refused alone (the others are enqueued), with its index and why."""
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    sns = kind == "text/plain" and "x-amz-sns-message-type" in request.headers
    if kind != "application/json" and not sns:  # a page's CORS-simple POST is text/plain
        raise HTTPException(
            415,
            "an S3 event is JSON: Content-Type application/json (or SNS's text/plain with"
            " its x-amz-sns-message-type header)",
        )
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
    # the synchronous Redis client, off the event loop: a slow Redis must not stall /healthz
    new = await run_in_threadpool(queue.enqueue, items) if items else []
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
    # GET only, whatever /v1/dead/{item_id} (DELETE) beside it would also match; else the
    # first route that matches names it (/v1/items/x/manifest is not /v1/items/{item_id})
    literal = [route for route in partial if not route.param_convertors]
    first = [route for route in partial if partial and route.path == partial[0].path]
    methods = {m for route in literal or first for m in route.methods or ()}
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

    @app.exception_handler(QueueFull)  # before RedisError: the closer class wins
    async def redis_full(request: Request, exc: QueueFull) -> Response:
        if ui.is_page(request):
            return ui.pages_error(request, HTTPException(503, f"Redis is full: {exc}"))
        return JSONResponse({"detail": f"the queue's Redis is full: {exc}"}, 503)

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
    # Starlette runs the last added outermost: the token, then the body limit, then FastAPI
    # reads and parses the body (auth.py, limits.py)
    app.add_middleware(BodyLimit, limit=settings.api.max_body_bytes)
    app.add_middleware(TokenGate)
    return app
