"""Cluster URLs (framefleet/queue/cluster.py): the startup nodes and options they name, the
clear error a malformed one gets (never showing its secrets), and redaction."""

from __future__ import annotations

import pytest
from redis.connection import SSLConnection

from framefleet.queue import connect, redacted
from framefleet.queue.cluster import is_cluster_url, parse_cluster_url
from framefleet.queue.sentinel import is_sentinel_url
from framefleet.settings import SettingsError


def test_nodes_and_credentials() -> None:
    url = parse_cluster_url("redis+cluster://ff:s3cret@n1:7000,n2,[::1]:7001/?socket_timeout=3.5")
    assert url.nodes == (("n1", 7000), ("n2", 6379), ("::1", 7001)) and not url.tls
    assert url.options == {"username": "ff", "password": "s3cret", "socket_timeout": 3.5}
    assert "s3cret" not in repr(url)


@pytest.mark.parametrize(
    ("scheme", "tls"),
    [("redis", False), ("rediss", True), ("valkey", False), ("valkeys", True), ("REDIS", False)],
)
def test_schemes(scheme: str, tls: bool) -> None:
    url = f"{scheme}+cluster://h"
    assert is_cluster_url(url) and not is_sentinel_url(url)
    parsed = parse_cluster_url(url)
    assert parsed.tls is tls and parsed.nodes == (("h", 6379),)
    assert parsed.options.get("connection_class") is (SSLConnection if tls else None)


@pytest.mark.parametrize("path", ["", "/", "/0", "/?db=0"])
def test_database_0_may_be_said(path: str) -> None:
    assert "db" not in parse_cluster_url(f"redis+cluster://h:1{path}").options


def test_percent_encoded_password_and_tls_options() -> None:
    url = parse_cluster_url("rediss+cluster://:p%40ss%3Aw@h:1?ssl_ca_certs=/c.pem")
    assert url.options["password"] == "p@ss:w" and url.options["ssl_ca_certs"] == "/c.pem"


@pytest.mark.parametrize("url", ["redis://h:6379/0", "redis+sentinel://h/s", "cluster://h", "h"])
def test_other_urls_are_not_cluster_urls(url: str) -> None:
    assert not is_cluster_url(url)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis+cluster://u:pw@", "host is empty"),
        ("redis+cluster://u:pw@h1,,h2", "host is empty"),
        ("redis+cluster://u:pw@h1:port", "port must be a number"),
        ("redis+cluster://u:pw@h1:70000", "port must be a number"),
        ("redis+cluster://u:pw@[::1", "IPv6"),
        ("redis+cluster://u:pw@[::1]x", "not host"),
        ("redis+cluster://u:pw@h1/2", "database 0 only"),
        ("redis+cluster://u:pw@h1/?db=1", "database 0 only"),
        ("redis+cluster://u:pw@h1/?socket_timeout=soon&password=pw", "socket_timeout"),
        ("redis+sentinel://u:pw@h1/mymaster", "scheme must be"),
        ("redis+cluster://u:pw@h1/?ssl=true", "TLS is the scheme's"),
        ("redis+cluster://u:pw@h1/?ssl_ca_certs=/c.pem", "TLS is the scheme's"),
    ],
)
def test_a_malformed_url_is_refused_saying_why_without_its_password(url: str, why: str) -> None:
    with pytest.raises(SettingsError, match="the form: redis\\+cluster://") as caught:
        parse_cluster_url(url)
    assert why in str(caught.value) and "pw" not in str(caught.value)


def test_connect_refuses_a_malformed_cluster_url_before_any_connection() -> None:
    with pytest.raises(SettingsError, match="database 0 only"):
        connect("redis+cluster://u:pw@127.0.0.1:1/3")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "redis+cluster://ff:s3cret@n1:7000,n2:7001/?socket_timeout=2",
            "redis+cluster://ff:***@n1:7000,n2:7001/?socket_timeout=2",
        ),
        (
            "rediss+cluster://:s3cret@[::1]:7000?ssl_ca_certs=/ca.pem&password=s3cret",
            "rediss+cluster://:***@[::1]:7000?ssl_ca_certs=/ca.pem&password=***",
        ),
    ],
)
def test_redacted_hides_every_password(url: str, shown: str) -> None:
    assert redacted(url) == shown
