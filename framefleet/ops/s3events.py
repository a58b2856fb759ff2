"""S3 event notifications as items: the bodies AWS sends directly, through SNS and through
EventBridge, and MinIO's webhook. Delivery is at least once and unordered, so an item's id
is derived from bucket, key and version id (or eTag when the bucket is unversioned): the
same object event twice is one item, a new version of a key is a new one.

Direct, SNS and MinIO records carry the key URL-encoded (`+` for a space); EventBridge's
carry it as it is.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from framefleet.queue import NewItem


class NotAnEvent(ValueError):
    """The body is not an S3 event notification in any shape this knows."""


@dataclass(frozen=True, slots=True)
class Record:
    event: str  # ObjectCreated:Put, ... (the "s3:" prefix dropped)
    bucket: str
    key: str  # decoded
    version_id: str | None
    etag: str | None
    size: int | None
    sequencer: str | None
    time: str | None

    @property
    def created(self) -> bool:
        return self.event.startswith("ObjectCreated:") or self.event == "Object Created"

    def item(self, config_version: str) -> NewItem:
        """The item of this object: its id stands for bucket, key and version (or eTag)."""
        version = self.version_id or self.etag or ""
        digest = hashlib.sha1(
            f"s3-event\n{config_version}\n{self.bucket}\n{self.key}\n{version}".encode()
        ).hexdigest()[:24]
        meta = {
            "s3_event": self.event,
            "s3_version_id": self.version_id,
            "s3_sequencer": self.sequencer,
            "s3_event_time": self.time,
        }
        return NewItem(
            uri=f"s3://{self.bucket}/{self.key}",
            id=digest,
            etag=self.etag,
            size=self.size,
            meta={k: v for k, v in meta.items() if v is not None},
        )


def records(body: Any) -> Iterator[Record | None]:
    """The records of an event body; None for each part that is an event of another kind
    (s3:TestEvent, an SNS subscription confirmation). NotAnEvent when it is none."""
    if not isinstance(body, Mapping):
        raise NotAnEvent("an S3 event notification is a JSON object")
    if body.get("Type") in ("Notification",) and isinstance(body.get("Message"), str):
        try:
            inner = json.loads(body["Message"])  # SNS: the S3 event as a JSON string
        except ValueError:
            raise NotAnEvent("an SNS notification whose Message is not JSON") from None
        yield from records(inner)
    elif body.get("Type") in ("SubscriptionConfirmation", "UnsubscribeConfirmation"):
        yield None  # confirmed by the operator (its SubscribeURL is not fetched from here)
    elif body.get("Event") == "s3:TestEvent":
        yield None
    elif body.get("source") == "aws.s3" and isinstance(body.get("detail"), Mapping):
        yield _eventbridge(body)
    elif isinstance(body.get("Records"), list):  # direct, and MinIO's webhook
        for raw in body["Records"]:
            yield _record(raw)
    else:
        raise NotAnEvent("no Records, SNS Message or EventBridge detail in the body")


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise NotAnEvent(f"{what} is missing or not a string")
    try:
        value.encode()
    except UnicodeEncodeError:  # a lone surrogate (JSON's "\ud800"): no key S3 has
        raise NotAnEvent(f"{what} is not valid UTF-8") from None
    return value


def _opt(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _size(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _record(raw: Any) -> Record:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("s3"), Mapping):
        raise NotAnEvent("a record without its s3 part")
    s3 = raw["s3"]
    bucket, obj = s3.get("bucket"), s3.get("object")
    if not isinstance(bucket, Mapping) or not isinstance(obj, Mapping):
        raise NotAnEvent("a record without s3.bucket or s3.object")
    return Record(
        event=_text(raw.get("eventName"), "eventName").removeprefix("s3:"),
        bucket=_text(bucket.get("name"), "s3.bucket.name"),
        key=unquote_plus(_text(obj.get("key"), "s3.object.key")),
        version_id=_opt(obj.get("versionId")),
        etag=_opt(obj.get("eTag")),
        size=_size(obj.get("size")),
        sequencer=_opt(obj.get("sequencer")),
        time=_opt(raw.get("eventTime")),
    )


def _eventbridge(body: Mapping[str, Any]) -> Record:
    detail = body["detail"]
    bucket, obj = detail.get("bucket"), detail.get("object")
    if not isinstance(bucket, Mapping) or not isinstance(obj, Mapping):
        raise NotAnEvent("an EventBridge event without detail.bucket or detail.object")
    return Record(
        event=_text(body.get("detail-type"), "detail-type"),
        bucket=_text(bucket.get("name"), "detail.bucket.name"),
        key=_text(obj.get("key"), "detail.object.key"),
        version_id=_opt(obj.get("version-id")),
        etag=_opt(obj.get("etag")),
        size=_size(obj.get("size")),
        sequencer=_opt(obj.get("sequencer")),
        time=_opt(body.get("time")),
    )
