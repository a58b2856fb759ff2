"""The API's request and response models (pydantic), and the errors each route documents.

An item goes in as ItemIn (the fields of Queue.enqueue, unknown ones refused) and comes out
as ItemOut; the rest are the shapes of the queue's counts, the dead letters' bulk actions,
the workers and the readiness check. Strings must be valid UTF-8 (JSON may carry a lone
surrogate; Redis may not take one).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    model_validator,
)

from framefleet.queue import Item

MAX_BATCH = 10_000


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


class EventOut(BaseModel):
    at: float  # unix seconds
    what: str  # claimed, released, failed, lease lost, given back, retried, done, dead, ...
    detail: str | None  # by whom, why, and what it cost the item


class ItemDetail(ItemOut):
    history: list[EventOut]  # oldest first, the newest 20 (none for one done at its 1st claim)


class Detections(BaseModel):
    id: str
    uri: str
    total: int  # rows of the video's detections
    offset: int
    next: int | None  # the offset of the next page; None: this was the last
    rows: list[dict[str, Any]]  # as the model wrote them: frame_index, pts_s, label, score...


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
    would touch and a token of that set), then with that count back as `confirm`, the token
    as `token` and a `reason`."""

    model_config = ConfigDict(extra="forbid")
    dead_class: Utf8 | None = Field(None, alias="class")  # None: every class
    confirm: StrictInt | None = None
    token: Utf8 | None = Field(None, max_length=64)
    reason: Utf8 | None = Field(None, min_length=1, max_length=500)

    @model_validator(mode="after")
    def _confirmed_with_the_token(self) -> Bulk:
        if self.confirm is not None and self.token is None:
            raise ValueError("confirm goes with the token of the set the dry run showed")
        return self


class WorkerOut(BaseModel):
    name: str
    kind: str
    node: str | None  # the Ray node id, as its heartbeats say
    host: str | None
    pid: int | None
    gpus: float | None  # an inference actor's GPU share, as it says (0 on a CPU-only node)
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
    403: "a write with the read token, the API is read-only, or (with no token configured)"
    " a Host that is not loopback or a write from another site",
    404: "no such item",
    409: "the item is in another state, or the set changed since the dry run",
    413: "the body is over FRAMEFLEET_API_MAX_BODY_BYTES",
    415: "the body is not sent as application/json (SNS's text/plain is taken from SNS)",
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


def item_detail(item: Item, now_ms: int, events: list[dict[str, Any]]) -> ItemDetail:
    history = [
        EventOut(at=float(e["at"]) / 1000, what=str(e["what"]), detail=e.get("detail"))
        for e in events
    ]
    return ItemDetail(**item_out(item, now_ms).model_dump(), history=history)
