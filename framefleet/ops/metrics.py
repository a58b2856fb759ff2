"""Prometheus metrics (`GET /metrics`): a custom collector that reads the queue at scrape time.

Every figure is the fleet's, read from Redis through the queue's public API (Queue.metrics,
Queue.server_info, Supervision): nothing is counted in this process, so nothing goes stale
when a worker dies and a restart of the API loses nothing (as rq-exporter does). A scrape
costs a handful of round trips, O(states + classes + buckets + workers), never O(items).

The histograms are kept in Redis by the Lua scripts (framefleet/queue/metrics.py), not by
Ray's metrics export: they survive every process, need no second scrape target (Ray's
metrics agent on every node), and hold for a fleet without Ray at all.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from redis.exceptions import RedisError, ResponseError

from framefleet.queue import Histogram, Queue, Supervision
from framefleet.settings import Settings

log = logging.getLogger(__name__)

P = "framefleet_"
# queue counter (stats.*_total) -> (metric name without _total, help)
COUNTERS = {
    "enqueued_total": ("items_enqueued", "Items enqueued (new ids and forced re-enqueues)."),
    "acked_total": ("items_succeeded", "Items done: their outputs durable, acknowledged."),
    "retried_total": ("items_retried", "Failures retried after a backoff."),
    "dead_total": ("items_dead", "Items that went to the dead letters."),
    "dead_retried_total": ("dead_retried", "Dead letters sent back to the queue by an operator."),
    "reaped_total": ("leases_expired", "Leases that ended without their holder's word."),
    "stale_ack_total": ("stale_acks", "Acks refused: the lease had been lost."),
    "inbox_rejected_total": ("inbox_rejected", "Inbox entries refused as malformed."),
    "frames_total": ("frames_processed", "Frames through the model (each chunk counted once)."),
    "claimed_total": ("leases_granted", "Leases handed out."),
    "webhooks_sent_total": ("webhooks_sent", "Outcomes a webhook receiver answered with a 2xx."),
    "webhook_failures_total": ("webhook_failures", "Webhook attempts that failed."),
    "webhooks_given_up_total": ("webhooks_given_up", "Outcomes whose webhook was given up."),
}
HISTOGRAMS = {
    "queue_wait": ("queue_wait_seconds", "Time from enqueue to an item's first claim."),
    "processing": (
        "item_processing_seconds",
        "Time from the claim of the lease that finished a video to its ack.",
    ),
    "latency": ("item_latency_seconds", "Time from enqueue to done, retries included."),
}


# A scrape waits this long for Redis, then reports it down (framefleet_redis_up 0): the
# client retries a server that does not answer for 20 s and more (queue/connect.py), longer
# than Prometheus waits for a scrape (10 s by default), which would then see the API down
# instead. A healthy Redis answers a scrape in milliseconds.
READ_LIMIT_S = 5.0


class QueueCollector(Collector):
    def __init__(self, queue: Queue, settings: Settings, clock: Callable[[], float]) -> None:
        self.queue, self.settings, self.clock = queue, settings, clock
        self._lock = threading.Lock()
        self._reading: Future[list[Metric]] | None = None

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(P + "redis_up", "Whether the queue's Redis answered this scrape.")
        try:
            families = self._read().result(timeout=READ_LIMIT_S)
        except (RedisError, TimeoutError) as exc:
            log.warning("metrics: Redis does not answer: %r", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _read(self) -> Future[list[Metric]]:
        """The read in flight, or a new one: in a daemon thread, so that a scrape can give up
        on it, and at most one at a time, so that a Redis that hangs holds one thread (and
        concurrent scrapes share a read)."""
        with self._lock:
            if self._reading is None or self._reading.done():
                self._reading = Future()
                thread = threading.Thread(
                    target=self._run, args=(self._reading,), name="metrics-read", daemon=True
                )
                thread.start()
            return self._reading

    def _run(self, future: Future[list[Metric]]) -> None:
        try:
            future.set_result(list(self._families()))
        except BaseException as exc:  # handed to the scrape that waits on it
            future.set_exception(exc)

    def _families(self) -> Iterator[Metric]:
        m = self.queue.metrics()
        stats = m.stats
        for key, (name, doc) in COUNTERS.items():
            counter = CounterMetricFamily(P + name, doc)
            counter.add_metric([], stats.counters.get(key, 0))
            yield counter
        failed = CounterMetricFamily(
            P + "items_failed", "Failures by class (retried or not).", labels=["reason_class"]
        )
        for cls, n in sorted(m.failed.items()):
            failed.add_metric([cls], n)
        yield failed
        dead = GaugeMetricFamily(
            P + "dead_letters", "Dead letters now, by class.", labels=["reason_class"]
        )
        for cls, n in sorted(m.dead_by_class.items()):
            dead.add_metric([cls], n)
        yield dead
        items = GaugeMetricFamily(P + "queue_items", "Items by state.", labels=["state"])
        for state, n in stats.counts.items():
            items.add_metric([state], n)
        yield items
        oldest = GaugeMetricFamily(
            P + "queue_oldest_item_age_seconds", "Age of the oldest queued item (0: none)."
        )
        oldest.add_metric([], stats.oldest_queued_age_s or 0.0)
        yield oldest
        paused = GaugeMetricFamily(P + "queue_paused", "1 while the queue is paused.")
        paused.add_metric([], int(stats.paused))
        yield paused
        last = GaugeMetricFamily(
            P + "last_success_timestamp_seconds", "Unix time of the last item done (0: never)."
        )
        last.add_metric([], m.last_done_s or 0.0)
        yield last
        decode = CounterMetricFamily(
            P + "decode_busy_seconds", "Decode actors' seconds decoding checkpointed chunks."
        )
        decode.add_metric([], m.busy_s.get("decode", 0.0))
        yield decode
        inference = CounterMetricFamily(
            P + "inference_busy_seconds",
            "Inference actors' seconds running the model and writing outputs of checkpointed "
            "chunks, by device.",
            labels=["device"],
        )
        for key, seconds in sorted(m.busy_s.items()):
            if key.startswith("inference:"):
                inference.add_metric([key.split(":", 1)[1]], seconds)
        yield inference
        for key, (name, doc) in HISTOGRAMS.items():
            family = HistogramMetricFamily(P + name, doc)
            family.add_metric([], *_buckets(m.histograms[key]))
            yield family
        stages = HistogramMetricFamily(
            P + "stage_seconds", "One video's seconds in each stage.", labels=["stage"]
        )
        for key, hist in m.histograms.items():
            if key.startswith("stage:"):
                stages.add_metric([key.split(":", 1)[1]], *_buckets(hist))
        yield stages
        yield from self._fleet()
        yield from self._redis()

    def _redis(self) -> Iterator[Metric]:
        """The server's memory and its limit: a queue on a server at maxmemory refuses
        writes (noeviction) or loses items (any other policy)."""
        try:
            info = self.queue.server_info()
        except ResponseError as exc:  # INFO refused (an ACL without it): the rest still counts
            log.warning("metrics: no INFO from Redis: %s", exc)
            return
        used = GaugeMetricFamily(P + "redis_memory_used_bytes", "Memory the Redis server uses.")
        used.add_metric([], float(info.get("used_memory", 0)))
        yield used
        limit = GaugeMetricFamily(
            P + "redis_memory_max_bytes", "The Redis server's maxmemory (0: no limit)."
        )
        limit.add_metric([], float(info.get("maxmemory", 0)))
        yield limit

    def _fleet(self) -> Iterator[Metric]:
        supervision = Supervision(self.queue)
        stale = self.settings.coordinator.stale_s
        kinds: dict[str, int] = {"decoder": 0, "inference": 0}
        for name, age in supervision.workers().items():
            if age < stale:
                kind = name.split("-", 1)[0]
                kinds[kind] = kinds.get(kind, 0) + 1
        workers = GaugeMetricFamily(
            P + "workers", "Workers heartbeating within the stale time, by kind.", labels=["kind"]
        )
        for kind, n in sorted(kinds.items()):
            workers.add_metric([kind], n)
        yield workers
        consumers = GaugeMetricFamily(
            P + "queue_consumers", "Decode actors alive to claim (0 with a backlog: alert)."
        )
        consumers.add_metric([], kinds["decoder"])
        yield consumers
        report = supervision.health()
        leader = GaugeMetricFamily(
            P + "coordinator_leader", "1 while a coordinator holds the leader lease."
        )
        leader.add_metric([], int(supervision.leader() is not None))
        yield leader
        at = report.get("at") if report else None
        report_age = GaugeMetricFamily(
            P + "coordinator_health_age_seconds",
            "Age of the leader's health report (absent: none lately).",
        )
        if isinstance(at, int | float):
            report_age.add_metric([], max(0.0, self.clock() - at))
        yield report_age
        healthy = GaugeMetricFamily(P + "coordinator_healthy", "1 while the health report is ok.")
        healthy.add_metric([], int(bool(report and report.get("ok"))))
        yield healthy
        gcs = GaugeMetricFamily(
            P + "ray_gcs_up",
            "1 while the leader's health report says its Ray GCS answers, 0 while it says the "
            "GCS is lost (absent: no report, or one that does not say).",
        )
        if report and isinstance(report.get("gcs"), bool):
            gcs.add_metric([], int(report["gcs"]))
        yield gcs
        tick = GaugeMetricFamily(
            P + "coordinator_tick_seconds",
            "How long the leader's last round of its pools took (its period: FRAMEFLEET_TICK_S).",
        )
        if report and isinstance(report.get("tick_s"), int | float):
            tick.add_metric([], float(report["tick_s"]))
        yield tick
        asked = GaugeMetricFamily(
            P + "autoscaler_requested",
            "The resources the leader asks Ray's autoscaler for (absent: it asks for none).",
            labels=["resource"],
        )
        for resource, amount in sorted(((report or {}).get("requested") or {}).items()):
            asked.add_metric([str(resource)], float(amount))
        yield asked


def _buckets(hist: Histogram) -> tuple[list[tuple[str, float]], float]:
    """Cumulative (le, count) pairs and the sum, as HistogramMetricFamily takes them."""
    running, pairs = 0, []
    for bound, n in zip((*hist.bounds, float("inf")), hist.counts, strict=True):
        running += n
        pairs.append(("+Inf" if bound == float("inf") else _le(bound), float(running)))
    return pairs, hist.sum_s


def _le(bound: float) -> str:
    return repr(float(bound))


def registry(
    queue: Queue, settings: Settings, clock: Callable[[], float] = time.time
) -> CollectorRegistry:
    """A registry holding only the queue's collector (no process metrics: the figures are
    the fleet's, and this process is one of several API replicas, maybe)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(QueueCollector(queue, settings, clock))
    return reg
