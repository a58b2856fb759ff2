"""The embedded server keeps the queue across restarts and kill -9 (AOF)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from framefleet.queue import EmbeddedServer, Queue, ServerError, State, connect, embedded
from framefleet.queue.keys import STATES
from framefleet.queue.server import running_url
from framefleet.settings import QueueSettings, RedisSettings
from tests.conftest import SERVER_BUILDS


def _restart(server: EmbeddedServer) -> EmbeddedServer:
    return EmbeddedServer(
        server.data_dir, appendfsync=server.appendfsync, binary=server.binary
    ).start()


def _assert_consistent(q: Queue) -> None:
    """Every item hash is in exactly the zset its state names."""
    ids = {k.split(":item:", 1)[1] for k in q.client.scan_iter(q.keys.base + "item:*")}
    for item_id in ids:
        item = q.get(item_id)
        assert item is not None
        in_sets = [s for s in STATES if q.client.zscore(q.keys.state(s), item_id) is not None]
        assert in_sets == [item.state.value], (item_id, item.state, in_sets)


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


@pytest.mark.parametrize("build", list(SERVER_BUILDS))
def test_kill_9_with_appendfsync_always_keeps_every_acknowledged_write(
    tmp_path: Path, build: str
) -> None:
    """A writer enqueues, claims and acks as fast as it can; the server is killed -9 in the
    middle. Everything the writer was told had happened is there after the restart."""
    server = EmbeddedServer(tmp_path, appendfsync="always", binary=SERVER_BUILDS[build]()).start()
    q = Queue(connect(server.url, retry_s=0), QueueSettings())  # the kill ends the writer
    enqueued: list[str] = []
    acked: list[str] = []
    errors: list[BaseException] = []

    def writer() -> None:
        i = 0
        try:
            while True:
                enqueued.extend(q.enqueue([f"/v/{i}.mp4"]))
                if i % 3 == 2:
                    for lease in q.claim(2, "w"):
                        if q.ack(lease, f"file:///out/{lease.id}"):
                            acked.append(lease.id)
                i += 1
        except (RedisConnectionError, ConnectionResetError, OSError):
            return
        except RedisError as exc:  # anything else is a real failure
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    time.sleep(1.5)
    server.kill()
    thread.join(10)
    assert not thread.is_alive() and not errors
    assert len(enqueued) > 20 and len(acked) > 5  # it was mid-workload

    again = _restart(server)
    try:
        q2 = Queue(connect(again.url), QueueSettings())
        for item_id in enqueued:
            assert q2.get(item_id) is not None, item_id
        for item_id in acked:
            assert q2.get(item_id).state is State.DONE  # type: ignore[union-attr]
        _assert_consistent(q2)
    finally:
        again.stop()


def test_kill_9_with_everysec_keeps_what_is_older_than_the_fsync_window(tmp_path: Path) -> None:
    """everysec may lose about the last second of writes; what was written before that
    window survives a kill -9 (the README documents the window)."""
    server = EmbeddedServer(tmp_path, appendfsync="everysec").start()
    q = Queue(connect(server.url), QueueSettings())
    ids = q.enqueue([f"/v/{i}.mp4" for i in range(200)])
    time.sleep(2.5)
    server.kill()
    again = _restart(server)
    try:
        assert Queue(connect(again.url), QueueSettings()).stats().counts["queued"] == len(ids)
    finally:
        again.stop()


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
