"""From settings to a connected client: a URL (redis://, rediss://, user:password@; a
primary found through Sentinel, redis+sentinel://: sentinel.py; a Redis Cluster,
redis+cluster://: cluster.py) or, with none, the embedded server."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis import Redis
from redis.backoff import EqualJitterBackoff, NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from framefleet.settings import Settings

from .cluster import Client, cluster_client, is_cluster_url, parse_cluster_url
from .cluster import nodes as cluster_nodes
from .durable import Durability
from .queue import Queue
from .sentinel import is_sentinel_url, master_client, parse_sentinel_url
from .server import ServerError, embedded

log = logging.getLogger(__name__)

MIN_VERSION = (6, 2)


RETRY_S = 20.0  # how long a command is retried while the server does not answer


def retry(seconds: float = RETRY_S) -> Retry:
    """redis-py's Retry on connection errors and timeouts, with jittered exponential backoff
    (50 ms to 1 s), for at least `seconds` in all: a server that restarts (a kill -9 and a
    reload of its append-only file, a failover) is waited for, not reported."""
    backoff = EqualJitterBackoff(cap=1.0, base=0.05)  # each wait: half fixed, half random
    retries, waited = 0, 0.0
    while waited < seconds:
        retries += 1
        waited += min(1.0, 0.05 * 2**retries) / 2
    return Retry(backoff, retries)


def connect(
    url: str,
    retry_s: float = RETRY_S,
    timeout_s: float = 30.0,
    *,
    durability: Durability | None = None,
) -> Client:
    """A client for `url`, checked to answer and to be a Redis/Valkey >= 6.2 primary that
    never evicts keys (through Sentinel: the primary the sentinels name, which the client
    follows through failovers; a cluster: every node so checked, the client a RedisCluster,
    which follows its failovers too). Its commands are retried for at least retry_s while the
    server does not answer, each reply awaited for up to timeout_s (the connection, at most
    5 s); the first check fails fast (a wrong URL is said at once, not after retry_s).
    `durability`: what the Queues on this client will wait for, checked to be possible
    (WAITAOF needs Redis >= 7.2 or Valkey, with its append-only file on)."""
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_connect_timeout": min(5.0, timeout_s),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
    }
    probe = _client(
        url, retry=Retry(NoBackoff(), 1), socket_timeout=min(10.0, timeout_s), **options
    )
    try:
        _check(probe, url, durability or Durability())
    finally:
        probe.close()
    return _client(
        url,
        outage_s=retry_s,
        health_check_interval=30,
        retry=retry(retry_s),
        socket_timeout=timeout_s,
        **options,
    )


def _client(url: str, outage_s: float = 0.0, **options: Any) -> Client:
    """redis-py's client for the URL: Redis.from_url's (redis://, rediss://, unix://;
    valkey:// and valkeys:// are the first two), the primary's through Sentinel, or a
    cluster's (which waits out `outage_s` when none of its nodes answers: the others'
    retry does that)."""
    if is_sentinel_url(url):
        return master_client(parse_sentinel_url(url), **options)
    if is_cluster_url(url):
        return cluster_client(parse_cluster_url(url), outage_s, **options)
    scheme, sep, rest = url.partition("://")
    if sep and scheme.lower() in ("valkey", "valkeys"):
        url = f"{scheme.lower().replace('valkey', 'redis')}://{rest}"
    return Redis.from_url(url, **options)


def _check(client: Client, url: str, durability: Durability) -> None:
    if not isinstance(client, RedisCluster):
        _check_server(client, redacted(url), durability)
        return
    # Every node: a replica is a primary after a failover, and must not evict either.
    for name, primary, node in cluster_nodes(client):
        _check_server(node, f"{redacted(url)} (node {name})", durability, primary=primary)


def _check_server(
    client: Redis, where: str, durability: Durability, *, primary: bool | None = None
) -> None:
    """One server's checks. `primary`: a cluster node's role, as the cluster says (None:
    a server on its own, which must be a primary)."""
    info = client.info("server")
    # Every Valkey release speaks at least Redis 7.2; Redis itself must be 6.2 or newer.
    version = str(info.get("redis_version", "0"))
    valkey = "valkey_version" in info
    if not valkey and _major_minor(version) < MIN_VERSION:
        raise ServerError(f"{where}: Redis {version} is older than 6.2")
    replication = client.info("replication")
    if primary is None and replication.get("role", "master") != "master":
        raise ServerError(
            f"{where} is a replica, which refuses writes: give the primary's URL, or"
            " the sentinels' (redis+sentinel://host:26379,.../service), which follow failovers"
        )
    policy = str(client.info("memory").get("maxmemory_policy", "noeviction"))
    if policy != "noeviction":
        raise ServerError(
            f"{where}: its maxmemory-policy is {policy}: the server deletes keys when"
            " it is full, and a queue whose items vanish loses videos (their ids stay in"
            " the state sets with no item behind them). Set maxmemory-policy noeviction"
            " (in a managed Redis, its parameter group): a full server then refuses writes,"
            " which framefleet reports and retries."
        )
    replicas = int(replication.get("connected_slaves", 0))
    if primary is not False and replicas < durability.replicas:
        log.warning(
            "%s has %d replica(s) connected, FRAMEFLEET_REDIS_MIN_REPLICAS asks for %d:"
            " enqueue and ack say NotDurable until they are",
            where,
            replicas,
            durability.replicas,
        )
    if durability.aof:
        if not valkey and _major_minor(version) < (7, 2):
            raise ServerError(
                f"{where}: FRAMEFLEET_REDIS_WAITAOF needs WAITAOF, which Redis"
                f" {version} lacks (Redis >= 7.2 or Valkey has it): unset it, and keep"
                " FRAMEFLEET_REDIS_MIN_REPLICAS (WAIT) alone"
            )
        if not int(client.info("persistence").get("aof_enabled", 0)):
            raise ServerError(
                f"{where}: FRAMEFLEET_REDIS_WAITAOF waits for the append-only file,"
                " which this server does not keep (appendonly no)"
            )


def redacted(url: str) -> str:
    """The URL without its password, in the user part (`:pw@`) or the query (`?password=`,
    which redis-py reads too, and a sentinel URL's `sentinel_password=`)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # a port that is no number, say: show nothing of what may be secret
        return "<a Redis URL that does not parse>"
    if password is not None:
        parts = parts._replace(netloc=parts.netloc.replace(f":{password}@", ":***@"))
    if parts.query:
        query = [
            (k, "***" if k.lower().endswith("password") else v)
            for k, v in parse_qsl(parts.query, keep_blank_values=True)
        ]
        parts = parts._replace(query=urlencode(query, safe="*/"))
    return urlunsplit(parts)


def _major_minor(version: str) -> tuple[int, int]:
    parts = [*version.split("."), "0", "0"][:2]
    try:
        return int(parts[0]), int(parts[1])
    except ValueError:
        return (0, 0)


@contextlib.contextmanager
def open_client(settings: Settings) -> Iterator[Client]:
    """A client for `settings.redis.url`, or for the embedded server when there is none."""
    durability = Durability.from_settings(settings.redis)
    if settings.redis.url:
        client = connect(settings.redis.url, durability=durability)
        try:
            yield client
        finally:
            client.close()
        return
    with embedded(settings.redis) as url:
        client = connect(url, durability=durability)
        try:
            yield client
        finally:
            client.close()


@contextlib.contextmanager
def open_queue(settings: Settings) -> Iterator[Queue]:
    with open_client(settings) as client:
        yield Queue(client, settings.queue, durability=Durability.from_settings(settings.redis))


def queue_at(url: str, settings: Settings) -> Queue:
    """A Queue on `url` (connect()'s client, closed with Queue.client.close()): settings.queue
    and the durability settings.redis asks of enqueue and ack."""
    durability = Durability.from_settings(settings.redis)
    return Queue(connect(url, durability=durability), settings.queue, durability=durability)
