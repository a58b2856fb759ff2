"""The queue on a Redis Cluster (README, "Redis beyond one server"): three primaries and a
replica each on loopback (tests/support/rediscluster.py), the client given the cluster URL
only. Each queue lives in one hash slot, so on one primary; two queues named to land on two
primaries are worked at once, every video done once. A primary killed -9 mid-run is
replaced by its replica (the cluster's own failover) and the clients follow; what
asynchronous replication can still lose is measured, and with min_replicas 1 (enqueue and
ack wait for the replica) nothing is. Every public operation runs on a cluster too."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest
from redis.cluster import RedisCluster as ClusterClient
from redis.exceptions import ConnectionError as RedisConnectionError

from framefleet.queue import (
    Keys,
    Queue,
    ServerError,
    State,
    Supervision,
    Verdict,
    connect,
    open_queue,
    redacted,
)
from framefleet.queue.connect import RETRY_S
from framefleet.queue.durable import Durability
from framefleet.settings import QueueSettings, RedisSettings, Settings
from tests.conftest import ManualClock
from tests.support.failover import LEASE_S, Clock, Tally, costs, drain, work
from tests.support.operations import (
    EVERY_OPERATION_SETTINGS,
    Noted,
    every_operation,
    public_methods,
)
from tests.support.rediscluster import ClusterNode, RedisCluster
from tests.support.sentinel import wait_until

pytestmark = pytest.mark.timeout(120)

# Named so that their hash tags fall in the slots of two different primaries (asserted)
QUEUES = ("traffic", "wildlife")
SETTINGS = QueueSettings(lease_s=LEASE_S, max_deliveries=5, poll_s=0.05)
N = 200  # videos a queue


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    with RedisCluster(tmp_path) as c:
        yield c


def _homes(cluster: RedisCluster) -> dict[str, tuple[int, ClusterNode]]:
    """Each queue's slot (CLUSTER KEYSLOT of its keys' prefix) and the primary serving it
    (CLUSTER SHARDS); two different primaries."""
    homes = {}
    for name in QUEUES:
        slot = cluster.keyslot(Keys(SETTINGS.prefix, name).base)
        homes[name] = slot, cluster.primary_of(slot)
    assert len({id(node) for _, node in homes.values()}) == len(QUEUES), homes
    return homes


def _in_threads(*targets: Callable[[], None], timeout: float = 60.0) -> None:
    """Runs each target in a thread of its own; re-raises the first error any of them hit."""
    errors: list[BaseException] = []

    def run(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as exc:  # handed to the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(t,), daemon=True) for t in targets]
    for t in threads:
        t.start()
    end = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, end - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "a worker did not finish"
    if errors:
        raise errors[0]


def _merged(tallies: list[Tally]) -> Tally:
    merged = Tally()
    for t in tallies:
        merged.acks += t.acks
        merged.refused += t.refused
        merged.answered += t.answered
        merged.longest_s = max(merged.longest_s, t.longest_s)
        merged.not_durable += t.not_durable
    return merged


def test_two_queues_live_on_two_primaries_and_every_video_is_done_once(
    cluster: RedisCluster,
) -> None:
    """open_queue with the cluster URL alone; two queues, each on the primary its hash tag
    names; two workers a queue, each its own client (as the actors are), claim, checkpoint
    and ack until nothing is left. Every video is done exactly once (one ack answered ok a
    video, one `done` outcome a video, acked_total N), and each queue's keys are all on its
    own primary (and its replica), none elsewhere."""
    homes = _homes(cluster)
    ids: dict[str, list[str]] = {}
    for name in QUEUES:
        settings = Settings(
            redis=RedisSettings(url=cluster.url()), queue=replace(SETTINGS, name=name)
        )
        with open_queue(settings) as q:
            assert isinstance(q.client, ClusterClient)
            ids[name] = q.enqueue([f"/v/{name}/{i}.mp4" for i in range(N)])
    tallies = {(name, k): Tally() for name in QUEUES for k in range(2)}
    queues = {key: Queue(connect(cluster.url()), replace(SETTINGS, name=key[0])) for key in tallies}
    try:
        _in_threads(*[partial(work, queues[k], tallies[k], f"w{k[1]}") for k in tallies])
        for name in QUEUES:
            q = queues[name, 0]
            tally = _merged([tallies[name, k] for k in range(2)])
            assert costs(q, ids[name], tally) == (0, 0)
            assert Counter(tally.acks.values()) == {1: N} and not tally.refused
            outcomes = q.outcomes(count=10 * N)
            assert sorted(o.id for o in outcomes) == sorted(ids[name])  # each once
            assert {o.state for o in outcomes} == {State.DONE}
            slot, home = homes[name]
            with home.admin() as r:
                keys_there = int(r.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot))
                assert keys_there > N and int(r.dbsize()) == keys_there  # this queue's alone
            assert q.server_info()["uptime_in_seconds"] >= 0  # INFO of the queue's primary
        others = [
            n for n in cluster.nodes[: cluster.primaries] if n not in {h for _, h in homes.values()}
        ]
        for node in others:
            with node.admin() as r:
                assert int(r.dbsize()) == 0
    finally:
        for q in queues.values():
            q.client.close()


@pytest.mark.parametrize("durable", [False, True], ids=["async", "min replicas 1"])
def test_a_kill_9_of_a_primary_mid_run_is_followed_and_every_video_done_once(
    cluster: RedisCluster, durable: bool
) -> None:
    """A worker loop (claim, checkpoint, ack) over N videos of the first queue, the primary
    of its slot killed -9 from another thread a quarter of the way, and brought back once
    its replica was promoted (as a supervisor would restart it: it rejoins as a replica);
    meanwhile the other queue, on another primary, is worked one video at a time. The
    cluster promotes the replica by itself (cluster-node-timeout 2 s) and both clients
    follow within their retry window (the other queue's too: with cluster-require-full-
    coverage, the default, the whole cluster refuses commands until the failover). The run
    ends with every video done, once in the surviving history. Asynchronous replication may
    lose the victim's last acks (each then done once more, after its lease ran out); with
    min_replicas 1 (FRAMEFLEET_REDIS_MIN_REPLICAS=1) none is lost, and every video is done
    exactly once (acks wait, NotDurable and made again, until the old primary is back as
    the new one's replica). What it cost is printed."""
    homes = _homes(cluster)
    victim, bystander = QUEUES
    slot, primary = homes[victim]
    replica = cluster.replica_of(primary)
    clock = Clock()
    durability = Durability(replicas=1, timeout_s=0.5) if durable else None
    queues = {
        name: Queue(
            connect(cluster.url(), durability=durability),
            replace(SETTINGS, name=name),
            clock=clock,
            durability=durability,
        )
        for name in QUEUES
    }
    try:
        ids = {victim: queues[victim].enqueue([f"/v/{i}.mp4" for i in range(N)]), bystander: []}
        wait_until("the replica up to date", partial(cluster.replicated, primary))
        tallies = {victim: Tally(halfway_at=N // 4), bystander: Tally()}
        killed: list[float] = []
        victim_done = threading.Event()

        def run_victim() -> None:
            try:
                work(queues[victim], tallies[victim])
            finally:
                victim_done.set()

        def run_bystander() -> None:  # one video at a time, while the victim's run lasts
            q = queues[bystander]
            while not victim_done.is_set():
                ids[bystander] += q.enqueue([f"/v/{len(ids[bystander])}.mp4"])
                work(q, tallies[bystander])

        def kill_and_restart() -> None:
            if tallies[victim].halfway.wait(60):
                primary.kill()
                killed.append(time.monotonic())
                cluster.wait_failover(primary, slot)
                primary.start()

        _in_threads(kill_and_restart, run_victim, run_bystander)
        assert killed, "the run ended before the kill"
        assert cluster.wait_failover(primary, slot) is replica
        wait_until("the old primary back as a replica", lambda: primary.role() == "slave")
        found = {}
        for name, q in queues.items():
            drain(q, clock, tallies[name])
            found[name] = costs(q, ids[name], tallies[name])
        follow_s = min(t for t in tallies[victim].answered if t > killed[0]) - killed[0]
        stall_s = tallies[bystander].longest_s
        assert follow_s < RETRY_S and stall_s < RETRY_S
        (lost, twice), refused = found[victim], tallies[victim].refused[Verdict.STALE]
        print(
            f"\ncluster kill -9 ({'min replicas 1' if durable else 'async'}): followed in"
            f" {follow_s:.2f} s, {lost} acks lost, {twice} videos done twice, {refused} lost"
            f" claims refused, {tallies[victim].not_durable} acks not durable (made again);"
            f" the other queue's longest turn {stall_s:.2f} s ({len(ids[bystander])} videos)"
        )
        assert lost == twice
        assert found[bystander] == (0, 0)
        if durable:
            assert (lost, twice) == (0, 0)
            assert all(n == 1 for t in tallies.values() for n in t.acks.values())
    finally:
        for q in queues.values():
            q.client.close()


def test_every_operation_runs_on_a_cluster(cluster: RedisCluster, clock: ManualClock) -> None:
    """Every public method of Queue and Supervision through the cluster URL, on one queue
    with nothing asked of durability and on another (another primary) with min_replicas 1:
    enqueue and ack then wait for the replica on the queue's primary (WAIT on the
    connection that wrote; a cluster pipeline would send it to another node, where it
    confirms nothing), and are confirmed."""
    for name, durability in zip(QUEUES, (None, Durability(replicas=1)), strict=True):
        client = connect(cluster.url(), durability=durability)
        try:
            used: set[str] = set()
            real = Queue(
                client,
                replace(EVERY_OPERATION_SETTINGS, name=name),
                clock=clock,
                durability=durability,
            )
            every_operation(Noted(real, used), Noted(Supervision(real), used), client, clock)
            assert used == public_methods(Queue, Supervision)
        finally:
            client.close()


def test_connect_checks_every_node_and_waits_out_a_cluster_that_does_not_answer(
    cluster: RedisCluster,
) -> None:
    """A replica that would evict keys (a primary after a failover) is refused by name; so
    is WAITAOF where a node keeps no append-only file. A cluster none of whose nodes
    answers (all killed) is waited out for the retry window, then said with a
    ConnectionError, as one server is (redis-py alone gives up at once, with an error that
    is no RedisError); one that comes back within the window (a restart of every node) is
    waited for."""
    replica = cluster.nodes[cluster.primaries]
    with replica.admin() as r:
        r.config_set("maxmemory-policy", "allkeys-lru")
    with pytest.raises(ServerError, match=rf"node 127\.0\.0\.1:{replica.port}\): its maxmemory"):
        connect(cluster.url())
    with replica.admin() as r:
        r.config_set("maxmemory-policy", "noeviction")
        r.config_set("appendonly", "no")
    with pytest.raises(ServerError, match=rf"node 127\.0\.0\.1:{replica.port}\).*appendonly no"):
        connect(cluster.url(), durability=Durability(aof=True))
    assert cluster.password not in redacted(cluster.url())
    client = connect(cluster.url())  # retried for RETRY_S
    short = connect(cluster.url(), retry_s=2)
    try:
        key = Keys(SETTINGS.prefix, QUEUES[0]).meta
        assert client.ping() and short.ping()
        cluster.stop()
        started = time.monotonic()
        with pytest.raises(RedisConnectionError):
            short.hget(key, "paused")
        assert 2.0 <= time.monotonic() - started < 2.0 + 5.0
        restart = threading.Timer(1.0, cluster.restart)
        restart.start()
        started = time.monotonic()
        client.hget(key, "paused")  # waited out
        waited_s = time.monotonic() - started
        restart.join()
        assert 1.0 <= waited_s < RETRY_S
    finally:
        client.close()
        short.close()
