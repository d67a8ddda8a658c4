"""How each pair of lab nodes is connected, from what the nodes and the kernel say.

Pure. A node's ``/api/status`` says whom it is connected to (and the addresses it
knows for them, where a ``/p2p-circuit`` address marks a relayed path); the TCP
sockets established in its namespace (``ss``) say over which path: every node has a
namespace of its own, so each socket there is that node's. A pair has a direct TCP
path when one side holds a socket to the address it sees the other at
(:meth:`Topology.seen_from`), counted only from a side where no third node looks the
same (two nodes behind one NAT are one address from outside).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from natlib.topology import LabNode, Topology, nat_pair, pairs

HOW = ("lan", "direct-tcp", "relayed", "unknown", "none")


@dataclasses.dataclass(frozen=True, slots=True)
class Socket:
    """One established TCP connection in a node's namespace."""

    local: tuple[str, int]
    remote: tuple[str, int]


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    """What the lab read at one moment: each node's connected peers (peer id -> the
    addresses its book holds) and the TCP sockets in its namespace."""

    peer_ids: Mapping[str, str]  # node name -> peer id
    peers: Mapping[str, Mapping[str, Sequence[str]]]  # node name -> {peer id: addrs}
    sockets: Mapping[str, Sequence[Socket]]
    relayed: Mapping[str, frozenset[str]] = dataclasses.field(default_factory=dict)
    # node name -> peer ids it reaches only through a relay (its status says so)

    def lists(self, a: LabNode, b: LabNode) -> bool:
        """Whether ``a``'s status lists ``b`` as connected."""
        pid = self.peer_ids.get(b.name)
        return pid is not None and pid in self.peers.get(a.name, {})


@dataclasses.dataclass(frozen=True, slots=True)
class Pair:
    a: str
    b: str
    nat_pair: str
    connected: bool
    how: str  # one of HOW
    evidence: str | None
    first_connected_s: float | None

    def to_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def parse_ss(text: str) -> list[Socket]:
    """Sockets from ``ss -Hnt state established`` (IPv4; the API's loopback ones dropped)."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        try:
            local, remote = _endpoint(fields[-2]), _endpoint(fields[-1])
        except ValueError:
            continue
        if not local[0].startswith("127."):
            out.append(Socket(local, remote))
    return out


def _endpoint(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or ":" in host or "." not in host:
        raise ValueError(text)
    return host, int(port)


def tcp_path(topo: Topology, snap: Snapshot, a: LabNode, b: LabNode) -> str | None:
    """A socket proving a direct TCP path between ``a`` and ``b``, as text, or None."""
    for viewer, other in ((a, b), (b, a)):
        if not topo.unambiguous(viewer, other):
            continue
        seen = topo.seen_from(viewer, other)
        for s in snap.sockets.get(viewer.name, ()):
            if s.remote[0] == seen:
                return f"{viewer.name} {s.local[0]}:{s.local[1]} <-> {s.remote[0]}:{s.remote[1]}"
    return None


def classify(topo: Topology, snap: Snapshot, a: LabNode, b: LabNode,
             first_connected_s: float | None = None) -> Pair:
    """How ``a`` and ``b`` are connected now (see :data:`HOW`)."""
    connected = snap.lists(a, b) or snap.lists(b, a)
    evidence = tcp_path(topo, snap, a, b) if connected else None
    if not connected:
        how = "none"
    elif evidence is not None:
        how = "lan" if topo.same_lan(a, b) else "direct-tcp"
    elif _circuit(snap, a, b):
        how, evidence = "relayed", "a /p2p-circuit address"
    else:
        how = "unknown"
    return Pair(a.name, b.name, nat_pair(a, b), connected, how, evidence, first_connected_s)


def _circuit(snap: Snapshot, a: LabNode, b: LabNode) -> bool:
    for viewer, other in ((a, b), (b, a)):
        pid = snap.peer_ids.get(other.name)
        if pid in snap.relayed.get(viewer.name, ()):
            return True
        addrs = snap.peers.get(viewer.name, {}).get(pid or "", ())
        if any("/p2p-circuit" in addr for addr in addrs):
            return True
    return False


def classify_all(topo: Topology, snap: Snapshot, first: Mapping[tuple[str, str], float]) -> list[Pair]:
    """Every pair of the lab's nodes; ``first`` holds each pair's time to first connection."""
    return [classify(topo, snap, a, b, first.get((a.name, b.name))) for a, b in pairs(topo.nodes)]


def summarise(found: Sequence[Pair]) -> dict[str, object]:
    """Counts by how, and per NAT pair type: pairs, connected, and how."""
    by_how = {how: sum(1 for p in found if p.how == how) for how in HOW}
    by_type: dict[str, dict[str, int]] = {}
    for p in found:
        row = by_type.setdefault(p.nat_pair, {"pairs": 0, "connected": 0})
        row["pairs"] += 1
        row["connected"] += p.connected
        row[p.how] = row.get(p.how, 0) + 1
    return {"pairs": len(found), "connected": sum(p.connected for p in found),
            "by_how": by_how, "by_nat_pair": dict(sorted(by_type.items()))}
