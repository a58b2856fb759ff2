"""Loads the Lua scripts (lua/*.lua, each prefixed with the histogram buckets of
metrics.py as a Lua table, then lua/_common.lua).

redis-py's `Script` calls EVALSHA and reloads the script by itself on NOSCRIPT, for example
after a server restart or a failover to a replica that never saw it.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

from redis.commands.core import Script

from .cluster import Client
from .metrics import lua_buckets

NAMES = (
    "enqueue",
    "claim",
    "renew",
    "progress",
    "ack",
    "fail",
    "release",
    "sweep",
    "release_workers",
    "ingest",
    "resume",
    "retry_dead",
    "purge_dead",
    "index_dead",
    "cancel",
    "stats",
    "heartbeat",
    "leader_hold",
    "leader_release",
    "health",
    "audit",
    "webhook",
)


@cache
def source(name: str) -> str:
    """The full text of one script: the buckets, the shared prelude, the script itself."""
    if name not in NAMES:
        raise KeyError(name)
    lua = resources.files("framefleet.queue") / "lua"
    common = (lua / "_common.lua").read_text(encoding="utf-8")
    body = (lua / f"{name}.lua").read_text(encoding="utf-8")
    return f"{lua_buckets()}\n{common}\n{body}"


class Scripts:
    """All scripts registered on one client; `run(name, prefix, *args)` calls one."""

    def __init__(self, client: Client) -> None:
        self._scripts: dict[str, Script] = {
            name: client.register_script(source(name)) for name in NAMES
        }
        self._loaded: set[str] = set()

    def run(self, name: str, prefix: str, args: list[Any]) -> Any:
        """Run a script (EVALSHA, loading it first if the server does not know it)."""
        return self._scripts[name](keys=[prefix], args=args)

    def load(self, name: str) -> str:
        """Make sure the server has the script (checked once per client; a later NOSCRIPT is
        the caller's to handle); returns its SHA, for raw EVALSHA."""
        script = self._scripts[name]
        if name not in self._loaded:
            if not script.registered_client.script_exists(script.sha)[0]:
                script.registered_client.script_load(script.script)
            self._loaded.add(name)
        return str(script.sha)

    def forget(self, name: str) -> None:
        """The server lost its script cache (restart, failover): check again next time."""
        self._loaded.discard(name)
