"""A node's successor and predecessor lists: the Chord part of the overlay.

Both lists are kept nearest first and bounded. ``insert`` offers one peer
(joins, notifications); ``copy_from`` is stabilisation: from a peer on the
successor list we take what lies beyond it, plus its first predecessor when
that lies between us (a node that just joined), and the predecessor side
mirrors this. News thus flows one way round the ring, away from the nodes
that probe a dead peer, so a dead entry cannot circulate between lists.
"""

from __future__ import annotations

import bisect
from collections.abc import Container, Iterable, Sequence

from poolai.mesh.ring import RING_MASK, clockwise, size_from_span
from poolai.mesh.routing import LeafView, PeerInfo


class RingLists:
    """Successors (clockwise) and predecessors of the node at ``position``."""

    def __init__(self, peer_id: bytes, position: int, successors: int, predecessors: int) -> None:
        self.peer_id = peer_id
        self.position = position
        self.limits = (successors, predecessors)
        self.succ: list[PeerInfo] = []
        self.pred: list[PeerInfo] = []

    def view(self, me: PeerInfo) -> LeafView:
        return LeafView(me, tuple(self.succ), tuple(self.pred))

    def size_estimate(self) -> float:
        """Network size from how densely the lists fill their stretch of ring."""
        if not self.succ or not self.pred:
            return float(1 + len(self.succ) + len(self.pred))
        ids = {p.peer_id for p in self.succ}
        if any(p.peer_id in ids for p in self.pred):
            return float(1 + len(ids | {p.peer_id for p in self.pred}))  # lists wrap: all known
        span = clockwise(self.pred[-1].position, self.succ[-1].position)
        return size_from_span(len(self.succ) + len(self.pred), span)

    def insert(self, peer: PeerInfo) -> bool:
        """Offer a peer to both lists; True when either changed."""
        # Hot path (every observed peer): reject on distance before any list scan.
        me = self.position
        changed = False
        for group, limit, d, side in (
            (self.succ, self.limits[0], (peer.position - me) & RING_MASK, True),
            (self.pred, self.limits[1], (me - peer.position) & RING_MASK, False),
        ):
            if not d:
                continue
            if len(group) >= limit and d >= self._dist(group[-1], side):
                continue
            dists = [self._dist(p, side) for p in group]
            if d not in dists:  # positions are sha256-derived: equal position, same peer
                group.insert(bisect.bisect_left(dists, d), peer)
                del group[limit:]
                changed = True
        return changed

    def remove(self, peer_id: bytes) -> bool:
        before = len(self.succ) + len(self.pred)
        self.succ = [p for p in self.succ if p.peer_id != peer_id]
        self.pred = [p for p in self.pred if p.peer_id != peer_id]
        return len(self.succ) + len(self.pred) != before

    def copy_from(
        self,
        node: PeerInfo,
        successors: Sequence[PeerInfo],
        predecessors: Sequence[PeerInfo],
        skip: Container[bytes],
    ) -> bool:
        """Stabilise from ``node``'s lists (if ``node`` is on ours); True when a list changed."""
        changed = False
        for side in (True, False):
            group = self.succ if side else self.pred
            idx = next((i for i, p in enumerate(group) if p.peer_id == node.peer_id), None)
            if idx is None:
                continue
            beyond = successors if side else predecessors
            between = predecessors[:1] if side else successors[:1]
            span = self._dist(node, side)
            fresh = [*group[: idx + 1], *beyond]
            fresh += [p for p in between if 0 < self._dist(p, side) < span]
            new = self._nearest(fresh, side, skip)
            if [p.peer_id for p in new] != [p.peer_id for p in group]:
                group[:] = new
                changed = True
        return changed

    def _dist(self, peer: PeerInfo, side: bool) -> int:
        if side:
            return (peer.position - self.position) & RING_MASK
        return (self.position - peer.position) & RING_MASK

    def _nearest(
        self, peers: Iterable[PeerInfo], side: bool, skip: Container[bytes]
    ) -> list[PeerInfo]:
        best: dict[bytes, tuple[int, PeerInfo]] = {}
        for p in peers:
            if p.peer_id != self.peer_id and p.peer_id not in skip:
                best[p.peer_id] = (self._dist(p, side), p)
        ranked = sorted(best.values(), key=lambda e: e[0])
        return [p for _, p in ranked[: self.limits[0 if side else 1]]]
