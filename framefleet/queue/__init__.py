"""The Redis reliable queue: one work item per video, the only stateful part of framefleet."""

from .connect import connect, open_client, open_queue
from .keys import Keys
from .model import (
    IngestResult,
    InvalidItem,
    Item,
    Lease,
    NewItem,
    QueueError,
    ReapResult,
    State,
    Stats,
    SweepResult,
    Verdict,
    WorkerRetired,
    default_id,
    parse_inbox_entry,
)
from .queue import Queue
from .server import EmbeddedServer, ServerError, embedded
from .supervision import Supervision

__all__ = [
    "EmbeddedServer",
    "IngestResult",
    "InvalidItem",
    "Item",
    "Keys",
    "Lease",
    "NewItem",
    "Queue",
    "QueueError",
    "ReapResult",
    "ServerError",
    "State",
    "Stats",
    "Supervision",
    "SweepResult",
    "Verdict",
    "WorkerRetired",
    "connect",
    "default_id",
    "embedded",
    "open_client",
    "open_queue",
    "parse_inbox_entry",
]
