"""Values the overlay table takes in and gives out: its config, link snapshots and actions.

All frozen: a ``LinkSet`` handed to a neighbour (or to a status page) can never
change under it, and the driver dispatches on the action's type, never on a
string.
"""

from __future__ import annotations

import dataclasses

from poolai.mesh.coords import VivaldiConfig
from poolai.mesh.routing import LeafView, PeerInfo

# Wire bounds of a LinkSet: a neighbour's list longer than these is cut, never stored.
MAX_LIST = 16
MAX_LONG = 8
MAX_PROXIMITY = 8
MAX_INCOMING = 64


@dataclasses.dataclass(frozen=True, slots=True)
class OverlayConfig:
    """How many links of each kind a node keeps, and how often it maintains them (seconds).

    The successor and predecessor *lists* are knowledge (refreshed from the
    neighbours on the ring); only their first ``successor_links`` and
    ``predecessor_links`` entries are links. Outgoing links of all kinds
    together never exceed ``max_out_links``.
    """

    successor_list: int = 8
    predecessor_list: int = 8
    successor_links: int = 2
    predecessor_links: int = 1
    long_links: int = 4
    proximity_links: int = 1
    max_out_links: int = 8
    max_incoming: int = 32
    resize_factor: float = 2.0  # re-draw long links when the size estimate moves this much
    probe_interval: float = 60.0
    probe_misses: int = 3  # a link missing this many probes in a row is declared failed
    stabilise_interval: float = 60.0
    exchange_interval: float = 600.0  # refresh each neighbour's link list this often
    exchange_batch: int = 4  # at most this many neighbour-list requests per maintenance call
    sample_interval: float = 30.0  # coordinate samples this often: one far, some near
    near_samples: int = 8  # near samples are drawn from this many nearest measured peers
    near_per_sample: int = 2  # near samples per sample_interval
    walk_per_sample: int = 2  # probes per sample_interval of peers a proximity walk named
    proximity_interval: float = 60.0
    long_retry: float = 60.0  # re-issue a long-link lookup that got no answer after this long
    failed_memory: float = 600.0  # ignore second-hand news of a failed peer this long
    rtt_memory: int = 64  # measured RTTs kept (links first, then the most recent)
    step_limit: int = 8  # next hops in one step answer
    bits_per_hop: float = 4.0  # ring bits one lookup round resolves, for the latency weight
    default_rtt_ms: float = 150.0  # assumed RTT to a peer with no coordinate
    vivaldi: VivaldiConfig = VivaldiConfig()

    def __post_init__(self) -> None:
        out = self.successor_links + self.predecessor_links + self.long_links
        if out + self.proximity_links > self.max_out_links:
            raise ValueError("link counts exceed max_out_links")
        if not (1 <= self.successor_links <= self.successor_list <= MAX_LIST):
            raise ValueError("need 1 <= successor_links <= successor_list <= MAX_LIST")
        if not (0 <= self.predecessor_links <= self.predecessor_list <= MAX_LIST):
            raise ValueError("need predecessor_links <= predecessor_list <= MAX_LIST")
        if self.predecessor_list < 1 or self.long_links > MAX_LONG:
            raise ValueError("need a predecessor list and at most MAX_LONG long links")
        if self.proximity_links > MAX_PROXIMITY or not 0 <= self.max_incoming <= MAX_INCOMING:
            raise ValueError("proximity or incoming bound out of range")
        if self.probe_misses < 1 or self.resize_factor <= 1.0 or self.bits_per_hop <= 0:
            raise ValueError("probe_misses >= 1, resize_factor > 1 and bits_per_hop > 0")


DEFAULT_CONFIG = OverlayConfig()


@dataclasses.dataclass(frozen=True, slots=True)
class LinkSet:
    """A node's links at one moment, as it tells its neighbours.

    ``successors``/``predecessors`` are the full lists, nearest first;
    ``out`` the distinct peers this node keeps outgoing links to (at most
    ``max_out_links``); ``incoming`` peers that keep a link to it.
    Coordinates inside may be a little older than the peers' current ones.
    """

    node: PeerInfo
    successors: tuple[PeerInfo, ...] = ()
    predecessors: tuple[PeerInfo, ...] = ()
    long: tuple[PeerInfo, ...] = ()
    proximity: tuple[PeerInfo, ...] = ()
    incoming: tuple[PeerInfo, ...] = ()
    out: tuple[PeerInfo, ...] = ()
    size_estimate: float = 1.0
    version: int = 0  # bumped by the owner whenever membership (not coordinates) changes

    def leaf_view(self) -> LeafView:
        """The stretch of ring this node knows, for owner chains."""
        return LeafView(self.node, self.successors, self.predecessors)

    def peers(self) -> list[PeerInfo]:
        """Every distinct peer named, the node itself first."""
        seen: dict[bytes, PeerInfo] = {self.node.peer_id: self.node}
        for group in (self.successors, self.predecessors, self.long, self.proximity, self.incoming):
            for p in group:
                seen.setdefault(p.peer_id, p)
        return list(seen.values())

    def clipped(self) -> LinkSet:
        """This link set cut to the wire bounds (apply to anything received from a peer)."""
        if (
            len(self.successors) <= MAX_LIST
            and len(self.predecessors) <= MAX_LIST
            and len(self.long) <= MAX_LONG
            and len(self.proximity) <= MAX_PROXIMITY
            and len(self.incoming) <= MAX_INCOMING
            and len(self.out) <= MAX_LIST + MAX_LONG + MAX_PROXIMITY
        ):
            return self
        return dataclasses.replace(
            self,
            successors=self.successors[:MAX_LIST],
            predecessors=self.predecessors[:MAX_LIST],
            long=self.long[:MAX_LONG],
            proximity=self.proximity[:MAX_PROXIMITY],
            incoming=self.incoming[:MAX_INCOMING],
            out=self.out[: MAX_LIST + MAX_LONG + MAX_PROXIMITY],
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Probe:
    """Ping ``peer``; report ``record_rtt`` on an answer, ``probe_failed`` on a timeout.

    ``link`` says the peer is one of our outgoing links (the driver tells the
    peer, which then counts us as an incoming link).
    """

    peer: bytes
    link: bool


@dataclasses.dataclass(frozen=True, slots=True)
class AskNeighbours:
    """Ask ``peer`` for its ``LinkSet``; report it with ``merge_neighbours``."""

    peer: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class AskNear:
    """Ask ``peer`` for ``near(our coordinate)``; report it with ``merge_near``."""

    peer: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class FindLong:
    """Look up the owner of ``target``; report ``long_link_found(slot, target, owner)``."""

    slot: int
    target: int


@dataclasses.dataclass(frozen=True, slots=True)
class Drop:
    """``peer`` is no longer one of our outgoing links (close the connection if unused)."""

    peer: bytes


Action = Probe | AskNeighbours | AskNear | FindLong | Drop
