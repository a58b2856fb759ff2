"""The embedded server keeps the queue across restarts, and across a kill -9 followed by a power
cut (LazyFS) as far as its appendfsync mode promises."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from framefleet.queue import EmbeddedServer, Queue, ServerError, State, connect, embedded
from framefleet.queue.keys import STATES
from framefleet.queue.server import running_url
from framefleet.settings import QueueSettings, RedisSettings
from tests.conftest import SERVER_BUILDS
from tests.support.lazyfs import LazyFS


def _restart(server: EmbeddedServer) -> EmbeddedServer:
    return EmbeddedServer(
        server.data_dir, appendfsync=server.appendfsync, binary=server.binary
    ).start()


def _assert_consistent(q: Queue) -> None:
    """Every item hash is in exactly the zset its state names, and every zset member has
    a hash (read in a few round trips: after a power cut there are thousands)."""
    keys = q.client.scan_iter(q.keys.base + "item:*", count=1000)
    ids = sorted({k.split(":item:", 1)[1] for k in keys})
    members = {s: set(q.client.zrange(q.keys.state(s), 0, -1)) for s in STATES}
    items = {i.id: i for i in q.items(ids)}
    for item_id in ids:
        item = items.get(item_id)
        assert item is not None, item_id
        in_sets = [s for s in STATES if item_id in members[s]]
        assert in_sets == [item.state.value], (item_id, item.state, in_sets)
    assert set().union(*members.values()) <= set(ids)


def test_a_clean_restart_keeps_everything(tmp_path: Path) -> None:
    server = EmbeddedServer(tmp_path).start()
    q = Queue(connect(server.url), QueueSettings())
    ids = q.enqueue([f"/v/{i}.mp4" for i in range(50)])
    leases = q.claim(10, "w")
    q.progress(leases[0], 2, total=4)
    q.ack(leases[1], "file:///out/1")
    server.stop()

    again = _restart(server)
    try:
        q2 = Queue(connect(again.url), QueueSettings())
        assert q2.stats().counts == {
            "queued": 40,
            "delayed": 0,
            "leased": 9,
            "done": 1,
            "dead": 0,
            "inbox": 0,
            "rejected": 0,
        }
        assert q2.chunks(leases[0].id) == {2}
        assert q2.ack(leases[2]) == "ok"  # a lease held across the restart is still good
        assert {i.id for i in q2.items_in("queued", limit=100)} == set(ids) - {x.id for x in leases}
    finally:
        again.stop()


# The power-cut tests: the server's data dir is on LazyFS (tests/support/lazyfs.py), a
# writer enqueues, claims, checkpoints chunks and acks as fast as it can, the server is
# killed -9, then the power is cut (LazyFS drops what was not fsynced), then the server
# starts again on the same dir. A kill -9 alone loses nothing in any mode: the page cache
# keeps its writes.
# `needs("lazyfs")`: the session builds LazyFS (third_party/lazyfs) before the first test.
WRITE_S = 3.0  # how long the writer runs before the kill
WINDOW_S = 2.0  # everysec may lose what was acknowledged this shortly before the kill
RANK = {State.QUEUED: 0, State.LEASED: 1, State.DONE: 2}  # the writer's items only go up


CHUNKS = 2  # each claimed item's chunks: the first of a claim checkpoints both and is acked,
# the second checkpoints its first chunk and stays leased (so its checkpoint stays to be seen)


@dataclass(frozen=True)
class Write:
    """A write the writer was told had happened: item `id` reached `rank` at `at`, or, for
    a checkpoint, chunk `chunk` of the leased item `id` was kept."""

    at: float  # time.monotonic() when the reply came
    id: str
    rank: int
    chunk: int | None = None


@dataclass
class PowerCut:
    appendfsync: str
    build: str
    writes: list[Write]
    killed_at: float
    survived: dict[str, int]  # item id -> rank after the restart (absent: -1)
    chunks: dict[str, set[int]]  # item id -> its checkpointed chunks after the restart

    def kept(self, w: Write) -> bool:
        """Whether the write is there after the restart: the item at its rank or past it;
        a checkpoint, in the item's chunks, or its item done (an ack drops the chunks)."""
        rank = self.survived.get(w.id, -1)
        if w.chunk is None:
            return rank >= w.rank
        return rank == RANK[State.DONE] or w.chunk in self.chunks.get(w.id, set())

    def lost(self, older_than_s: float | None = None) -> list[Write]:
        """Acknowledged writes gone after the restart; with older_than_s, only those
        acknowledged at least that long before the kill."""
        before = float("inf") if older_than_s is None else self.killed_at - older_than_s
        return [w for w in self.writes if not self.kept(w) and w.at < before]

    def summary(self) -> str:
        lost = self.lost()
        oldest = f", the oldest {self.killed_at - lost[0].at:.2f}s before the kill" if lost else ""
        checkpoints = sum(w.chunk is not None for w in self.writes)
        lost_checkpoints = sum(w.chunk is not None for w in lost)
        return (
            f"{self.build} appendfsync {self.appendfsync}: {len(self.writes)} acknowledged "
            f"writes ({checkpoints} checkpoints; {len(self.survived)} items survived), "
            f"{len(lost)} lost ({lost_checkpoints} checkpoints){oldest}"
        )


def _appendfsync(q: Queue) -> str:
    return str(q.client.config_get("appendfsync")["appendfsync"])


def _power_cut(tmp_path: Path, appendfsync: str, build: str = "valkey-9.1") -> PowerCut:
    """Write for WRITE_S on LazyFS, kill -9, cut the power, restart: what survived."""
    writes: list[Write] = []
    errors: list[BaseException] = []
    with LazyFS(tmp_path / "disk", tmp_path / "mnt") as disk:
        binary = SERVER_BUILDS[build]()
        server = EmbeddedServer(disk.mount / "redis", appendfsync=appendfsync, binary=binary)
        try:
            q = Queue(connect(server.start().url, retry_s=0), QueueSettings())  # the kill ends it
            assert _appendfsync(q) == appendfsync

            def writer() -> None:
                i = 0
                try:
                    while True:
                        ids = q.enqueue([f"/v/{i}.mp4"])
                        writes.extend(Write(time.monotonic(), x, 0) for x in ids)
                        if i % 3 == 2:
                            leases = q.claim(2, "w")
                            writes.extend(Write(time.monotonic(), x.id, 1) for x in leases)
                            for n, lease in enumerate(leases):
                                for chunk in range(CHUNKS - n):
                                    if q.progress(lease, chunk, total=CHUNKS):
                                        writes.append(Write(time.monotonic(), lease.id, 1, chunk))
                                if n == 0 and q.ack(lease, f"file:///out/{lease.id}"):
                                    writes.append(Write(time.monotonic(), lease.id, 2))
                        i += 1
                except (RedisConnectionError, ConnectionResetError, OSError):
                    return
                except RedisError as exc:  # anything else is a real failure
                    errors.append(exc)

            thread = threading.Thread(target=writer, daemon=True)
            thread.start()
            time.sleep(WRITE_S)
            killed_at = time.monotonic()
            server.kill()
            thread.join(10)
            assert not thread.is_alive() and not errors, errors
        finally:
            server.kill()
        disk.cut_power()
        again = _restart(server)
        try:
            q2 = Queue(connect(again.url), QueueSettings())
            assert _appendfsync(q2) == appendfsync
            ids = list(dict.fromkeys(w.id for w in writes))
            survived = {i.id: RANK[i.state] for i in q2.items(ids)}
            checkpointed = list(dict.fromkeys(w.id for w in writes if w.chunk is not None))
            chunks = {item_id: q2.chunks(item_id) for item_id in checkpointed}
            _assert_consistent(q2)
        finally:
            again.stop()
    cut = PowerCut(appendfsync, build, writes, killed_at, survived, chunks)
    print(cut.summary())  # pytest -s shows the numbers the README quotes
    assert sum(1 for w in writes if w.at < killed_at - WINDOW_S) > 20, cut.summary()
    assert sum(1 for w in writes if w.rank == 2) > 10, cut.summary()  # it was mid-workload
    old_checkpoints = [w for w in writes if w.chunk is not None and w.at < killed_at - WINDOW_S]
    assert len(old_checkpoints) > 10, cut.summary()  # ...checkpoints too, long enough
    return cut


@pytest.mark.needs("lazyfs")
@pytest.mark.parametrize("build", list(SERVER_BUILDS))
def test_power_cut_with_appendfsync_always_loses_no_acknowledged_write(
    tmp_path: Path, build: str
) -> None:
    """Every enqueue, claim, checkpoint and ack the writer was told had happened is there
    after a kill -9 and a power cut: every enqueued id, every checkpointed chunk (or its item
    done), every acked id done."""
    cut = _power_cut(tmp_path, "always", build)
    assert not cut.lost(), cut.summary()


@pytest.mark.needs("lazyfs")
@pytest.mark.parametrize("build", list(SERVER_BUILDS))
def test_power_cut_with_everysec_loses_at_most_the_last_second(tmp_path: Path, build: str) -> None:
    """everysec may lose about the last second of acknowledged writes (the README's window),
    and nothing older: no enqueue, claim, checkpoint or ack."""
    cut = _power_cut(tmp_path, "everysec", build)
    assert not cut.lost(older_than_s=WINDOW_S), cut.summary()


@pytest.mark.needs("lazyfs")
def test_the_power_cut_is_real_appendfsync_no_loses_acknowledged_writes(tmp_path: Path) -> None:
    """The harness tells the modes apart: with `no` the server never fsyncs its AOF, so the
    power cut takes nearly everything since its start, writes older than everysec's window
    included; the two tests above would fail on it (a kill -9 alone loses nothing)."""
    cut = _power_cut(tmp_path, "no")
    assert len(cut.lost()) > 0.9 * len(cut.writes), cut.summary()
    assert cut.lost(older_than_s=WINDOW_S), cut.summary()


def test_processes_share_one_embedded_server_per_data_dir(tmp_path: Path) -> None:
    settings = RedisSettings(data_dir=tmp_path)
    with embedded(settings) as outer:
        with embedded(settings) as inner:
            assert inner == outer
        assert running_url(tmp_path) == outer  # the inner user did not stop it
        connect(outer).ping()
    assert running_url(tmp_path) is None


def test_a_server_that_cannot_start_says_why(tmp_path: Path) -> None:
    with pytest.raises(Exception, match=r"exited|did not answer"):
        EmbeddedServer(tmp_path, extra_args=("--no-such-option", "1")).start(timeout=5)


def test_two_servers_never_share_a_data_dir(tmp_path: Path) -> None:
    with EmbeddedServer(tmp_path) as first:
        with pytest.raises(ServerError, match="already runs"):
            EmbeddedServer(tmp_path).start()
        connect(first.url).ping()
