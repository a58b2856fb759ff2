"""Sentinel URLs (framefleet/queue/sentinel.py): what they name, the clear error a malformed
one gets (never showing its secrets), and redaction; and what durability counts as
confirmed (framefleet/queue/durable.py)."""

from __future__ import annotations

import pytest

from framefleet.queue import connect, redacted
from framefleet.queue.durable import Durability, NotDurable
from framefleet.queue.sentinel import is_sentinel_url, parse_sentinel_url
from framefleet.settings import SettingsError


def test_hosts_service_db_and_credentials() -> None:
    url = parse_sentinel_url(
        "redis+sentinel://ff:s3cret@s1:26380,s2,[::1]:26381/mymaster/2"
        "?sentinel_password=sp&sentinel_username=su&socket_timeout=3.5"
    )
    assert url.sentinels == (("s1", 26380), ("s2", 26379), ("::1", 26381))
    assert url.service == "mymaster" and not url.tls
    assert url.options == {"username": "ff", "password": "s3cret", "db": 2, "socket_timeout": 3.5}
    assert url.sentinel_options == {"username": "su", "password": "sp"}
    assert "s3cret" not in repr(url) and "sp" not in repr(url)


@pytest.mark.parametrize(
    ("scheme", "tls"),
    [("redis", False), ("rediss", True), ("valkey", False), ("valkeys", True), ("REDISS", True)],
)
def test_schemes(scheme: str, tls: bool) -> None:
    url = f"{scheme}+sentinel://h/svc"
    assert is_sentinel_url(url)
    parsed = parse_sentinel_url(url)
    assert parsed.tls is tls and parsed.sentinels == (("h", 26379),) and parsed.options == {}


def test_percent_encoded_parts_and_a_password_alone() -> None:
    url = parse_sentinel_url("rediss+sentinel://:p%40ss%3Aw@h:1/my%20master?ssl_ca_certs=/c.pem")
    assert url.options == {"password": "p@ss:w", "ssl_ca_certs": "/c.pem"}
    assert url.service == "my master" and url.sentinels == (("h", 1),)


@pytest.mark.parametrize("url", ["redis://h:6379/0", "unix:///tmp/r.sock", "sentinel://h/s", "h"])
def test_other_urls_are_not_sentinel_urls(url: str) -> None:
    assert not is_sentinel_url(url)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis+sentinel://u:pw@/mymaster", "host is empty"),
        ("redis+sentinel://u:pw@h1,,h2/mymaster", "host is empty"),
        ("redis+sentinel://u:pw@h1:port/mymaster", "port must be a number"),
        ("redis+sentinel://u:pw@h1:70000/mymaster", "port must be a number"),
        ("redis+sentinel://u:pw@[::1/mymaster", "IPv6"),
        ("redis+sentinel://u:pw@[::1]x/mymaster", "not host"),
        ("redis+sentinel://u:pw@h1", "no service name"),
        ("redis+sentinel://u:pw@h1/", "no service name"),
        ("redis+sentinel://u:pw@h1/mymaster/db0", "database number"),
        ("redis+sentinel://u:pw@h1/mymaster/0/x", "database number"),
        ("redis+sentinel://u:pw@h1/mymaster?socket_timeout=soon&password=pw", "socket_timeout"),
        ("redis+cluster://u:pw@h1/mymaster", "scheme must be"),
        ("redis+sentinel://u:pw@h1/mymaster?ssl=true", "TLS is the scheme's"),
        ("redis+sentinel://u:pw@h1/mymaster?ssl_ca_certs=/c.pem", "TLS is the scheme's"),
    ],
)
def test_a_malformed_url_is_refused_saying_why_without_its_password(url: str, why: str) -> None:
    with pytest.raises(SettingsError, match="the form: redis\\+sentinel://") as caught:
        parse_sentinel_url(url)
    assert why in str(caught.value) and "pw" not in str(caught.value)


def test_connect_refuses_a_malformed_sentinel_url_before_any_connection() -> None:
    with pytest.raises(SettingsError, match="no service name"):
        connect("redis+sentinel://u:pw@127.0.0.1:1")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "redis+sentinel://ff:s3cret@s1:26379,s2:26379/mymaster/0?sentinel_password=sp",
            "redis+sentinel://ff:***@s1:26379,s2:26379/mymaster/0?sentinel_password=***",
        ),
        (
            "rediss+sentinel://:s3cret@[::1]:26379/m?ssl_ca_certs=/ca.pem",
            "rediss+sentinel://:***@[::1]:26379/m?ssl_ca_certs=/ca.pem",
        ),
        ("redis+sentinel://s1,s2/m", "redis+sentinel://s1,s2/m"),
        ("redis://h:1/0?password=s3cret", "redis://h:1/0?password=***"),
    ],
)
def test_redacted_hides_every_password(url: str, shown: str) -> None:
    assert redacted(url) == shown


@pytest.mark.parametrize(
    ("durability", "reply", "confirmed"),
    [
        (Durability(replicas=1), 1, True),
        (Durability(replicas=2), 3, True),
        (Durability(replicas=2), 1, False),
        (Durability(aof=True), [1, 0], True),
        (Durability(aof=True), [0, 0], False),
        (Durability(replicas=1, aof=True), [1, 1], True),
        (Durability(replicas=1, aof=True), [1, 0], False),
        (Durability(replicas=1, aof=True), [0, 1], False),
    ],
)
def test_what_counts_as_confirmed(durability: Durability, reply: object, confirmed: bool) -> None:
    if confirmed:
        durability.check(reply, "ack", ["ok"])
        return
    with pytest.raises(NotDurable, match="ack was written on the primary") as caught:
        durability.check(reply, "ack", ["ok"])
    assert caught.value.result == ["ok"]
