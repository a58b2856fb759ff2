"""The Redis reliable queue: one work item per video, the only stateful part of framefleet."""

from .cluster import Client
from .connect import connect, open_client, open_queue, queue_at, redacted
from .durable import Durability, NotDurable
from .keys import Keys
from .model import (
    ChunkWork,
    Histogram,
    IngestResult,
    InvalidItem,
    Item,
    Lease,
    Memory,
    Metrics,
    NewItem,
    Outcome,
    Pending,
    QueueError,
    QueueFull,
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
    "ChunkWork",
    "Client",
    "Durability",
    "EmbeddedServer",
    "Histogram",
    "IngestResult",
    "InvalidItem",
    "Item",
    "Keys",
    "Lease",
    "Memory",
    "Metrics",
    "NewItem",
    "NotDurable",
    "Outcome",
    "Pending",
    "Queue",
    "QueueError",
    "QueueFull",
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
    "queue_at",
    "redacted",
]
