"""Greedy routing on the ring: one node's answer to "who is closer to key K?".

A lookup is *iterative*: the querying node asks one hop after another for a
``Step`` and chooses whom to ask next itself (``IterativeLookup``). A step
answer is either an owner chain ("the key's owner is the first live node of
these", possibly the answering node itself) or a ranked list of next hops,
every one strictly closer to the key (in ring distance) than the answering
node. Strict progress makes every lookup terminate; the querier adds a query
budget, a hop limit and an exclude list of peers that timed out.

Next hops are ranked by a cost that weighs latency against progress::

    cost(c) = rtt(origin, c) + ms_per_bit * log2(1 + nodes between c and the key)

The second term is the expected number of remaining hops times the typical
time of one hop (``ms_per_bit`` is that time divided by the bits one hop
resolves): a nearby peer that gets nearly as close as a distant one wins.
RTTs come from Vivaldi coordinates, so the ranking costs no probes.

The answering node looks two links ahead: its candidates include its
neighbours' links (learned by ``merge_neighbours``), and a neighbour whose
successor/predecessor lists cover the key yields an owner chain directly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from poolai.mesh.coords import Coord, predicted_rtt
from poolai.mesh.ring import bits_to_go, in_arc, node_position, ring_distance

OWNER_CHAIN_LEN = 4  # live owner = first live entry; four deep survives three silent failures


@dataclasses.dataclass(frozen=True, slots=True)
class PeerInfo:
    """What the overlay knows of a peer: its opaque id, ring position and last coordinate."""

    peer_id: bytes
    position: int
    coord: Coord | None = None

    @classmethod
    def of(cls, peer_id: bytes, coord: Coord | None = None) -> PeerInfo:
        """Build from an id, deriving the position (never trust a position read off the wire)."""
        return cls(peer_id, node_position(peer_id), coord)


@dataclasses.dataclass(frozen=True, slots=True)
class Step:
    """One node's routing answer for a key.

    ``owners``: when non-empty, the key's owner is the first live peer of this
    tuple (a node that owns the key answers itself first, then its
    successors). ``next_hops``: peers strictly closer to the key, best
    first, as a fallback should every owner named be dead (empty when the
    responder owns the key). Both empty means the node is stuck (everything
    it knows is excluded). ``responder`` is the answering node, with its
    current coordinate.
    """

    responder: PeerInfo
    owners: tuple[PeerInfo, ...] = ()
    next_hops: tuple[PeerInfo, ...] = ()

    @property
    def is_owner(self) -> bool:
        """Whether the responder claims the key itself."""
        return bool(self.owners) and self.owners[0].peer_id == self.responder.peer_id


@dataclasses.dataclass(frozen=True, slots=True)
class LeafView:
    """A node's contiguous stretch of ring: predecessors and successors, nearest first."""

    node: PeerInfo
    successors: tuple[PeerInfo, ...]
    predecessors: tuple[PeerInfo, ...]


def owner_chain(view: LeafView, key: int, exclude: frozenset[bytes]) -> tuple[PeerInfo, ...]:
    """The owner chain for ``key`` if the view's stretch of ring covers it, else ``()``.

    Walks the stretch clockwise from the farthest predecessor; the first arc
    ``(a, b]`` holding the key names ``b``, followed by the nodes after it in
    case ``b`` has silently failed (so a node owning the key answers itself
    and its first successors). Excluded peers are skipped as if absent.
    """
    me = view.node
    if me.peer_id in exclude:
        return ()
    if not view.successors and not view.predecessors:
        return (me,)  # alone on the ring: owns everything
    succ = [p for p in view.successors if p.peer_id not in exclude]
    pred = [p for p in view.predecessors if p.peer_id not in exclude]
    stretch = [*reversed(pred), me, *succ]
    for i in range(1, len(stretch)):
        if in_arc(key, stretch[i - 1].position, stretch[i].position):
            return tuple(stretch[i : i + OWNER_CHAIN_LEN])
    return ()


@dataclasses.dataclass(frozen=True, slots=True)
class HopCost:
    """How next hops are ranked (see the module docstring): ``origin`` is the querier's
    coordinate (``None`` ranks by progress alone), ``size_estimate`` the network's size,
    ``ms_per_bit`` the time one resolved bit is worth, ``default_rtt_ms`` the RTT assumed
    for a peer with no comparable coordinate."""

    origin: Coord | None = None
    size_estimate: float = 1.0
    ms_per_bit: float = 25.0
    default_rtt_ms: float = 150.0

    def of(self, peer: PeerInfo, key: int) -> float:
        """Estimated time to reach the key's owner through ``peer``."""
        if self.origin is None:
            rtt = 0.0
        elif peer.coord is None or len(peer.coord.vec) != len(self.origin.vec):
            rtt = self.default_rtt_ms
        else:
            rtt = predicted_rtt(self.origin, peer.coord)
        return rtt + self.ms_per_bit * bits_to_go(ring_distance(peer.position, key), self.size_estimate)


BY_PROGRESS = HopCost()


def step(
    view: LeafView,
    key: int,
    known: Iterable[PeerInfo],
    lookahead: Iterable[LeafView] = (),
    *,
    exclude: frozenset[bytes] = frozenset(),
    cost: HopCost = BY_PROGRESS,
    limit: int = 8,
) -> Step:
    """Answer a routing request for ``key`` from one node's knowledge.

    ``view`` is the node's own successor/predecessor lists; ``known`` every
    other peer it may name (its links and its neighbours' links);
    ``lookahead`` its neighbours' own leaf views. ``cost`` ranks the next hops,
    from the querier's point of view in an iterative lookup.
    """
    me = view.node
    chain = owner_chain(view, key, exclude)
    if chain and chain[0].peer_id == me.peer_id:
        return Step(me, owners=chain)
    hops = rank_next_hops(
        me, key, [*view.successors, *view.predecessors, *known], exclude=exclude, cost=cost, limit=limit
    )
    if chain:
        return Step(me, owners=chain, next_hops=hops)
    # Lookahead: a neighbour whose lists cover the key names the owner for us.
    best_view: tuple[int, tuple[PeerInfo, ...]] | None = None
    for other in lookahead:
        if other.node.peer_id in exclude or not (other.successors or other.predecessors):
            continue
        other_chain = owner_chain(other, key, exclude)
        # A neighbour's chain naming us contradicts our own lists, which did not cover the
        # key: its view is stale or has a gap, so it is ignored.
        if other_chain and all(p.peer_id != me.peer_id for p in other_chain):
            d = ring_distance(other.node.position, key)
            if best_view is None or d < best_view[0]:
                best_view = (d, other_chain)
    return Step(me, owners=best_view[1] if best_view else (), next_hops=hops)


def rank_next_hops(
    me: PeerInfo,
    key: int,
    candidates: Iterable[PeerInfo],
    *,
    exclude: frozenset[bytes] = frozenset(),
    cost: HopCost = BY_PROGRESS,
    limit: int = 8,
) -> tuple[PeerInfo, ...]:
    """Candidates strictly closer to ``key`` than ``me``, cheapest first, at most ``limit``.

    The candidate making the most progress is always included (last if it is
    not among the cheapest), so a querier that only wants progress has it.
    """
    here = ring_distance(me.position, key)
    seen: dict[bytes, tuple[float, int, PeerInfo]] = {}
    for c in candidates:
        if c.peer_id in exclude or c.peer_id == me.peer_id or c.peer_id in seen:
            continue
        d = ring_distance(c.position, key)
        if d >= here:
            continue
        seen[c.peer_id] = (cost.of(c, key), d, c)
    if not seen:
        return ()
    entries = sorted(seen.values(), key=lambda e: (e[0], e[1]))
    chosen = [e[2] for e in entries[:limit]]
    closest = min(entries, key=lambda e: e[1])[2]
    if closest not in chosen:
        chosen[-1] = closest
    return tuple(chosen)


def clamp_exclude(peers: Sequence[bytes], limit: int) -> frozenset[bytes]:
    """The newest ``limit`` entries of an exclude list (requests carry a bounded list)."""
    return frozenset(peers[-limit:]) if limit > 0 else frozenset()
