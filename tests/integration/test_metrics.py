"""GET /metrics after a known workload: the values read back by a real Prometheus (Debian's
`prometheus`) scraping the API on loopback and queried over its HTTP API, `promtool check
metrics` on the scrape, and a scrape's cost independent of the number of items."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis

from framefleet.ops.metrics import READ_LIMIT_S
from framefleet.queue import ChunkWork, EmbeddedServer, Queue, Supervision, Verdict, connect
from framefleet.settings import ApiSettings, QueueSettings, Settings
from tests.conftest import ManualClock, monitored
from tests.integration.test_api import READ, WRITE, Served
from tests.support.deadline import wait_for
from tests.support.prometheus import DEPLOY, Prometheus, promtool

T0 = 1_800_000_000_000  # the manual clock's start, ms
# the alert's condition as deploy/prometheus/rules deploys it, and as README "Metrics" writes it
BACKLOG_RULE = next(
    rule["expr"]
    for group in yaml.safe_load((DEPLOY / "rules" / "framefleet.yml").read_text())["groups"]
    for rule in group["rules"]
    if rule.get("alert") == "FramefleetBacklogWithoutConsumers"
)
BACKLOG_README = (
    'framefleet_queue_items{state="queued"} > 0 and on() framefleet_queue_consumers == 0'
)


def _workload(queue: Queue, clock: ManualClock) -> None:
    """Known events: 5 enqueued; a waits 2 s, runs 3 s in two chunks (48 frames), acked
    with its stages; b fails twice as not_a_video (retried, then dead); c and d are leased
    together, c's lease is renewed and d's runs out: a reap takes d back (a lease ended
    without its holder's word) and its holder's late ack is refused (a stale ack); an inbox
    entry refused. Leases handed out: a, b twice, c and d (5)."""
    _, b, c, d, _ = queue.enqueue([f"/v/{n}.mp4" for n in "abcde"])
    clock.advance(2_000)
    [la] = queue.claim(1, "decoder-g1-0")
    clock.advance(1_000)
    for i, frames in enumerate((32, 16)):
        work = ChunkWork(frames, decode_s=0.25, inference_s=0.5 + i, device="cuda")
        assert queue.progress(la, i, 2 if i else None, work=work)
    assert queue.progress(la, 1, 2, work=ChunkWork(16, 9.0, 9.0, "cuda"))  # counted once
    clock.advance(2_000)
    stages = {"fetch": 0.2, "decode": 0.5, "infer": 1.5, "write": 0.04}
    assert queue.ack(la, "file:///out/a", stages=stages) == Verdict.OK
    [lb] = queue.claim(1, "decoder-g1-0")
    assert queue.fail(lb, "moov atom not found", cls="not_a_video")
    clock.advance(60_000)
    [lb] = queue.claim(1, "decoder-g1-0")
    assert lb.id == b and queue.fail(lb, "not a video", retryable=False, cls="not_a_video")
    leased = queue.claim(2, "decoder-g1-1")
    assert [x.id for x in leased] == [c, d]
    assert queue.ack(la, "again") == Verdict.DUPLICATE
    queue.client.lpush(queue.keys.inbox, "{not json")
    queue.ingest_inbox()
    held, lapsed = leased
    clock.advance(20_000)
    assert queue.renew(held) == Verdict.OK
    clock.advance(15_000)  # d's 30 s are up; c's renewed lease has 15 s left
    assert queue.reap().requeued == 1
    assert queue.ack(lapsed, "late") not in (Verdict.OK, Verdict.DUPLICATE)
    # webhooks: one delivered, one failed once then given up (ops/webhooks.py records so)
    queue.outcome_group("hooks")
    queue.webhook_result("hooks", "1-1", "sent")
    failure = {"id": "x", "url": "https://h.example/", "error": "HTTP 500", "attempt": 1}
    queue.webhook_result("hooks", "1-2", "retry", {**failure, "gave_up": False})
    queue.webhook_result("hooks", "1-2", "gave_up", {**failure, "attempt": 2, "gave_up": True})


def _scrape(served: Served, token: str = READ) -> str:
    got = httpx.get(
        f"{served.url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert got.status_code == 200, got.text
    assert got.headers["content-type"].startswith("text/plain")
    return got.text


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
def workload(
    tmp_path: Path, valkey_client: Redis, request: pytest.FixtureRequest
) -> Iterator[tuple[Served, Queue]]:
    clock = ManualClock(T0)
    settings = Settings(
        queue=QueueSettings(name=f"m-{request.node.name[:30]}", lease_s=30),
        api=ApiSettings(token=WRITE, read_token=READ),
    )
    queue = Queue(valkey_client, settings.queue, clock=clock)
    _workload(queue, clock)
    sup = Supervision(queue)
    for worker in ("decoder-g1-0", "decoder-g1-1", "inference-g1-0"):
        sup.heartbeat(worker)
    with Served(settings, queue) as served:
        yield served, queue


EXPECTED: dict[str, float] = {
    "framefleet_redis_up": 1,
    "framefleet_items_enqueued_total": 5,
    "framefleet_items_succeeded_total": 1,
    "framefleet_items_retried_total": 1,
    "framefleet_items_dead_total": 1,
    "framefleet_stale_acks_total": 1,
    "framefleet_leases_expired_total": 1,
    "framefleet_leases_granted_total": 5,
    "framefleet_inbox_rejected_total": 1,
    "framefleet_webhooks_sent_total": 1,
    "framefleet_webhook_failures_total": 2,
    "framefleet_webhooks_given_up_total": 1,
    "framefleet_frames_processed_total": 48,
    'framefleet_items_failed_total{reason_class="not_a_video"}': 2,
    'framefleet_dead_letters{reason_class="not_a_video"}': 1,
    'framefleet_queue_items{state="queued"}': 2,
    'framefleet_queue_items{state="leased"}': 1,
    'framefleet_queue_items{state="done"}': 1,
    'framefleet_queue_items{state="dead"}': 1,
    'framefleet_queue_items{state="rejected"}': 1,
    "framefleet_queue_paused": 0,
    "framefleet_last_success_timestamp_seconds": (T0 + 5_000) / 1000,
    "framefleet_decode_busy_seconds_total": 0.5,
    'framefleet_inference_busy_seconds_total{device="cuda"}': 2.0,
    'framefleet_workers{kind="decoder"}': 2,
    'framefleet_workers{kind="inference"}': 1,
    "framefleet_queue_consumers": 2,
    "framefleet_coordinator_leader": 0,
    # first claims: a after 2 s, b after 5 s, c and d after 65 s
    "framefleet_queue_wait_seconds_count": 4,
    'framefleet_queue_wait_seconds_bucket{le="1.0"}': 0,
    'framefleet_queue_wait_seconds_bucket{le="5.0"}': 2,
    'framefleet_queue_wait_seconds_bucket{le="60.0"}': 2,
    'framefleet_queue_wait_seconds_bucket{le="120.0"}': 4,
    "framefleet_queue_wait_seconds_sum": 137.0,
    "framefleet_item_processing_seconds_count": 1,
    "framefleet_item_processing_seconds_sum": 3.0,
    'framefleet_item_processing_seconds_bucket{le="2.0"}': 0,
    'framefleet_item_processing_seconds_bucket{le="5.0"}': 1,
    "framefleet_item_latency_seconds_sum": 5.0,
    'framefleet_stage_seconds_sum{stage="infer"}': 1.5,
    'framefleet_stage_seconds_bucket{le="0.05",stage="write"}': 1,
    'framefleet_stage_seconds_bucket{le="0.01",stage="write"}': 0,
    'framefleet_stage_seconds_count{stage="fetch"}': 1,
}


def _key(selector: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    name, _, rest = selector.partition("{")
    labels = [kv.split("=", 1) for kv in rest.rstrip("}").split(",") if kv]
    return name, tuple(sorted((k, v.strip('"')) for k, v in labels))


def test_the_scrape_gives_the_workload_figures(workload: tuple[Served, Queue]) -> None:
    served, _ = workload
    samples = _samples(_scrape(served))
    for selector, value in EXPECTED.items():
        assert samples.get(_key(selector)) == pytest.approx(value), selector
    assert samples[_key("framefleet_queue_oldest_item_age_seconds")] > 0


def test_redis_memory_and_its_limit_come_from_the_server(
    workload: tuple[Served, Queue], valkey_client: Redis
) -> None:
    served, _ = workload
    samples = _samples(_scrape(served))
    limit = int(str(valkey_client.config_get("maxmemory")["maxmemory"]))
    assert samples[_key("framefleet_redis_memory_max_bytes")] == limit
    assert samples[_key("framefleet_redis_memory_used_bytes")] > 1_000_000  # a server's least


def test_the_ray_gcs_state_is_the_leader_reports(workload: tuple[Served, Queue]) -> None:
    """1 or 0 as the health report says; absent with no report, or one that does not say
    (a driver that has not reached Ray yet)."""
    served, queue = workload
    sup, gcs = Supervision(queue), _key("framefleet_ray_gcs_up")
    assert gcs not in _samples(_scrape(served))
    for report, value in (({"gcs": False}, 0), ({"gcs": True}, 1), ({"error": "no Ray"}, None)):
        sup.write_health({"ok": False, "at": T0 / 1000, **report}, ttl_s=60)
        assert _samples(_scrape(served)).get(gcs) == value, report


def test_the_tick_time_and_the_autoscaler_request_are_the_leader_reports(
    workload: tuple[Served, Queue],
) -> None:
    served, queue = workload
    sup = Supervision(queue)
    tick, gpus = (
        _key("framefleet_coordinator_tick_seconds"),
        _key('framefleet_autoscaler_requested{resource="GPU"}'),
    )
    sup.write_health({"ok": True, "at": time.time()}, ttl_s=60)
    assert not {tick, gpus} & set(_samples(_scrape(served)))
    report = {"tick_s": 0.25, "requested": {"CPU": 6.0, "GPU": 1.5}}
    sup.write_health({"ok": True, "at": time.time(), **report}, ttl_s=60)
    samples = _samples(_scrape(served))
    assert (samples[tick], samples[gpus]) == (0.25, 1.5)
    assert samples[_key('framefleet_autoscaler_requested{resource="CPU"}')] == 6.0


def test_the_leader_its_health_report_and_retried_dead_letters_are_scraped(
    workload: tuple[Served, Queue],
) -> None:
    """No coordinator: no leader, not healthy, no report age. A leader whose ok report was
    written 42 s ago: leader 1, healthy 1, age 42 s; its next report not ok: healthy 0, age
    back near 0. The dead letter sent back by an operator: dead_retried 1, none dead."""
    served, queue = workload
    sup = Supervision(queue)
    leader, healthy, age, retried, dead = map(_key, (
        "framefleet_coordinator_leader", "framefleet_coordinator_healthy",
        "framefleet_coordinator_health_age_seconds", "framefleet_dead_retried_total",
        'framefleet_dead_letters{reason_class="not_a_video"}',
    ))  # fmt: skip
    before = _samples(_scrape(served))
    assert (before[leader], before[healthy], before[retried], before[dead]) == (0, 0, 0, 1)
    assert age not in before
    assert sup.hold_leadership("coordinator-1", ttl_s=60)
    report = {"ok": True, "leader": "coordinator-1", "gcs": True}
    sup.write_health({**report, "at": time.time() - 42}, ttl_s=60)
    led = _samples(_scrape(served))
    assert (led[leader], led[healthy]) == (1, 1)
    assert 42 <= led[age] < 42 + 30, led[age]
    sup.write_health({**report, "ok": False, "at": time.time()}, ttl_s=60)
    unwell = _samples(_scrape(served))
    assert (unwell[leader], unwell[healthy]) == (1, 0)
    assert 0 <= unwell[age] < 30, unwell[age]
    [letter] = queue.dead_ids()
    assert queue.retry_dead([letter]) == [letter]
    after = _samples(_scrape(served))
    assert after[retried] == 1 and after.get(dead, 0) == 0
    assert after[_key('framefleet_queue_items{state="queued"}')] == 3


def test_a_scrape_says_redis_is_down_before_prometheus_gives_up(tmp_path: Path) -> None:
    """With Redis gone, the client retries for 20 s and more; the scrape answers within
    READ_LIMIT_S (Prometheus waits 10 s by default) with framefleet_redis_up 0 alone, and
    with every figure again once Redis is back."""
    server = EmbeddedServer(tmp_path / "redis").start()
    client = connect(server.url)
    settings = Settings(queue=QueueSettings(name="m-down"), api=ApiSettings(read_token=READ))
    up = _key("framefleet_redis_up")
    try:
        with Served(settings, Queue(client, settings.queue)) as served:
            assert _samples(_scrape(served))[up] == 1
            server.kill()
            started = time.monotonic()
            down = _samples(_scrape(served))
            took = time.monotonic() - started
            assert down == {up: 0}
            assert READ_LIMIT_S - 0.5 < took < READ_LIMIT_S + 3, took
            server = EmbeddedServer(server.data_dir, port=server.port).start()
            wait_for(lambda: _samples(_scrape(served))[up] == 1, 60, "Redis up again")
            assert _key('framefleet_queue_items{state="queued"}') in _samples(_scrape(served))
    finally:
        client.close()
        server.stop()


def test_metrics_need_a_token(workload: tuple[Served, Queue]) -> None:
    served, _ = workload
    assert httpx.get(f"{served.url}/metrics").status_code == 401
    wrong = httpx.get(f"{served.url}/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert "framefleet_redis_up 1.0" in _scrape(served, WRITE)


def test_promtool_accepts_the_scrape(workload: tuple[Served, Queue]) -> None:
    text = _scrape(workload[0])
    checked = promtool("check", "metrics", stdin=text)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == "" and checked.stderr.strip() == "", checked.stderr


def test_a_real_prometheus_scrapes_every_metric(
    workload: tuple[Served, Queue], tmp_path: Path
) -> None:
    served, queue = workload
    prom = Prometheus(tmp_path, f"127.0.0.1:{served.port}", READ)
    try:
        prom.wait_scraped()
        for selector, value in EXPECTED.items():
            result = prom.query(selector)
            assert len(result) == 1, (selector, result)
            assert float(result[0]["value"][1]) == pytest.approx(value), selector
        # the divisions the metrics are for: GPU-seconds a video, and the backlog alert
        [per_video] = prom.query(
            "framefleet_inference_busy_seconds_total / ignoring(device) "
            "group_left framefleet_items_succeeded_total"
        )
        assert float(per_video["value"][1]) == pytest.approx(2.0)
        assert prom.query("framefleet_redis_memory_used_bytes > 0")
        assert prom.query("framefleet_redis_memory_max_bytes >= 0")
        # a backlog and nobody to consume it: the alert rule's condition and the README's
        # query, empty while two decode actors heartbeat, the 2 queued once they have left
        backlog = (BACKLOG_RULE, BACKLOG_README)
        for promql in backlog:
            assert prom.query(promql) == [], promql
        for worker in ("decoder-g1-0", "decoder-g1-1"):
            Supervision(queue).leave(worker)
        wait_for(
            lambda: all(prom.answers(promql) for promql in backlog),
            30,
            "a backlog without consumers in Prometheus",
        )
        for promql in backlog:
            [found] = prom.query(promql)
            assert found["metric"]["state"] == "queued", found
            assert float(found["value"][1]) == 2, (promql, found)
    finally:
        prom.close()


def test_a_scrape_costs_the_same_with_100k_items_queued(
    tmp_path: Path, valkey_client: Redis
) -> None:
    """O(states + classes + buckets): the Redis commands of a scrape (MONITOR shows each one
    a script runs) are the same with 10 items queued and with 100,000."""
    settings = Settings(queue=QueueSettings(name="m-100k"), api=ApiSettings(read_token=READ))
    queue = Queue(valkey_client, settings.queue)
    with Served(settings, queue) as served:
        queue.enqueue([f"/v/{i}.mp4" for i in range(10)])
        _scrape(served)  # scripts loaded
        _, small = monitored(valkey_client, lambda: _scrape(served))
        queue.enqueue([f"/v/more-{i}.mp4" for i in range(100_000 - 10)])
        text, big = monitored(valkey_client, lambda: _scrape(served))
    assert _samples(text)[_key('framefleet_queue_items{state="queued"}')] == 100_000
    small, big = _work(small), _work(big)
    assert len(big) == len(small), (small, big)
    assert len(big) < 80, big


def _work(commands: list[str]) -> list[str]:
    """The commands' verbs, less a new connection's handshake (the pool may open one)."""
    handshake = ("HELLO", "CLIENT", "AUTH", "SELECT")
    return [c.split()[0] for c in commands if not c.startswith(handshake)]
