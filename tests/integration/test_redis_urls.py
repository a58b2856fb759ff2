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

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from redis import Redis
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from framefleet.queue import (
    EmbeddedServer,
    Queue,
    ServerError,
    Supervision,
    SweepResult,
    Verdict,
    connect,
    open_queue,
)
from framefleet.queue.durable import Durability
from framefleet.settings import RedisSettings, Settings
from tests.conftest import ManualClock
from tests.support.operations import (
    EVERY_OPERATION_SETTINGS,
    Noted,
    every_operation,
    public_methods,
)

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


# Keys of another application in the same DB, some with names close to framefleet's.
_OTHERS = ("other-app:key", "ffx:{videos}:queued", "{videos}:inbox", "videos:item:a")


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
        settings = EVERY_OPERATION_SETTINGS
        real = Queue(acl, settings, clock=clock)
        q, sup = Noted(real, used), Noted(Supervision(real), used)
        every_operation(q, sup, acl, clock)
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
        assert used == public_methods(Queue, Supervision)
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
        real = Queue(acl, EVERY_OPERATION_SETTINGS, clock=clock, durability=durable)
        every_operation(Noted(real, used), Noted(Supervision(real), used), acl, clock)
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
