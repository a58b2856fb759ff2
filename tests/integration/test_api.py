"""The HTTP API served by uvicorn on a loopback port, over the embedded Redis, called with
a real HTTP client: items, the queue's counts, pause and resume, tokens, bad input."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import uvicorn
from redis import Redis

from framefleet.ops.server import server_config
from framefleet.queue import Queue, Supervision, Verdict
from framefleet.queue.supervision import worker_name
from framefleet.settings import ApiSettings, QueueSettings, Settings, SourceSettings
from tests.conftest import ManualClock
from tests.support.deadline import wait_for
from tests.support.servers import free_port, unread_bytes

WRITE, READ = "write-token-0123456789", "read-token-0123456789"


class Served:
    """One app on uvicorn in a thread, on a free loopback port."""

    def __init__(self, settings: Settings, queue: Queue) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(server_config(settings, queue, self.port))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)

    def client(self, token: str | None = WRITE) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


def _settings(tmp_path: Path, queue: str, **api: Any) -> Settings:
    videos = tmp_path / "videos"
    videos.mkdir(exist_ok=True)
    return Settings(
        queue=QueueSettings(name=queue),
        source=SourceSettings(allowed_roots=(videos,)),
        api=ApiSettings(**{"token": WRITE, "read_token": READ, **api}),
    )


@pytest.fixture
def api(tmp_path: Path, valkey_client: Redis, request: pytest.FixtureRequest) -> Iterator[Served]:
    settings = _settings(tmp_path, f"api-{request.node.name[:40]}")
    with Served(settings, Queue(valkey_client, settings.queue)) as served:
        yield served


def test_enqueue_one_or_a_batch_is_idempotent_and_says_what_existed(api: Served) -> None:
    with api.client() as c:
        one = c.post("/v1/items", json={"uri": "s3://videos/a.mp4", "priority": "high"})
        assert one.status_code == 200, one.text
        [a] = one.json()["new"]
        batch = {
            "items": [
                {"uri": "s3://videos/a.mp4"},
                {"uri": "s3://videos/b.mp4", "id": "cam1-b", "etag": "e1", "size": 10},
                {"uri": "s3://videos/c.mp4", "meta": {"camera": "cam1", "fps": 29.97}},
            ]
        }
        again = c.post("/v1/items", json=batch).json()
        assert len(again["new"]) == 2 and "cam1-b" in again["new"]
        assert again["existing"] == [{"id": a, "state": "queued"}]
        item = c.get(f"/v1/items/{a}").json()
        assert (item["uri"], item["state"], item["priority"]) == ("s3://videos/a.mp4", "queued", 9)
        assert item["attempts"] == 0 and item["created_at"] > 0 and item["owner"] is None
        meta = c.get(f"/v1/items/{again['new'][-1]}").json()["meta"]
        assert meta == {"camera": "cam1", "fps": 29.97}
        assert c.get("/v1/items/nope").status_code == 404


def test_a_batch_with_one_bad_item_writes_nothing_and_names_it(api: Served, tmp_path: Path) -> None:
    inside = tmp_path / "videos" / "ok.mp4"
    cases = [
        ({"uri": "ftp://x/y.mp4"}, "uri"),
        ({"uri": "s3://v/a.mp4", "priority": "urgent"}, "priority"),
        ({"uri": "s3://v/a.mp4", "id": "has space"}, "id"),
        ({"uri": "s3://v/a.mp4", "id": "x/../victim"}, "'..' segment"),
        ({"uri": "/etc/passwd"}, "outside the allowed roots"),
        ({"uri": "http://127.0.0.1:6379/x.mp4"}, "loopback"),
        ({"uri": "http://169.254.169.254/latest/meta-data"}, "link-local"),
        ({"uri": "http://10.1.2.3/v.mp4"}, "private"),
    ]
    with api.client() as c:
        before = c.get("/v1/queue").json()["counters"].get("enqueued_total", 0)
        for bad, says in cases:
            body = {"items": [{"uri": str(inside)}, {"uri": "s3://v/ok.mp4"}, bad]}
            got = c.post("/v1/items", json=body)
            assert got.status_code == 422, (bad, got.text)
            detail = got.json()["detail"]
            assert detail["index"] == 2 and says in detail["error"], (bad, detail)
        # the schema's own checks: a wrong type, an unknown field, a batch too large, not JSON
        assert c.post("/v1/items", json={"uri": 5}).status_code == 422
        unknown = c.post("/v1/items", json={"uri": "s3://v/a.mp4", "colour": "red"})
        assert unknown.status_code == 422 and "colour" in unknown.text
        big = {"items": [{"uri": f"s3://v/{i}.mp4"} for i in range(10_001)]}
        assert c.post("/v1/items", json=big).status_code == 422
        assert (
            c.post(
                "/v1/items", content=b"{not json", headers={"Content-Type": "application/json"}
            ).status_code
            == 422
        )
        assert c.get("/v1/queue").json()["counters"].get("enqueued_total", 0) == before


def test_a_body_over_the_limit_is_refused_with_413(tmp_path: Path, valkey_client: Redis) -> None:
    settings = _settings(tmp_path, "api-limit", max_body_bytes=4096)
    with Served(settings, Queue(valkey_client, settings.queue)) as served, served.client() as c:
        body = {"items": [{"uri": f"s3://videos/{i:04d}.mp4"} for i in range(200)]}
        assert c.post("/v1/items", json=body).status_code == 413

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it comes
            yield b'{"items": ['
            for i in range(200):
                yield f'{{"uri": "s3://videos/{i:04d}.mp4"}},'.encode()
            yield b'{"uri": "s3://videos/last.mp4"}]}'

        sent = c.post("/v1/items", content=chunks(), headers={"Content-Type": "application/json"})
        assert sent.status_code == 413
        assert c.get("/v1/queue").json()["counts"]["queued"] == 0


def test_tokens_decide_who_may_read_and_write(tmp_path: Path, valkey_client: Redis) -> None:
    settings = _settings(tmp_path, "api-tokens")
    queue = Queue(valkey_client, settings.queue)
    with Served(settings, queue) as served:
        with served.client(None) as anonymous:
            assert anonymous.get("/healthz").json() == {"status": "ok"}  # liveness: open
            assert anonymous.get("/v1/queue").status_code == 401
            assert anonymous.post("/v1/items", json={"uri": "s3://v/a.mp4"}).status_code == 401
        with served.client("not-the-token") as wrong:
            assert wrong.get("/v1/queue").status_code == 401
        with served.client(READ) as reader:
            assert reader.get("/v1/queue").status_code == 200
            assert reader.post("/v1/items", json={"uri": "s3://v/a.mp4"}).status_code == 403
            assert reader.post("/v1/queue/pause").status_code == 403
        with served.client(WRITE) as writer:
            assert writer.post("/v1/items", json={"uri": "s3://v/a.mp4"}).status_code == 200
    readonly = replace(settings, api=replace(settings.api, read_only=True))
    with Served(readonly, queue) as served, served.client(WRITE) as writer:
        assert writer.get("/v1/queue").status_code == 200
        refused = writer.post("/v1/items", json={"uri": "s3://v/b.mp4"})
        assert refused.status_code == 403 and "read-only" in refused.text
    assert queue.stats().counts["queued"] == 1


def test_list_pages_cancel_pause_and_resume(api: Served) -> None:
    with api.client() as c:
        ids = c.post(
            "/v1/items", json={"items": [{"uri": f"s3://v/{i}.mp4"} for i in range(5)]}
        ).json()["new"]
        seen: list[str] = []
        cursor = None
        while True:
            params: dict[str, str | int] = {"state": "queued", "limit": 2}
            if cursor:
                params["cursor"] = cursor
            page = c.get("/v1/items", params=params).json()
            seen += [i["id"] for i in page["items"]]
            cursor = page["cursor"]
            if cursor is None:
                break
        assert seen == ids[::-1]  # newest first
        assert c.get("/v1/items", params={"state": "nope"}).status_code == 422
        assert c.delete(f"/v1/items/{ids[0]}").json() == {"id": ids[0], "state": "dead"}
        again = c.delete(f"/v1/items/{ids[0]}")
        assert again.status_code == 409 and again.json()["detail"]["state"] == "dead"
        assert c.delete("/v1/items/nope").status_code == 404
        assert c.post("/v1/queue/pause").json() == {"paused": True}
        status = c.get("/v1/queue").json()
        assert status["paused"] is True and status["counts"]["queued"] == 4
        assert status["counts"]["dead"] == 1 and status["oldest_queued_age_s"] >= 0
        assert c.post("/v1/queue/resume").json() == {"paused": False}
        assert c.get("/v1/queue").json()["paused"] is False


def test_a_leased_item_shows_its_owner_and_lease_age(api: Served, valkey_client: Redis) -> None:
    with api.client() as c:
        [item_id] = c.post("/v1/items", json={"uri": "s3://v/leased.mp4"}).json()["new"]
        name = c.get("/v1/queue").json()["name"]
        [lease] = Queue(valkey_client, QueueSettings(name=name)).claim(1, "decoder-7")
        item = c.get(f"/v1/items/{item_id}").json()
        assert item["state"] == "leased" and item["owner"] == "decoder-7"
        assert 0 <= item["lease_age_s"] < 60 and item["claimed_at"] > 0
        cancel = c.delete(f"/v1/items/{item_id}")
        assert cancel.status_code == 409 and cancel.json()["detail"]["state"] == "leased"
        assert lease.id == item_id


def test_readyz_wants_a_fresh_leader_report_and_the_schema_is_served(api: Served) -> None:
    with api.client() as c:
        ready = c.get("/readyz")
        assert ready.status_code == 503 and "coordinator" in ready.json()["problems"][0]
        schema = c.get("/openapi.json").json()
        assert "/v1/items" in schema["paths"] and "/v1/queue/pause" in schema["paths"]
        assert c.get("/docs").status_code == 404  # its page would load assets from a CDN


def test_readyz_and_the_dashboard_say_when_redis_is_full(api: Served, valkey_client: Redis) -> None:
    """A server over its maxmemory refuses new work (noeviction): /readyz is 503 and says
    Redis is full, /v1/redis says so, the dashboard warns, and an enqueue is refused with
    503 saying why; all well again once it has room."""
    with api.client() as c:
        name = c.get("/v1/queue").json()["name"]
        q = Queue(valkey_client, QueueSettings(name=name))
        Supervision(q).write_health({"ok": True, "at": time.time(), "leader": "c1"}, ttl_s=60)
        assert c.get("/readyz").status_code == 200
        used = int(valkey_client.info("memory")["used_memory"])
        valkey_client.config_set("maxmemory", used - 64 * 1024)
        try:
            ready = c.get("/readyz")
            assert ready.status_code == 503, ready.text
            [problem] = ready.json()["problems"]
            assert problem.startswith("redis: full") and "maxmemory" in problem
            assert c.get("/v1/redis").json()["full"] is True
            refused = c.post("/v1/items", json={"uri": "s3://v/new.mp4"})
            assert refused.status_code == 503 and "full" in refused.json()["detail"]
            with api.client(None) as browser:
                same = {"Sec-Fetch-Site": "same-origin"}
                login = browser.post("/ui/login", data={"token": READ, "next": "/"}, headers=same)
                assert login.status_code == 303, login.text
                page = browser.get("/ui/")
                assert page.status_code == 200 and "Redis is full" in page.text
        finally:
            valkey_client.config_set("maxmemory", 0)
        assert c.get("/readyz").status_code == 200
        assert c.get("/v1/redis").json()["full"] is False


def test_the_redis_route_describes_the_server_as_it_says_itself(
    api: Served, valkey_client: Redis
) -> None:
    """GET /v1/redis: the server's name and version, memory used and its limit, the
    eviction policy, AOF and its fsync policy, the last write's status and uptime, as the
    server's own INFO and CONFIG give them (the embedded server: AOF on, everysec)."""
    with api.client() as c:
        got = c.get("/v1/redis").json()
    said = valkey_client.info("server")
    version = said.get("valkey_version")
    assert got["server"] == (f"Valkey {version}" if version else f"Redis {said['redis_version']}")
    assert re.fullmatch(r"(Valkey|Redis) \d+\.\d+\.\d+", got["server"]), got["server"]
    assert got["reachable"] is True and got["full"] is False
    used = int(valkey_client.info("memory")["used_memory"])
    assert got["used_memory"] > 1_000_000 and abs(got["used_memory"] - used) < 16 << 20, got
    assert re.fullmatch(r"\d+(\.\d+)?[KMG]", got["used_memory_human"]), got
    config = valkey_client.config_get("*")
    assert got["maxmemory"] == int(str(config["maxmemory"]))
    assert got["maxmemory_policy"] == config["maxmemory-policy"]
    assert got["aof_enabled"] == 1 and config["appendonly"] == "yes"
    assert got["appendfsync"] == config["appendfsync"] == "everysec"
    assert got["aof_last_write_status"] == "ok"
    assert 0 <= got["uptime_in_seconds"] == pytest.approx(said["uptime_in_seconds"], abs=5)


def test_the_history_counts_the_videos_done_and_dead_in_each_minute(
    tmp_path: Path, valkey_client: Redis
) -> None:
    """GET /v1/queue/history?minutes=3: a row for each of the last 3 whole minutes and the
    current one, oldest first, `at` its start (unix seconds): 2 done in the first minute, 1
    dead in the second, none in the third, 1 done in the current one."""
    clock = ManualClock(1_800_000_000_000)  # a minute's start
    start = clock() / 1000
    settings = _settings(tmp_path, "api-history")
    q = Queue(valkey_client, settings.queue, clock=clock)
    with Served(settings, q) as served, served.client() as c:
        body = {"items": [{"uri": f"s3://v/h{i}.mp4"} for i in range(4)]}
        assert len(c.post("/v1/items", json=body).json()["new"]) == 4
        leases = q.claim(3, "decoder-g1-0")
        clock.advance(10_000)
        assert all(q.ack_many([(lease, "") for lease in leases[:2]]))
        clock.advance(60_000)  # 1 min 10 s
        assert q.fail(leases[2], "not a video", retryable=False, cls="not_a_video")
        clock.advance(115_000)  # 3 min 5 s: the current minute is the fourth
        [last] = q.claim(1, "decoder-g1-0")
        assert q.ack(last, "") == Verdict.OK
        rows = c.get("/v1/queue/history", params={"minutes": 3}).json()["minutes"]
        assert rows == [
            {"at": start, "done": 2, "dead": 0},
            {"at": start + 60, "done": 0, "dead": 1},
            {"at": start + 120, "done": 0, "dead": 0},
            {"at": start + 180, "done": 1, "dead": 0},
        ]
        hour = c.get("/v1/queue/history").json()["minutes"]  # 60 by default
        assert len(hour) == 61 and hour[-4:] == rows
        assert sum(m["done"] for m in hour) == 3 and sum(m["dead"] for m in hour) == 1
        for bad in (0, 1441):
            assert c.get("/v1/queue/history", params={"minutes": bad}).status_code == 422


def test_the_audit_log_keeps_the_newest_10_000_actions(api: Served, valkey_client: Redis) -> None:
    """README: the newest 10,000 kept. A log already holding 10,000 earlier actions (as
    Queue.record writes them, newest first) takes two more: still 10,000, the two new ones
    at its head, the two oldest gone."""
    with api.client() as c:
        q = Queue(valkey_client, QueueSettings(name=c.get("/v1/queue").json()["name"]))
        earlier = [
            json.dumps({"action": "earlier", "n": n, "who": "write", "at": n}, sort_keys=True)
            for n in range(10_000)
        ]
        valkey_client.lpush(q.keys.audit, *earlier)  # n 0, the oldest, at the tail
        assert c.post("/v1/queue/pause").status_code == 200
        assert c.post("/v1/queue/resume").status_code == 200
        assert valkey_client.llen(q.keys.audit) == 10_000
        newest = c.get("/v1/audit", params={"limit": 3}).json()
        assert [(e["action"], e.get("n")) for e in newest] == [
            ("resume", None),
            ("pause", None),
            ("earlier", 9_999),
        ]
        kept = [json.loads(e)["n"] for e in valkey_client.lrange(q.keys.audit, 2, -1)]
        assert kept == list(range(9_999, 1, -1))  # 0 and 1 dropped


def test_pages_hold_their_place_while_items_come_and_go(api: Served, valkey_client: Redis) -> None:
    """Done items acked in one batch share one score (the ack's time): the cursor is a
    place (score and id), so a page boundary inside the tie loses and repeats nothing, and
    items finished meanwhile do not shift the next page."""
    with api.client() as c:
        name = c.get("/v1/queue").json()["name"]
        q = Queue(valkey_client, QueueSettings(name=name))
        c.post("/v1/items", json={"items": [{"uri": f"s3://v/{i}.mp4"} for i in range(7)]})
        leases = q.claim(7, "w")
        assert all(q.ack_many([(lease, "") for lease in leases]))  # one time for all seven
        first = c.get("/v1/items", params={"state": "done", "limit": 3}).json()
        c.post("/v1/items", json={"uri": "s3://v/later.mp4"})
        [late] = q.claim(1, "w")
        q.ack(late, "")  # newer than the cursor: not on the pages after it
        second = c.get(
            "/v1/items", params={"state": "done", "limit": 3, "cursor": first["cursor"]}
        ).json()
        third = c.get(
            "/v1/items", params={"state": "done", "limit": 3, "cursor": second["cursor"]}
        ).json()
        got = [i["id"] for page in (first, second, third) for i in page["items"]]
        assert sorted(got) == sorted(lease.id for lease in leases) and len(set(got)) == 7
        assert third["cursor"] is None
        bad = c.get("/v1/items", params={"state": "done", "cursor": "not-a-cursor"})
        assert bad.status_code == 422


def test_queue_throughput_drain_time_workers_and_health(api: Served, valkey_client: Redis) -> None:
    with api.client() as c:
        name = c.get("/v1/queue").json()["name"]
        q = Queue(valkey_client, QueueSettings(name=name))
        c.post("/v1/items", json={"items": [{"uri": f"s3://v/{i}.mp4"} for i in range(6)]})
        decoder = worker_name("decoder", "g1", 0)  # as the coordinator names a decode actor
        leases = q.claim(4, decoder)
        q.ack_many([(lease, "") for lease in leases[:3]])
        q.fail(leases[3], "not a video", retryable=False, cls="not_a_video")
        info: dict[str, str | int] = {"node": "ab12", "host": "gpu-node-3", "pid": 4242}
        Supervision(q).heartbeat(decoder, holding=[], info=info)
        status = c.get("/v1/queue").json()
        assert status["throughput"]["1m"] == {"done": 3, "dead": 1, "per_s": round(4 / 60, 3)}
        assert status["throughput"]["60m"]["done"] == 3
        # 2 queued at 4 videos in 5 minutes
        assert status["drain_s"] == pytest.approx(2 / round(4 / 300, 3), rel=1e-3)
        [worker] = c.get("/v1/workers").json()
        assert worker["name"] == "decoder-g1-0" and worker["kind"] == "decoder"  # README's
        assert worker["items"] == [] and 0 <= worker["heartbeat_age_s"] < 30
        assert (worker["node"], worker["host"], worker["pid"]) == ("ab12", "gpu-node-3", 4242)
        assert c.get("/v1/health").json() == {"report": None, "age_s": None}
        Supervision(q).write_health({"ok": True, "at": time.time(), "leader": "c1"}, ttl_s=30)
        health = c.get("/v1/health").json()
        assert health["report"]["leader"] == "c1" and 0 <= health["age_s"] < 30
        assert c.get("/readyz").status_code == 200


def _kill(q: Queue, n: int, cls: str, prefix: str) -> list[str]:
    """n new items claimed and failed for good with class `cls`."""
    ids = q.enqueue([f"s3://v/{prefix}-{i}.mp4" for i in range(n)])
    for lease in q.claim(n, "w"):
        assert q.fail(lease, f"{cls} ({prefix})", retryable=False, cls=cls)
    return ids


def test_dead_letters_by_class_retried_and_purged_with_a_count_and_a_reason(
    api: Served, valkey_client: Redis
) -> None:
    """A dry run says how many a bulk action would touch; the action wants that count back
    and a reason, and goes to the audit log with who did it; a retried item is the same
    item (id, uri, meta) with fresh counts."""
    with api.client() as c:
        name = c.get("/v1/queue").json()["name"]
        q = Queue(valkey_client, QueueSettings(name=name))
        corrupt = _kill(q, 3, "corrupt", "cam1")
        missing = _kill(q, 2, "not_found", "cam2")
        assert c.get("/v1/dead/groups").json() == {
            "groups": {"corrupt": 3, "not_found": 2},
            "total": 5,
        }
        page = c.get("/v1/dead", params={"limit": 10}).json()
        assert {i["id"] for i in page["items"]} == {*corrupt, *missing}
        assert {i["dead_class"] for i in page["items"]} == {"corrupt", "not_found"}
        # a dry run touches nothing
        dry = c.post("/v1/dead/retry", json={"class": "corrupt"}).json()
        token = dry.pop("token")
        assert dry == {"dry_run": True, "class": "corrupt", "count": 3} and len(token) == 16
        assert c.get("/v1/dead/groups").json()["total"] == 5
        # a wrong count (someone acted meanwhile), no token, and no reason are refused
        stale = c.post(
            "/v1/dead/retry",
            json={"class": "corrupt", "confirm": 2, "token": token, "reason": "x"},
        )
        assert stale.status_code == 409 and stale.json()["detail"]["count"] == 3
        untokened = {"class": "corrupt", "confirm": 3, "reason": "x"}
        assert c.post("/v1/dead/retry", json=untokened).status_code == 422
        confirmed = {"class": "corrupt", "confirm": 3, "token": token}
        assert c.post("/v1/dead/retry", json=confirmed).status_code == 422  # no reason
        done = c.post("/v1/dead/retry", json={**confirmed, "reason": "decoder fixed in 1.4"}).json()
        assert done == {"dry_run": False, "class": "corrupt", "count": 3}
        for item_id in corrupt:
            item = c.get(f"/v1/items/{item_id}").json()
            assert item["state"] == "queued" and item["attempts"] == 0
            assert item["uri"].startswith("s3://v/cam1-")  # the same item
        # one by one, and a purge of what is left
        assert c.post(f"/v1/dead/{missing[0]}/retry").json()["state"] == "queued"
        assert c.post(f"/v1/dead/{missing[0]}/retry").status_code == 409  # not dead now
        assert c.post("/v1/dead/nope/retry").status_code == 404
        dry = c.delete("/v1/dead").json()
        assert {k: dry[k] for k in ("dry_run", "class", "count")} == {
            "dry_run": True,
            "class": None,
            "count": 1,
        }
        assert c.delete("/v1/dead", params={"confirm": 1, "reason": "x"}).status_code == 422
        purged = c.delete(
            "/v1/dead", params={"confirm": 1, "token": dry["token"], "reason": "camera 2 retired"}
        )
        assert purged.json()["count"] == 1 and c.get(f"/v1/items/{missing[1]}").status_code == 404
        log = c.get("/v1/audit").json()
        assert [(e["action"], e.get("count"), e.get("why")) for e in log] == [
            ("purge", 1, "camera 2 retired"),
            ("retry", 1, None),
            ("retry", 3, "decoder fixed in 1.4"),
        ]
        assert all(e["who"] == "write" and e["at"] > 0 for e in log)
    with api.client(READ) as reader:
        assert reader.post("/v1/dead/retry", json={"class": None}).status_code == 403
        assert reader.get("/v1/audit").status_code == 200


def test_ids_with_slashes_are_reachable_at_every_route(api: Served) -> None:
    """An id may hold `/` (a camera's path, say): every route that names an item takes it,
    written as is or with the slashes encoded."""
    with api.client() as c:
        ids = ["cam1/2026-12-01/clip.mp4", "cam1/b"]
        items = [{"uri": f"s3://v/{i}", "id": i} for i in ids]
        assert c.post("/v1/items", json={"items": items}).json()["new"] == ids
        slashed, short = ids
        assert c.get(f"/v1/items/{slashed}").json()["id"] == slashed
        assert c.get("/v1/items/" + quote(slashed, safe="")).json()["id"] == slashed
        assert c.get("/v1/items/cam1").status_code == 404  # a prefix is not the item
        assert c.get(f"/v1/items/{slashed}/manifest").status_code == 404  # not done yet
        assert c.delete(f"/v1/items/{slashed}").json() == {"id": slashed, "state": "dead"}
        assert c.get(f"/v1/items/{slashed}").json()["state"] == "dead"
        assert c.post(f"/v1/dead/{slashed}/retry").json() == {"id": slashed, "state": "queued"}
        assert c.get(f"/v1/items/{short}").json()["state"] == "queued"  # untouched
        assert c.delete(f"/v1/items/{slashed}").status_code == 200
        assert c.delete(f"/v1/dead/{slashed}").json() == {"id": slashed, "state": "purged"}
        assert c.get(f"/v1/items/{slashed}").status_code == 404
        assert c.get(f"/v1/items/{short}").status_code == 200


def _aws_record(key: str, event: str = "ObjectCreated:Put", **obj: Any) -> dict[str, Any]:
    """One record as S3 sends it (documented shape; the key URL-encoded)."""
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "eventTime": "2026-12-01T10:00:00.000Z",
        "eventName": event,
        "s3": {
            "s3SchemaVersion": "1.0",
            "bucket": {"name": "cams", "arn": "arn:aws:s3:::cams"},
            "object": {"key": key, "size": 52_428_800, "eTag": "0123abcd", **obj},
        },
    }


def test_s3_event_notifications_of_aws_sns_eventbridge_and_minio(
    api: Served, valkey_client: Redis
) -> None:
    """Each ObjectCreated record of a video key becomes s3://bucket/key (decoded), once
    however often it is delivered; a new version is a new item; test events, deletions
    and other suffixes are ignored; the source record is in meta."""

    direct = {
        "Records": [
            _aws_record("2026%2F12%2F01%2Flobby+cam+%2B%C3%A9t%C3%A9.mp4", sequencer="0A1"),
            _aws_record("notes.txt"),
            _aws_record("gone.mp4", event="ObjectRemoved:Delete"),
        ]
    }
    with api.client() as c:
        name = c.get("/v1/queue").json()["name"]
        q = Queue(valkey_client, QueueSettings(name=name))
        first = c.post("/v1/events/s3", json=direct).json()
        assert (first["enqueued"], first["duplicates"], first["ignored"]) == (1, 0, 2)
        [item_id] = first["ids"]
        item = q.get(item_id)
        assert item is not None and item.uri == "s3://cams/2026/12/01/lobby cam +été.mp4"
        assert item.etag == "0123abcd" and item.size == 52_428_800
        assert item.meta["s3_sequencer"] == "0A1" and item.meta["s3_event"] == "ObjectCreated:Put"
        again = c.post("/v1/events/s3", json=direct).json()  # at least once: a duplicate
        assert (again["enqueued"], again["duplicates"]) == (0, 1) and again["ids"] == [item_id]
        # through SNS: the same event as a JSON string, once more a duplicate
        sns = {"Type": "Notification", "MessageId": "m1", "Message": json.dumps(direct)}
        as_sns = {
            "Content-Type": "text/plain; charset=UTF-8",
            "x-amz-sns-message-type": "Notification",
        }
        sent = c.post("/v1/events/s3", content=json.dumps(sns), headers=as_sns)  # as SNS posts
        assert sent.json()["duplicates"] == 1, sent.text
        as_text = {"Content-Type": "text/plain; charset=UTF-8"}  # a page's CORS-simple POST
        assert (
            c.post("/v1/events/s3", content=json.dumps(direct), headers=as_text).status_code == 415
        )
        # a new version of the same key is new work
        versioned = {
            "Records": [_aws_record("v.mp4", versionId="v1"), _aws_record("v.mp4", versionId="v2")]
        }
        assert c.post("/v1/events/s3", json=versioned).json()["enqueued"] == 2
        # EventBridge: its own shape, the key not encoded
        bridge = {
            "version": "0",
            "detail-type": "Object Created",
            "source": "aws.s3",
            "time": "2026-12-01T10:00:00Z",
            "detail": {
                "bucket": {"name": "cams"},
                "object": {
                    "key": "raw/12:00 clip.mov",
                    "size": 10,
                    "etag": "ff",
                    "sequencer": "0B",
                },
                "reason": "PutObject",
            },
        }
        got = c.post("/v1/events/s3", json=bridge).json()
        assert got["enqueued"] == 1
        assert q.get(got["ids"][0]).uri == "s3://cams/raw/12:00 clip.mov"  # type: ignore[union-attr]
        # MinIO's webhook: EventName, Key and Records, with the same bearer token
        minio = {
            "EventName": "s3:ObjectCreated:Put",
            "Key": "cams/minio.webm",
            "Records": [_aws_record("minio.webm", event="s3:ObjectCreated:Put")],
        }
        assert c.post("/v1/events/s3", json=minio).json()["enqueued"] == 1
        test_event = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "cams"}
        assert c.post("/v1/events/s3", json=test_event).json() == {
            "enqueued": 0,
            "duplicates": 0,
            "ignored": 1,
            "refused": [],
            "ids": [],
        }
        confirm = {"Type": "SubscriptionConfirmation", "SubscribeURL": "https://sns.example/x"}
        assert c.post("/v1/events/s3", json=confirm).json()["ignored"] == 1
        assert c.post("/v1/events/s3", json={"hello": 1}).status_code == 400
        assert (
            c.post(
                "/v1/events/s3", content=b"[", headers={"Content-Type": "application/json"}
            ).status_code
            == 400
        )
        assert q.stats().counts["queued"] == 5
    with api.client(None) as anonymous:
        assert anonymous.post("/v1/events/s3", json=direct).status_code == 401


def test_items_are_found_by_id_prefix_in_every_state(api: Served, valkey_client: Redis) -> None:
    with api.client() as c:
        name = c.get("/v1/queue").json()["name"]
        q = Queue(valkey_client, QueueSettings(name=name))
        for i in range(5):  # one at a time: newest first is by enqueue time (ms)
            c.post("/v1/items", json={"uri": f"s3://v/{i}.mp4", "id": f"cam7-{i}"})
            time.sleep(0.005)
        c.post(
            "/v1/items",
            json={
                "items": [
                    {"uri": "s3://v/x.mp4", "id": "cam70"},
                    {"uri": "s3://v/y.mp4", "id": "cam*-1"},
                ]
            },
        )
        [lease] = q.claim(1, "decode-g1-0")
        assert lease.id == "cam7-0" and q.ack(lease)
        got = c.get("/v1/items", params={"q": "cam7-"}).json()
        assert [i["id"] for i in got["items"]] == [f"cam7-{i}" for i in (4, 3, 2, 1, 0)]
        assert got["cursor"] is None and got["items"][-1]["state"] == "done"
        done = c.get("/v1/items", params={"q": "cam7", "state": "done"}).json()["items"]
        assert [i["id"] for i in done] == ["cam7-0"]
        assert len(c.get("/v1/items", params={"q": "cam7-", "limit": 2}).json()["items"]) == 2
        # glob characters are the id's own, not patterns
        star = c.get("/v1/items", params={"q": "cam*"}).json()["items"]
        assert [i["id"] for i in star] == ["cam*-1"]
        assert c.get("/v1/items", params={"q": "nobody"}).json()["items"] == []
        assert c.get("/v1/items", params={"q": ""}).status_code == 422


def test_done_and_dead_items_leave_the_api_after_their_retention(
    tmp_path: Path, valkey_client: Redis
) -> None:
    """FRAMEFLEET_DONE_TTL_S and FRAMEFLEET_DEAD_TTL_S: a sweep past them deletes the items,
    and the API no longer has them (404, out of the lists and the groups)."""
    clock = ManualClock(1_800_000_000_000)
    settings = replace(
        _settings(tmp_path, "api-retention"),
        queue=QueueSettings(name="api-retention", done_ttl_s=60, dead_ttl_s=600),
    )
    q = Queue(valkey_client, settings.queue, clock=clock)
    with Served(settings, q) as served, served.client() as c:
        done_id, dead_id = c.post(
            "/v1/items", json={"items": [{"uri": "s3://v/a.mp4"}, {"uri": "s3://v/b.mp4"}]}
        ).json()["new"]
        first, second = q.claim(2, "decode-g1-0")
        assert q.ack(first) and q.fail(second, "bad", retryable=False, cls="corrupt")
        clock.advance(61_000)
        q.reap()
        assert c.get(f"/v1/items/{done_id}").status_code == 404
        assert c.get("/v1/items", params={"state": "done"}).json()["items"] == []
        assert c.get(f"/v1/items/{dead_id}").json()["state"] == "dead"  # kept longer
        assert c.get("/v1/dead/groups").json() == {"groups": {"corrupt": 1}, "total": 1}
        clock.advance(600_000)
        q.reap()
        assert c.get(f"/v1/items/{dead_id}").status_code == 404
        assert c.get("/v1/dead").json()["items"] == []
        assert c.get("/v1/dead/groups").json() == {"groups": {}, "total": 0}


def test_an_s3_event_waiting_on_redis_does_not_stall_the_api(tmp_path: Path) -> None:
    """The S3 events route waits for Redis off the event loop: with the server stopped
    (SIGSTOP) and an event in flight, /healthz still answers at once (a liveness probe would
    kill the pod otherwise), and the event is enqueued once the server runs again."""
    import os
    import signal

    from framefleet.queue import EmbeddedServer, connect

    event = {
        "Records": [
            {
                "eventName": "ObjectCreated:Put",
                "s3": {"bucket": {"name": "b"}, "object": {"key": "stalled.mp4", "eTag": "e"}},
            }
        ]
    }
    settings = _settings(tmp_path, "api-stalled")
    with EmbeddedServer(tmp_path / "redis") as server, connect(server.url) as client:
        pid = server.pid
        assert pid is not None
        with Served(settings, Queue(client, settings.queue)) as api, api.client() as c:
            assert c.post("/v1/events/s3", json=event).status_code == 200  # scripts loaded
            event["Records"][0]["s3"]["object"]["key"] = "second.mp4"  # type: ignore[index]
            answers: list[httpx.Response] = []

            def post() -> None:
                with api.client() as own:  # its own connection: the test's may close first
                    answers.append(own.post("/v1/events/s3", json=event))

            os.kill(pid, signal.SIGSTOP)
            try:
                unread = unread_bytes(server.port)
                posting = threading.Thread(target=post)
                posting.start()
                # the POST reached the route, and its command waits in the server's socket
                wait_for(lambda: unread_bytes(server.port) > unread, 10, "the POST's command", 0.02)
                with httpx.Client(base_url=api.url, timeout=10) as probe:
                    started = time.monotonic()
                    assert probe.get("/healthz").status_code == 200
                    assert time.monotonic() - started < 2.0, "the event loop was blocked"
                assert posting.is_alive(), "the POST did not wait on the stopped server"
            finally:
                os.kill(pid, signal.SIGCONT)
            posting.join(30)
            assert answers and answers[0].json()["enqueued"] == 1, answers


def test_a_body_is_not_read_before_its_token_is_checked(api: Served) -> None:
    """A chunked POST without a valid token is answered 401 after its headers and first
    chunk, without the API waiting for (and holding) the rest: half-sent bodies of up to the
    body limit each, from anyone, took it from 71 to 233 MiB."""
    import socket

    for auth in (b"", b"Authorization: Bearer wrong\r\n"):
        with socket.create_connection(("127.0.0.1", api.port), timeout=10) as s:
            s.sendall(
                b"POST /v1/items HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
                b"Content-Type: application/json\r\n" + auth + b"\r\n"
            )
            s.sendall(b"400\r\n" + b" " * 0x400 + b"\r\n")  # 1 KiB of 8 MiB; the rest never
            s.settimeout(5)
            answer = s.recv(4096)
            assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    # nor on the paths open without a token: answered without reading what is sent
    for head in (b"GET /healthz", b"POST /healthz", b"GET /"):
        with socket.create_connection(("127.0.0.1", api.port), timeout=10) as s:
            s.sendall(head + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n")
            s.sendall(b"400\r\n" + b" " * 0x400 + b"\r\n")
            s.settimeout(5)
            answer = s.recv(4096)
            assert answer.split(b" ")[1] in (b"200", b"303", b"405"), (head, answer[:200])
    with api.client() as c:  # with the token, the limit still holds
        big = b'{"uri": "s3://v/a.mp4", "meta": {"x": "' + b"y" * (9 << 20) + b'"}}'
        streamed = c.post(
            "/v1/items", content=iter([big[i : i + 65536] for i in range(0, len(big), 65536)])
        )
        assert streamed.status_code == 413, streamed.text[:200]


def test_a_bulk_action_is_refused_when_the_set_changed_but_kept_its_count(
    api: Served, valkey_client: Redis
) -> None:
    """The operator saw three corrupt dead letters; meanwhile one was purged and another
    died: still three, but not the ones seen. The purge is refused, not done unseen."""
    with api.client() as c:
        q = Queue(valkey_client, QueueSettings(name=c.get("/v1/queue").json()["name"]))
        seen = _kill(q, 3, "corrupt", "cam1")
        dry = c.delete("/v1/dead", params={"class": "corrupt"}).json()
        assert dry["count"] == 3
        assert c.delete(f"/v1/dead/{seen[0]}").status_code == 200
        _kill(q, 1, "corrupt", "cam9")
        confirm = {"class": "corrupt", "confirm": 3, "token": dry["token"], "reason": "bad cam"}
        refused = c.delete("/v1/dead", params=confirm)
        assert refused.status_code == 409, refused.text
        assert refused.json()["detail"]["count"] == 3
        assert refused.json()["detail"]["token"] != dry["token"]
        assert c.get("/v1/dead/groups").json()["groups"] == {"corrupt": 3}  # none purged


def test_without_a_token_only_loopback_callers_and_no_other_site_may_drive_the_api(
    tmp_path: Path, valkey_client: Redis
) -> None:
    """ "Serves loopback only" holds for browsers too. A page the operator opens may send
    CORS-simple requests to 127.0.0.1 (no preflight): a write from another site is refused.
    A DNS-rebinding page reaches it under its own host name: any Host but a loopback one is
    refused, reads and the dashboard included. Local tools (no Origin) still work."""
    settings = _settings(tmp_path, "api-tokenless", token=None, read_token=None)
    q = Queue(valkey_client, settings.queue)
    event = {
        "Records": [
            {
                "eventName": "ObjectCreated:Put",
                "s3": {"bucket": {"name": "b"}, "object": {"key": "k.mp4"}},
            }
        ]
    }
    evil = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
    plain = {"Content-Type": "text/plain;charset=UTF-8"}
    with Served(settings, q) as api, api.client(token=None) as c:
        assert c.post("/v1/queue/pause", headers={**evil, **plain}).status_code == 403
        assert (
            c.post("/v1/queue/pause", headers={"Origin": "https://evil.example"}).status_code == 403
        )
        got = c.post("/v1/events/s3", content=json.dumps(event), headers={**evil, **plain})
        assert got.status_code == 403, got.text
        assert q.stats().paused is False and q.stats().counts["queued"] == 0
        rebound = {"Host": f"attacker.example:{api.port}", "Sec-Fetch-Site": "same-origin"}
        assert c.get("/v1/items", headers=rebound).status_code == 403
        assert c.post("/v1/items", json={"uri": "s3://b/x.mp4"}, headers=rebound).status_code == 403
        assert c.get("/ui/", headers=rebound).status_code == 403
        assert c.get("/healthz", headers=rebound).status_code == 200  # liveness stays open
        # this machine's own callers: a tool (no Origin), a page of its own, [::1] and localhost
        assert c.post("/v1/queue/pause").status_code == 200
        same = {"Origin": api.url, "Sec-Fetch-Site": "same-origin"}
        assert c.post("/v1/queue/resume", headers=same).status_code == 200
        for host in (f"localhost:{api.port}", f"[::1]:{api.port}", "127.0.0.2"):
            assert c.get("/v1/queue", headers={"Host": host}).status_code == 200, host
    tokened = _settings(tmp_path, "api-tokened")
    with Served(tokened, Queue(valkey_client, tokened.queue)) as api, api.client() as c:
        # with a token a proxy's host name is fine: a page can neither send nor read it
        assert c.get("/v1/queue", headers={"Host": "framefleet.example"}).status_code == 200


def test_an_sns_https_subscription_authenticates_with_basic_and_delivers(
    api: Served, valkey_client: Redis
) -> None:
    """SNS can send credentials only as Basic in the endpoint's URL, after a 401 that asks
    for them: the events route takes the token as the Basic password. The whole flow, with
    SNS's own message shapes and headers: the subscription's confirmation (its SubscribeURL
    logged, nothing fetched), then a notification carrying the S3 event."""
    token = WRITE
    sns_headers = {
        "Content-Type": "text/plain; charset=UTF-8",
        "User-Agent": "Amazon Simple Notification Service Agent",
    }
    arn = "arn:aws:sns:eu-west-1:123456789012:framefleet-uploads"
    confirmation = {
        "Type": "SubscriptionConfirmation",
        "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
        "Token": "2336412f37fb687f5d51e6e241d09c805a5a57b30d712f794cc5f6a988666d92768dd60a7",
        "TopicArn": arn,
        "Message": f"You have chosen to subscribe to the topic {arn}.",
        "SubscribeURL": f"https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn={arn}&Token=2336",
        "Timestamp": "2026-12-01T10:00:00.000Z",
        "SignatureVersion": "1",
        "Signature": "EXAMPLEpH+DcEwjAPg8O9mY8dReBSwksfg2S7WKQcikcNKWLQjwu6A4VbeS0QHVCkhRS7fUQ=",
        "SigningCertURL": "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-0000000000000000000000.pem",
    }
    notification = {
        "Type": "Notification",
        "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
        "TopicArn": arn,
        "Subject": "Amazon S3 Notification",
        "Message": json.dumps({"Records": [_aws_record("sns%2Fclip.mp4")]}),
        "Timestamp": "2026-12-01T10:00:01.000Z",
        "SignatureVersion": "1",
        "Signature": "EXAMPLE",
        "SigningCertURL": confirmation["SigningCertURL"],
        "UnsubscribeURL": f"https://sns.eu-west-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn={arn}:1",
    }
    with httpx.Client(base_url=api.url, timeout=30) as sns:
        for kind, message in (
            ("SubscriptionConfirmation", confirmation),
            ("Notification", notification),
        ):
            headers = {**sns_headers, "x-amz-sns-message-type": kind, "x-amz-sns-topic-arn": arn}
            body = json.dumps(message)
            first = sns.post("/v1/events/s3", content=body, headers=headers)  # no credentials yet
            assert first.status_code == 401 and "Basic" in first.headers["WWW-Authenticate"]
            wrong = sns.post("/v1/events/s3", content=body, headers=headers, auth=("sns", "nope"))
            assert wrong.status_code == 401
            got = sns.post("/v1/events/s3", content=body, headers=headers, auth=("sns", token))
            assert got.status_code == 200, got.text
        assert got.json()["enqueued"] == 1
        name = httpx.get(
            f"{api.url}/v1/queue", headers={"Authorization": f"Bearer {token}"}
        ).json()["name"]
        [item_id] = got.json()["ids"]
        item = Queue(valkey_client, QueueSettings(name=name)).get(item_id)
        assert item is not None and item.uri == "s3://cams/sns/clip.mp4"
        # Basic is for the events route only: elsewhere the bearer token is the way
        assert sns.get("/v1/queue", auth=("sns", token)).status_code == 401


def test_a_done_items_detections_come_a_page_at_a_time_to_the_read_token(
    tmp_path: Path, valkey_client: Redis
) -> None:
    """GET /v1/items/{id}/detections: 404 until the item is done; then its rows in pages
    (`next` the offset of the next page, null after the last), every row once and in order,
    read from the output store; refused without a token, and a page over 1000 refused."""
    from framefleet.workers.outputs import OutputStore
    from framefleet.workers.results import Results
    from tests.support.results import finish

    settings = _settings(tmp_path, "api-detections")
    settings = replace(settings, pipeline=replace(settings.pipeline, out=str(tmp_path / "out")))
    queue = Queue(valkey_client, settings.queue)
    store = OutputStore(settings.pipeline.out, settings.source)
    with Served(settings, queue) as served, served.client(READ) as c:
        [item_id] = queue.enqueue(["s3://v/cam 1/clip.mp4"])
        assert c.get(f"/v1/items/{item_id}/detections").status_code == 404  # not done yet
        [lease] = queue.claim(1, "w")
        video = finish(store, item_id, rows=250, uri="s3://v/cam 1/clip.mp4", chunks=3)
        Results(store).publish(video)
        assert queue.ack(lease, store.manifest_uri(video)) == Verdict.OK
        pages: list[dict[str, Any]] = []
        offset: int | None = 0
        while offset is not None:
            got = c.get(f"/v1/items/{item_id}/detections", params={"offset": offset})
            assert got.status_code == 200, got.text
            pages.append(got.json())
            offset = pages[-1]["next"]
        assert [len(p["rows"]) for p in pages] == [100, 100, 50]
        assert {(p["id"], p["uri"], p["total"]) for p in pages} == {
            (item_id, "s3://v/cam 1/clip.mp4", 250)
        }
        rows = [r for p in pages for r in p["rows"]]
        assert [r["frame_index"] for r in rows] == list(range(250))
        assert {"frame_index", "pts_s", "label", "score", "x0", "y1"} <= set(rows[0])
        small = c.get(f"/v1/items/{item_id}/detections", params={"offset": 249, "limit": 5})
        assert small.json()["next"] is None and len(small.json()["rows"]) == 1
        assert c.get(f"/v1/items/{item_id}/detections", params={"limit": 1001}).status_code == 422
        assert c.get("/v1/items/nope/detections").status_code == 404
        anonymous = httpx.get(f"{served.url}/v1/items/{item_id}/detections", timeout=30)
        assert anonymous.status_code == 401


def _script_calls(client: Redis) -> int:
    stats = client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))


def test_a_batch_larger_than_the_queues_batch_size_is_written_in_one_script_call(
    tmp_path: Path, valkey_client: Redis
) -> None:
    """All or nothing: an API process killed mid-request leaves none of a batch or all of it
    (the queue's own batches, batch_size items a call, would have left the first calls'
    items and not the rest). Found by the proof suite's API fault."""
    settings = _settings(tmp_path, "api-atomic")
    settings = replace(settings, queue=replace(settings.queue, batch_size=100))
    uris = [{"uri": f"s3://videos/atomic-{k}.mp4"} for k in range(250)]
    with Served(settings, Queue(valkey_client, settings.queue)) as served, served.client() as c:
        assert c.get("/v1/queue").status_code == 200  # its scripts loaded, its reads made
        before = _script_calls(valkey_client)
        got = c.post("/v1/items", json={"items": uris})
        calls = _script_calls(valkey_client) - before
    assert got.status_code == 200 and len(got.json()["new"]) == 250, got.text
    assert calls == 1
