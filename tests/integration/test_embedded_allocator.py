"""The embedded server runs on jemalloc where the machine has it: the wheel's Valkey is built
with glibc's malloc, whose cost per allocation grew with a million items queued (claim+ack
at 0.54x; with jemalloc 0.90x: BENCHMARKS, "A million queued")."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from framefleet.queue import EmbeddedServer, Queue, connect
from framefleet.queue.server import jemalloc_library
from framefleet.settings import QueueSettings

pytestmark = pytest.mark.needs("jemalloc")


def _mapped(pid: int) -> set[str]:
    return {line.split()[-1] for line in Path(f"/proc/{pid}/maps").read_text().splitlines()}


def test_the_server_runs_on_jemalloc_and_keeps_counting_its_memory(tmp_path: Path) -> None:
    """jemalloc is in the server's memory map (and not in ours: only the server gets it);
    the queue works on it; its used_memory, which maxmemory and QueueFull go by, still
    counts what is stored."""
    assert jemalloc_library(), "Debian's libjemalloc2 is installed (scripts/system-deps)"
    with EmbeddedServer(tmp_path / "redis") as server:
        assert server.pid is not None
        assert any("libjemalloc" in Path(m).name for m in _mapped(server.pid))
        client = connect(server.url)
        q = Queue(client, QueueSettings(name="alloc"))
        before = int(client.info("memory")["used_memory"])
        q.enqueue([f"s3://bucket/v/{k:06d}.mp4" for k in range(20_000)])
        grown = int(client.info("memory")["used_memory"]) - before
        assert 20_000 * 100 < grown < 20_000 * 2_000, grown
        (lease,) = q.claim(1, "w")
        assert q.ack(lease)
    assert not any("libjemalloc" in Path(m).name for m in _mapped(os.getpid()))
