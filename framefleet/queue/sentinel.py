"""Sentinel URLs: a primary and its replicas, found through Redis Sentinel.

    redis+sentinel://[user[:password]@]host[:port][,host[:port]...]/service[/db][?options]

- `rediss+sentinel://`: TLS to the data nodes (the sentinels are spoken to in plain TCP);
  `valkey+sentinel://` and `valkeys+sentinel://` are the same two;
- each host is a sentinel (port 26379 unless given; an IPv6 address in brackets);
- `service` is the name the sentinels monitor (`sentinel monitor <service> ...`), `db` the
  database number (0 unless given);
- user and password are the data nodes' (the primary's and its replicas');
- `sentinel_username`, `sentinel_password` (options): the sentinels' own, when they require
  them (`requirepass` / an ACL user in sentinel.conf);
- any other option is a data-node connection option, as in a redis:// URL (redis-py's:
  `socket_timeout`, `ssl_ca_certs`, `ssl_cert_reqs`, ...).

redis-py has no URL form for Sentinel (`Redis.from_url` refuses these schemes); this is the
form redisvl, Prefect and Redis-Sentinel-Url read. The client that `master_client` makes asks
the sentinels for the primary's address every time it connects. After a failover, the first
command on the old primary fails (a closed connection, or a write refused with READONLY,
which redis-py turns into ConnectionError "The previous master is now a slave"), and the
client's retry reconnects to the new one. Until then, reads on a connection to the old
primary, alive and made a replica (a planned failover), are answered there.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import SplitResult, parse_qsl, unquote, urlencode, urlsplit

from redis import Redis
from redis.connection import SSLConnection, parse_url
from redis.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection

from framefleet.settings import SettingsError

DEFAULT_PORT = 26379
SCHEMES = {  # scheme: TLS to the data nodes
    "redis+sentinel": False,
    "rediss+sentinel": True,
    "valkey+sentinel": False,
    "valkeys+sentinel": True,
}
FORM = "redis+sentinel://[user:password@]host[:port][,host[:port]...]/service[/db][?options]"
_SENTINEL_OPTIONS = {"sentinel_username": "username", "sentinel_password": "password"}


@dataclass(frozen=True)
class SentinelUrl:
    """A parsed sentinel URL. `options` are the data nodes' connection options (credentials,
    db, TLS, the URL's own options); `sentinel_options` the sentinels' credentials."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    tls: bool = False
    options: dict[str, Any] = field(default_factory=dict, repr=False)
    sentinel_options: dict[str, Any] = field(default_factory=dict, repr=False)


def is_sentinel_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in SCHEMES if "://" in url else False


def split_hosts_url(
    url: str, schemes: Collection[str], default_port: int, form: str
) -> tuple[SplitResult, str, tuple[tuple[str, int], ...]]:
    """A URL of several hosts (`scheme://[userinfo@]h1[:port],h2...`): its parts, its
    userinfo and its hosts; SettingsError (naming the URL without secrets, and `form`)
    for a scheme not in `schemes` or a malformed host."""
    scheme = url.split("://", 1)[0].lower()
    if scheme not in schemes:
        raise bad_url(url, f"the scheme must be one of {', '.join(schemes)}", form)
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an unclosed [ of an IPv6 address
        raise bad_url(url, str(exc), form) from None
    userinfo, _, hosts = parts.netloc.rpartition("@")
    try:
        return parts, userinfo, tuple(host_port(h, default_port) for h in hosts.split(","))
    except ValueError as exc:
        raise bad_url(url, str(exc), form) from None


def parse_sentinel_url(url: str) -> SentinelUrl:
    """SettingsError, saying what is wrong (never the password), for a malformed one."""
    parts, userinfo, sentinels = split_hosts_url(url, SCHEMES, DEFAULT_PORT, FORM)
    path = [unquote(p) for p in parts.path.split("/")[1:]]
    if not path or not path[0]:
        raise _bad(url, "no service name after the hosts")
    if len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise _bad(url, "after the service name, only a database number may follow")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    tls = SCHEMES[parts.scheme.lower()]
    if "ssl" in query or (not tls and any(k.startswith("ssl_") for k in query)):
        raise _bad(url, "TLS is the scheme's to say: rediss+sentinel:// (ssl_* options too)")
    sentinel_options = {
        _SENTINEL_OPTIONS[k]: query.pop(k) for k in list(query) if k in _SENTINEL_OPTIONS
    }
    # redis-py reads (and types) the data nodes' options and credentials as for a redis://
    # URL of the same userinfo and query
    stand_in = f"redis://{userinfo + '@' if userinfo else ''}sentinel/?{urlencode(query)}"
    try:
        options = parse_url(stand_in)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        raise _bad(url, str(exc)) from None
    options.pop("host", None)
    if len(path) == 2 and "db" not in options:
        options["db"] = int(path[1])
    return SentinelUrl(sentinels, path[0], tls, options, sentinel_options)


def host_port(netloc: str, default_port: int) -> tuple[str, int]:
    """`host[:port]` of a URL's comma-separated hosts (an IPv6 address in brackets); the
    port `default_port` unless given. ValueError saying what is wrong."""
    host, port = netloc, ""
    if netloc.startswith("["):  # [IPv6]:port
        host, _, rest = netloc[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise ValueError(f"{netloc!r} is not host[:port]")
        port = rest[1:]
    elif ":" in netloc:
        host, _, port = netloc.rpartition(":")
    if not host:
        raise ValueError("a host is empty (hosts are separated by commas)")
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"{netloc!r}: the port must be a number in 1..65535")
    return unquote(host), int(port) if port else default_port


def bad_url(url: str, why: str, form: str) -> SettingsError:
    """The error, naming the URL without its user part and options (no secret shown)."""
    scheme, _, rest = url.partition("://")
    rest = rest.split("?", 1)[0].rpartition("@")[2]
    return SettingsError(f"{scheme}://{rest}: {why} (the form: {form})")


def _bad(url: str, why: str) -> SettingsError:
    return bad_url(url, why, FORM)


class _PrimaryConnection(SentinelManagedConnection):
    """A connection to the primary that asks the sentinels where it is every time it
    connects. redis-py's asks them only for a connection the pool hands out new: one that a
    command's retry reconnects goes back to the address it had (redis/redis-py#3874), the
    dead primary or the demoted one, until the retries run out. Here each retry asks again,
    and tries that address once: the next try is the retry's, after its backoff."""

    def connect(self) -> None:  # a connection the pool hands out new: retried, as redis-py's
        check = self.connection_pool.check_connection
        self.retry.call_with_retry(lambda: self.connect_check_health(check), lambda _: None)

    def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        if self._sock:
            return
        self.host, self.port = self.connection_pool.get_master_address()
        super().connect_check_health(check_health=check_health, retry_socket_connect=False)


class _PrimarySSLConnection(_PrimaryConnection, SSLConnection):
    pass


class _SentinelClient(Redis):
    """The primary's client; closing it closes its connections to the sentinels too."""

    def close(self) -> None:
        super().close()
        pool = getattr(self, "connection_pool", None)
        if isinstance(pool, SentinelConnectionPool):
            pool.sentinel_manager.close()


def master_client(url: SentinelUrl, **options: Any) -> Redis:
    """A client of the primary the sentinels name, with `options` (the URL's own win, as
    Redis.from_url lets them): the retry, the timeouts and decoding of every client. The
    sentinels are asked with the same connect timeout, and no retry of their own (the next
    sentinel is asked instead)."""
    timeout = options.get("socket_connect_timeout") or 5.0
    sentinel = Sentinel(
        url.sentinels,
        sentinel_kwargs={
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            **url.sentinel_options,
        },
    )
    client = sentinel.master_for(
        url.service,
        redis_class=_SentinelClient,
        connection_class=_PrimarySSLConnection if url.tls else _PrimaryConnection,
        **{**options, **url.options},
    )
    assert isinstance(client, Redis)
    return client
