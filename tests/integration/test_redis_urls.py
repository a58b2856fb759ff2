"""FRAMEFLEET_REDIS_URL forms: password, ACL user limited to framefleet's keys, and TLS
(rediss://) against Debian's Redis 7 built with TLS, the third server build."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from redis import Redis
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from framefleet.queue import (
    EmbeddedServer,
    NewItem,
    Queue,
    ServerError,
    State,
    Supervision,
    SweepResult,
    Verdict,
    connect,
    open_queue,
)
from framefleet.queue.durable import Durability
from framefleet.queue.supervision import worker_name
from framefleet.settings import QueueSettings, RedisSettings, Settings
from tests.conftest import ManualClock

DEBIAN_REDIS = Path("/usr/bin/redis-server")
ACL_USER = ("ff", "s3cret-pw")


def _roundtrip(q: Queue) -> None:
    [item_id] = q.enqueue(["s3://bucket/v.mp4"])
    [lease] = q.claim(1, "w")
    assert lease.id == item_id and q.progress(lease, 0, total=1) and q.ack(lease, "s3://out/v")
    q.client.lpush(q.keys.inbox, '{"uri": "/v/x.mp4"}')
    assert q.ingest_inbox().ingested == 1
    assert q.stats().counts["done"] == 1


def _add_acl_user(admin: Redis) -> None:
    """A user that may run any command, but only on keys under ff:."""
    name, password = ACL_USER
    admin.execute_command(  # type: ignore[no-untyped-call]
        "ACL", "SETUSER", name, "on", f">{password}", "~ff:*", "+@all"
    )


def test_password_url(tmp_path: Path) -> None:
    with EmbeddedServer(tmp_path, extra_args=("--requirepass", "pw-123")) as srv:
        with pytest.raises(AuthenticationError):
            connect(srv.url)
        port = srv.port
        with open_queue(
            Settings(redis=RedisSettings(url=f"redis://:pw-123@127.0.0.1:{port}/0"))
        ) as q:
            _roundtrip(q)


def test_acl_user_limited_to_framefleet_keys(server: EmbeddedServer, client: Redis) -> None:
    _add_acl_user(client)
    name, password = ACL_USER
    url = f"redis://{name}:{password}@127.0.0.1:{server.port}/0"
    with open_queue(Settings(redis=RedisSettings(url=url))) as q:
        _roundtrip(q)
        with pytest.raises((NoPermissionError, ResponseError)):
            q.client.set("other-app:key", "1")  # the limit is real


class _Noted:
    """Passes every attribute through to `obj`, noting each public method used."""

    def __init__(self, obj: object, used: set[str]) -> None:
        self._obj, self._used = obj, used

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._obj, name)
        if callable(value) and not name.startswith("_"):
            self._used.add(f"{type(self._obj).__name__}.{name}")
        return value


def _public_methods(*classes: type) -> set[str]:
    """Each class's public methods, its own and those it inherits (Queue's reads are
    QueueReader's), named by the class."""
    return {
        f"{cls.__name__}.{name}"
        for cls in classes
        for base in cls.__mro__[:-1]  # not object's
        for name, value in vars(base).items()
        if callable(value) and not name.startswith("_")
    }


# Keys of another application in the same DB, some with names close to framefleet's.
_OTHERS = ("other-app:key", "ffx:{videos}:queued", "{videos}:inbox", "videos:item:a")


def _every_operation(q: Any, sup: Any, plain: Redis, clock: ManualClock) -> None:
    """Every public operation of Queue and Supervision (q, sup: _Noted), each down the paths
    that make its script touch keys (a sweep that really orphans, forgives, reaps, poisons,
    promotes and trims), on the manual clock; the results are checked loosely, enough to
    know each path ran (the contract suite checks them exactly)."""
    a, b, c = q.enqueue(
        ["/v/a.mp4", NewItem("/v/b.mp4", id="b", etag="e", meta={"k": 1}), "/v/c.mp4"]
    )
    more = q.enqueue([f"/v/more-{i}.mp4" for i in range(8)])  # batch_size 2: overlapped calls
    plain.lpush(q.keys.inbox, '{"uri": "/v/i.mp4", "id": "i", "meta": {"p": "/x"}}', "junk")
    assert q.ingest_inbox().ingested == 1 and len(q.rejected()) == 1
    # claim, renew, progress, ack
    [la] = q.claim(1, "w1")
    [lb, lc] = q.claim(2, "w1", block=0.5)
    assert q.renew(la) and q.progress(la, 0, total=2) and q.chunks(la.id) == {0}
    assert q.ack(la, "s3://out/a") and q.ack_many([(lb, "r"), (la, "s3://out/a")])
    # fail: retryable (delayed), a bug, permanent (dead); release at once and delayed
    assert q.fail(lc, "5xx") and q.get(lc.id).state is State.DELAYED
    [l1, l2, l3] = q.claim(3, "w1")
    assert q.fail(l1, "boom", bug=True) and q.fail(l2, "corrupt", retryable=False, cls="x")
    assert q.release(l3, "preempted")
    [l4] = q.claim(1, "w1")
    assert q.release_for(l4, "bigger than the disk", "too_big", delay_s=1) == (Verdict.OK, None)
    # a blocking claim that waits (paused), resume, cancel
    q.pause()
    assert q.claim(1, "w1", block=0.2) == []
    q.resume()
    assert q.cancel(l1.id) and q.cancel(l4.id)  # delayed ones
    # reap: a lapse charged, then poison (max_deliveries 2); a worker failed whole (suspects)
    q.retry_dead()
    clock.advance(5_000)
    assert q.reap().promoted >= 1
    for _ in range(2):
        [lone] = q.claim(1, "w2")
        clock.advance(11_000)
        q.reap()
    assert q.get(lone.id).state is State.DEAD  # poison
    assert len(q.claim(2, "w3")) == 2
    clock.advance(11_000)
    assert q.reap().requeued == 2  # suspects
    assert q.sweep(limit=1) == SweepResult()  # nothing left to do
    # heartbeats: a silent worker, one marked gone, a sync that gives back, a gap, forgetting
    sup.heartbeat("w4")
    sup.heartbeat("w5")
    assert len(q.claim(1, "w4")) == 1 and len(q.claim(1, "w5")) == 1
    sup.mark_gone("w5")
    clock.advance(6_000)
    swept = sup.sweep(stale_s=5)
    assert (swept.orphaned_workers, swept.orphaned_leases) == (2, 2)
    [held] = q.claim(1, "w6")
    assert sup.held("w6") == {held.id}
    clock.advance(11_000)
    assert sup.heartbeat("w6", holding=[], grace_s=10) == 1  # given back, uncharged
    assert sup.heartbeat("w6", info={"pid": 7}) == 0 and sup.worker_info()["w6"] == {"pid": 7}
    assert sup.workers() and sup.leave("w6") is None and "w6" not in sup.worker_info()
    [gap] = q.claim(1, "w7")
    sup.sweep(stale_s=5, gap_s=1)
    clock.advance(20_000)
    assert sup.sweep(stale_s=5, gap_s=1).forgiven == 1 and sup.in_grace()
    assert q.renew(gap) and q.ack(gap)
    clock.advance(60_000)
    sup.sweep(stale_s=5)  # the silent ones forgotten (3 x stale_s)
    assert "w4" not in sup.workers()
    # fleets
    gen = "g1"
    sup.add_fleet(gen, "coordinator-1")
    assert sup.fleets() == {gen: "coordinator-1"}
    [lf] = q.claim(1, worker_name("decoder", gen, 0))
    [lg] = q.claim(1, "w8")
    assert sup.release_workers(["w8"], reason="node lost") == 1
    assert sup.release_workers(prefix="nobody-", reason="x") == 0
    assert sup.end_fleet(gen, reason="driver gone") == 1 and sup.fleets() == {}
    # force, retention, dead letters
    assert q.enqueue(["/v/a.mp4"], force=True) == [a]  # done: a new revision
    [lh] = q.claim(1, "w9")
    q.ack(lh)
    clock.advance(120_000)  # past done_ttl_s
    q.reap()
    assert q.get(lh.id) is None  # trimmed
    q.enqueue([NewItem(f"/v/{i}.mp4", id=i, priority=9) for i in ("d1", "d2", "d3")])
    for lease in q.claim(3, "w10"):
        assert q.fail(lease, "corrupt", retryable=False)
    assert {"d1", "d2", "d3"} <= {x.id for x in q.dead()}
    assert {"d1", "d2", "d3"} <= set(q.dead_ids()) and q.dead_classes()
    assert set(q.dead_ids("unknown")) <= set(q.dead_ids())
    q.record({"who": "test", "action": "retry"})
    assert q.audit(1)[0]["action"] == "retry"
    assert q.retry_dead(["d1"]) == ["d1"] and q.purge_dead(["d2"]) == ["d2"]
    assert q.purge_dead() == ["d3"]
    # reading
    assert q.get("d1").state is State.QUEUED and "d1" in {x.id for x in q.items_in("queued")}
    assert "d1" in {x.id for x in q.items(["d1", "nope", b, c, *more])}
    assert q.states(["d1", "nope"]) == ["queued", None]
    page, _ = q.page("queued", limit=1000)
    assert "d1" in {x.id for x in page}
    assert q.now_ms() > 0 and min(q.finished_since(0)) >= 0  # runs as the ACL user
    assert q.metrics().stats.counts["queued"] >= 1
    assert [x.id for x in q.find("d1")] == ["d1"]
    assert q.finished_since_each([0, 0]) == [q.finished_since(0)] * 2
    assert len(q.finished_per_minute(2)) == 3 and "used_memory" in q.server_info()
    memory = q.memory()
    assert memory is not None and memory.used_bytes > 0 and not memory.full
    assert q.stats().counts["queued"] >= 1 and lf.id != lg.id
    # an item's history, the outcomes stream, a consumer group and the webhooks' record
    assert [e["what"] for e in q.events("d1")][-1] == "retried"
    told = q.outcomes(count=1000)
    assert told and q.last_outcome() == told[-1].entry
    q.outcome_group("hooks")
    [lx] = q.claim(1, "w11")
    assert q.ack(lx, "r")
    [heard] = q.read_outcome_group("hooks", "c1", block_s=0.1)
    [pending] = q.pending_outcomes("hooks")
    assert pending.entry == heard.entry
    found, gone = q.claim_outcomes("hooks", "c2", [heard.entry])
    assert [o.entry for o in found] == [heard.entry] and gone == []
    q.webhook_result("hooks", heard.entry, "gave_up", {"id": heard.id, "error": "HTTP 500"})
    assert q.webhook_failures(1)[0]["id"] == heard.id and q.pending_outcomes("hooks") == []
    assert q.ack_outcomes("hooks", [heard.entry]) == 0  # acknowledged already
    # the leader lease and the health report
    assert sup.hold_leadership("c1", ttl_s=60) and sup.hold_leadership("c1", ttl_s=60)
    assert sup.leader() == "c1" and sup.release_leadership("c1")
    sup.write_health({"ok": True}, ttl_s=60)
    report = sup.health()
    assert report is not None and report["ok"] is True
    assert sup.health_age_s(report) is not None


_EVERY_OPERATION_SETTINGS = QueueSettings(
    lease_s=10,
    max_attempts=2,
    max_deliveries=2,
    backoff_base_s=1,
    backoff_max_s=2,
    poll_s=0.05,
    batch_size=2,
    done_ttl_s=60,
    dead_ttl_s=60,
)


def test_every_operation_needs_only_framefleet_keys(
    server: EmbeddedServer, client: Redis, clock: ManualClock
) -> None:
    """README: "framefleet only touches keys under its prefix, so an ACL like `~ff:* +@all`
    is enough". Every public method of Queue and Supervision runs as a user limited to
    `ff:*` (commands run by a Lua script are checked against the caller's ACL too), on the
    manual clock and on the server's; another application's keys in the same DB are left
    as they were. (connect/open_queue/open_client: used here and in the test above; the
    embedded server's own functions take no URL.)"""
    _add_acl_user(client)
    for key in _OTHERS:
        if "item" in key:
            client.hset(key, "state", "queued")
        else:
            client.set(key, "theirs", px=3_600_000)
    before = {k: (client.dump(k), client.type(k)) for k in _OTHERS}
    name, password = ACL_USER
    acl = connect(f"redis://{name}:{password}@127.0.0.1:{server.port}/0")
    try:
        with pytest.raises(NoPermissionError):  # a script's commands are checked too
            acl.eval("return redis.call('GET', KEYS[1])", 1, "other-app:key")
        used: set[str] = set()
        settings = _EVERY_OPERATION_SETTINGS
        real = Queue(acl, settings, clock=clock)
        q, sup = _Noted(real, used), _Noted(Supervision(real), used)
        _every_operation(q, sup, acl, clock)
        # the server's clock (TIME in the scripts, in workers() and in_grace()): a queue of
        # its own, so as not to mix it with the manual clock's times
        server_time = Queue(acl, replace(settings, name="server-time"))
        server_sup = Supervision(server_time)
        server_sup.heartbeat("w-real")
        assert server_time.claim(1, "w-real", block=0.1) == []
        assert server_time.enqueue(["/v/t.mp4"])
        assert server_time.ack(server_time.claim(1, "w-real")[0])
        assert server_sup.sweep(stale_s=5, gap_s=1) == SweepResult()
        assert list(server_sup.workers()) == ["w-real"] and not server_sup.in_grace()
        assert used == _public_methods(Queue, Supervision)
    finally:
        acl.close()
    assert {k: (client.dump(k), client.type(k)) for k in _OTHERS} == before
    assert all(client.pttl(k) > 3_000_000 for k in _OTHERS if "item" not in k)


def test_every_operation_with_waitaof(
    valkey: EmbeddedServer, valkey_client: Redis, clock: ManualClock
) -> None:
    """With FRAMEFLEET_REDIS_WAITAOF (the primary's append-only file; no replica), enqueue
    and ack run with their wait in one pipeline (enqueue in several batches, ack_many, an
    ack after the server forgot its scripts): every operation still works, as the user
    limited to ff:*."""
    _add_acl_user(valkey_client)
    name, password = ACL_USER
    durable = Durability(aof=True)
    acl = connect(f"redis://{name}:{password}@127.0.0.1:{valkey.port}/0", durability=durable)
    try:
        used: set[str] = set()
        real = Queue(acl, _EVERY_OPERATION_SETTINGS, clock=clock, durability=durable)
        _every_operation(_Noted(real, used), _Noted(Supervision(real), used), acl, clock)
        assert {"Queue.enqueue", "Queue.ack", "Queue.ack_many"} <= used
        real.enqueue(["/v/flush.mp4"])
        [lease] = real.claim(1, "w-flush")
        valkey_client.script_flush()
        assert real.ack(lease, "r") is Verdict.OK  # NOSCRIPT: loaded again, run again
    finally:
        acl.close()


def test_waitaof_is_refused_at_connect_where_the_server_lacks_it(
    server: EmbeddedServer, client: Redis, tmp_path: Path
) -> None:
    """WAITAOF: Redis >= 7.2 or Valkey, with its append-only file on; refused at connect
    otherwise, saying why. WAIT (min_replicas alone) is in every build."""
    aof = Durability(aof=True)
    if "valkey_version" in client.info("server"):
        connect(server.url, durability=aof).close()
        with (
            EmbeddedServer(tmp_path, extra_args=("--appendonly", "no")) as no_aof,
            pytest.raises(ServerError, match=r"append-only file.*\(appendonly no\)"),
        ):
            connect(no_aof.url, durability=aof)
    else:
        with pytest.raises(ServerError, match=r"WAITAOF, which Redis 6\.2\.\d+ lacks"):
            connect(server.url, durability=aof)
    connect(server.url, durability=Durability(replicas=1)).close()


# -- TLS -----------------------------------------------------------------------------------


def _write_certs(d: Path) -> tuple[Path, Path, Path]:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "framefleet test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = d / "ca.pem", d / "server.pem", d / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    if not DEBIAN_REDIS.exists():
        raise RuntimeError(
            f"{DEBIAN_REDIS} is missing: scripts/test installs Debian's redis-server"
        )
    ca, cert, key = _write_certs(tmp_path)
    port = _free_port()
    proc = subprocess.Popen(
        [
            str(DEBIAN_REDIS),
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            str(cert),
            "--tls-key-file",
            str(key),
            "--tls-ca-cert-file",
            str(ca),
            "--tls-auth-clients",
            "no",
            "--dir",
            str(tmp_path),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        admin = Redis(
            host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(ca), decode_responses=True
        )
        for _ in range(200):
            try:
                admin.ping()
                break
            except Exception:
                time.sleep(0.05)
        _add_acl_user(admin)
        admin.close()
        yield port, ca
    finally:
        proc.terminate()
        proc.wait(10)


def test_tls_url_with_acl_user(tls_redis: tuple[int, Path]) -> None:
    port, ca = tls_redis
    name, password = ACL_USER
    url = f"rediss://{name}:{password}@127.0.0.1:{port}/0?ssl_ca_certs={ca}"
    with open_queue(Settings(redis=RedisSettings(url=url))) as q:
        assert q.client.info("server")["redis_version"].startswith("7.")
        _roundtrip(q)


def test_plain_url_to_a_tls_port_fails_clearly(tls_redis: tuple[int, Path]) -> None:
    port, _ = tls_redis
    with pytest.raises(Exception, match=r"Connection|connection|closed"):
        connect(f"redis://127.0.0.1:{port}/0?socket_timeout=2")
