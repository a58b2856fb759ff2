"""From settings to a connected client: a URL (redis://, rediss://, user:password@) or, with
none, the embedded server."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

from redis import Redis

from framefleet.settings import Settings

from .queue import Queue
from .server import ServerError, embedded

MIN_VERSION = (6, 2)


def connect(url: str) -> Redis:
    """A client for `url`, checked to answer and to be Redis/Valkey >= 6.2."""
    client = Redis.from_url(url, decode_responses=True, health_check_interval=30)
    info = client.info("server")
    # Every Valkey release speaks at least Redis 7.2; Redis itself must be 6.2 or newer.
    version = str(info.get("redis_version", "0"))
    if "valkey_version" not in info and _major_minor(version) < MIN_VERSION:
        client.close()
        raise ServerError(f"{url}: Redis {version} is older than 6.2")
    policy = str(client.info("memory").get("maxmemory_policy", "noeviction"))
    if policy != "noeviction":
        client.close()
        raise ServerError(
            f"{_safe(url)}: its maxmemory-policy is {policy}: the server deletes keys when"
            " it is full, and a queue whose items vanish loses videos (their ids stay in"
            " the state sets with no item behind them). Set maxmemory-policy noeviction"
            " (in a managed Redis, its parameter group): a full server then refuses writes,"
            " which framefleet reports and retries."
        )
    return client


def _safe(url: str) -> str:
    """The URL without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def _major_minor(version: str) -> tuple[int, int]:
    parts = [*version.split("."), "0", "0"][:2]
    try:
        return int(parts[0]), int(parts[1])
    except ValueError:
        return (0, 0)


@contextlib.contextmanager
def open_client(settings: Settings) -> Iterator[Redis]:
    """A client for `settings.redis.url`, or for the embedded server when there is none."""
    if settings.redis.url:
        client = connect(settings.redis.url)
        try:
            yield client
        finally:
            client.close()
        return
    with embedded(settings.redis) as url:
        client = connect(url)
        try:
            yield client
        finally:
            client.close()


@contextlib.contextmanager
def open_queue(settings: Settings) -> Iterator[Queue]:
    with open_client(settings) as client:
        yield Queue(client, settings.queue)
