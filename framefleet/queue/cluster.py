"""Cluster URLs: a Redis Cluster (or Valkey's), spoken to through redis-py's RedisCluster.

    redis+cluster://[user[:password]@]host[:port][,host[:port]...][/0][?options]

- `rediss+cluster://`: TLS to every node; `valkey+cluster://` and `valkeys+cluster://` are
  the same two;
- each host is a startup node (port 6379 unless given; an IPv6 address in brackets): any
  node of the cluster will do, the client learns the others from it (CLUSTER SLOTS); give
  several, so that one down does not keep the client from starting;
- a cluster has database 0 only;
- user, password and the options are every node's, as in a redis:// URL (redis-py's:
  `socket_timeout`, `ssl_ca_certs`, `ssl_cert_reqs`, ...).

Why a queue works on a cluster unchanged: every key of a queue carries the hash tag
`{<queue>}` (keys.py), so a queue lives in one slot, on one primary, and every Lua script
touches that slot alone (scripts name KEYS[1], the prefix, and build the other names from
it, which a cluster allows within the declared key's slot). Different queues spread over
the primaries by their names. The client sends each command to the primary of its key's
slot; after a failover (a replica promoted by the cluster itself) the first command on the
dead primary fails, the client refreshes its slot map and retries, for as long as its
retry allows (connect.py: 20 s by default).

What the queue does on one connection (the overlapped enqueue, the WAIT after a durable
enqueue or ack: a cluster pipeline would send WAIT to another node, which confirms at
once writes it never had) or asks of the queue's own server (INFO) goes to the primary
holding the queue's slot: `on_node`, which retries that the same way. A cluster none of
whose nodes answers is waited out as one server is, and said with a ConnectionError
(`_Cluster`).
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlencode

from redis import Redis
from redis.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.connection import parse_url
from redis.exceptions import (
    ClusterDownError,
    MovedError,
    ReadOnlyError,
    RedisClusterException,
    RedisClusterUnreachableError,
    RedisError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from framefleet.settings import SettingsError

from .sentinel import bad_url, split_hosts_url

Client = Redis | RedisCluster  # what connect() returns: one server's client, or a cluster's
T = TypeVar("T")

DEFAULT_PORT = 6379
SCHEMES = {  # scheme: TLS
    "redis+cluster": False,
    "rediss+cluster": True,
    "valkey+cluster": False,
    "valkeys+cluster": True,
}
OUTAGE_POLL_S = 0.25  # between the tries of a cluster none of whose nodes answers
FORM = "redis+cluster://[user:password@]host[:port][,host[:port]...][/0][?options]"
# What a server says while the cluster moves a slot or fails a primary over: try again
FOLLOW = (
    RedisConnectionError,
    RedisTimeoutError,
    MovedError,
    ClusterDownError,
    TryAgainError,
    ReadOnlyError,
    SlotNotCoveredError,
)


@dataclass(frozen=True)
class ClusterUrl:
    """A parsed cluster URL: the startup nodes, TLS, and every node's connection options
    (credentials, TLS files, the URL's own options)."""

    nodes: tuple[tuple[str, int], ...]
    tls: bool = False
    options: dict[str, Any] = field(default_factory=dict, repr=False)


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in SCHEMES if "://" in url else False


def parse_cluster_url(url: str) -> ClusterUrl:
    """SettingsError, saying what is wrong (never the password), for a malformed one."""
    parts, userinfo, nodes = split_hosts_url(url, SCHEMES, DEFAULT_PORT, FORM)
    if unquote(parts.path).strip("/") not in ("", "0"):
        raise _bad(url, "a cluster has database 0 only (the path may be /0 or nothing)")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    tls = SCHEMES[parts.scheme.lower()]
    if "ssl" in query or (not tls and any(k.startswith("ssl_") for k in query)):
        raise _bad(url, "TLS is the scheme's to say: rediss+cluster:// (ssl_* options too)")
    if query.get("db", "0") != "0":
        raise _bad(url, "a cluster has database 0 only")
    query.pop("db", None)
    # redis-py reads (and types) the nodes' options and credentials as for a redis://
    # (rediss://: the TLS connection class too) URL of the same userinfo and query
    stand_in = (
        f"{'rediss' if tls else 'redis'}://{userinfo + '@' if userinfo else ''}"
        f"cluster/?{urlencode(query)}"
    )
    try:
        options = parse_url(stand_in)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        raise _bad(url, str(exc)) from None
    options.pop("host", None)
    return ClusterUrl(nodes, tls, options)


def _bad(url: str, why: str) -> SettingsError:
    return bad_url(url, why, FORM)


class _Cluster(RedisCluster):
    """redis-py's cluster client, but a cluster none of whose nodes answers is waited out
    for `outage_s`, as one server that does not answer is for its retry, and then said
    with a ConnectionError. redis-py gives up at once (its retries end when a refresh of
    the slot map reached no node), with RedisClusterUnreachableError, which is no
    RedisError: the callers that wait out a Redis that does not answer catch RedisError."""

    def __init__(self, *args: Any, outage_s: float = 0.0, **kwargs: Any) -> None:
        self.outage_s = outage_s
        super().__init__(*args, **kwargs)

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        end = time.monotonic() + self.outage_s
        while True:
            try:
                return super().execute_command(*args, **kwargs)  # type: ignore[no-untyped-call]
            except RedisClusterUnreachableError as exc:
                left = end - time.monotonic()
                if left <= 0:
                    raise RedisConnectionError(str(exc)) from exc
                time.sleep(min(OUTAGE_POLL_S, left))  # each try also waits for its refresh

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> ClusterPipeline:
        pipe: ClusterPipeline = super().pipeline(transaction, shard_hint)  # type: ignore[no-untyped-call]
        pipe.__class__ = _Pipeline  # redis-py builds it; this adds the error's translation
        return pipe


class _Pipeline(ClusterPipeline):
    """A pipeline that says an unreachable cluster with a ConnectionError (not waited out:
    a pipeline is emptied by its execute)."""

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        with _unreachable_as_connection_error():
            return super().execute(raise_on_error)


@contextlib.contextmanager
def _unreachable_as_connection_error() -> Iterator[None]:
    try:
        yield
    except RedisClusterUnreachableError as exc:
        raise RedisConnectionError(str(exc)) from exc


def cluster_client(url: ClusterUrl, outage_s: float = 0.0, **options: Any) -> RedisCluster:
    """The cluster's client, with `options` (the URL's own win, as Redis.from_url lets
    them): the retry (redis-py's cluster client retries a failed command itself, after a
    refresh of its slot map; its nodes' connections do not), the timeouts and decoding of
    every client. A cluster none of whose nodes answers is waited out for `outage_s`.
    Connects at once, to learn the slot map: ConnectionError when no startup node
    answers."""
    options.pop("retry_on_error", None)  # the cluster client's own retry covers these
    startup = [ClusterNode(host, port) for host, port in url.nodes]  # type: ignore[no-untyped-call]
    with _unreachable_as_connection_error():
        return _Cluster(startup_nodes=startup, outage_s=outage_s, **{**options, **url.options})


def server_of(client: Client, key: str) -> Redis:
    """The client of the server holding `key`: the client itself for one server; for a
    cluster, that of the primary of `key`'s slot, as the client's slot map says (one try a
    command: on_node retries)."""
    if isinstance(client, Redis):
        return client
    return client.get_redis_connection(client.get_node_from_key(key))  # type: ignore[no-untyped-call]


def on_node(client: Client, key: str, call: Callable[[Redis], T]) -> T:
    """`call` with the client of the server holding `key`: the client itself for one
    server; for a cluster, the slot's primary, and while the cluster moves the slot or
    fails that primary over, tried again, with the cluster client's backoff, for as many
    tries as its retry allows, after a refresh of its slot map each time."""
    if isinstance(client, Redis):
        return call(client)
    retry = copy.copy(client.retry)
    retry.update_supported_errors(FOLLOW)

    def refresh(_: Exception) -> None:
        with contextlib.suppress(RedisError, RedisClusterException, OSError):
            client.nodes_manager.initialize()  # no node answers: the next try says

    return retry.call_with_retry(lambda: call(server_of(client, key)), refresh)


def nodes(client: RedisCluster) -> list[tuple[str, bool, Redis]]:
    """Every node the client knows: (host:port, primary or not, its client)."""
    return [
        (str(n.name), n.server_type == "primary", client.get_redis_connection(n))
        for n in client.get_nodes()  # type: ignore[no-untyped-call]
    ]
