"""The ring storage places shares on: the overlay's membership, completed by a ring walk.

Placement (:mod:`poolai.storage.placement`) needs the same ring on every node.
The overlay already keeps one: each node knows its successor and predecessor
lists, its long and proximity links, and its neighbours' lists
(:meth:`OverlayTable.members`). In a small pool that is everybody; in a large
one it is a neighbourhood. :meth:`RingSource.refresh` completes it by walking
the ring: it asks the last peer it knows clockwise for that peer's successors
(the overlay's own ``links`` request), then the last of those, until the walk
comes back round to this node (``N / successor_list`` requests; bounded by
``max_hops``). The walk's answers are kept for ``ttl`` seconds (10 by default);
an upkeep pass always walks afresh.

Until the overlay has converged (a node that has just joined knows no
successors yet) the peers this node is connected to fill in, so a fresh node
still finds holders. Peers that hold shares but are not connected are dialled
by the transport (:meth:`RingSource.addresses` gives their addresses from the
peer book and the host's peer store).

The overlay learns that a peer has gone only after several missed probes
(minutes in a calm pool), and placing onto a dead peer moves shares off
their holders. So a peer this node failed to dial is left out of the ring
for ``unreachable_s`` (unless it is connected again), and
``refresh(verify=True)`` (each upkeep pass) dials every member not
connected first, at most ``max_verify`` of them, so repair places onto the
peers that are there.

Reads use :meth:`RingSource.reading_view`: the same ring plus the peers that
left it within ``departed_s``, marked absent. Placement then still computes
the holders the shares were put on (a smaller ring shifts the holders of
shares that stayed: see :mod:`poolai.storage.placement`), and a read asks
the holders that are there at once instead of walking the ring for shares
that moved in the computation only. ``departed_s`` is about two upkeep
passes: by then repair has rebuilt what left on the ring of present peers,
where reads look next.

Peers reachable only through a relay (a ``private`` advert and no direct connection to
this node: ``relay_only``, the rule is :func:`poolai.node.reach.roles.relay_only`) get no
shares from this node: they are left out of :meth:`RingSource.view` and kept, absent,
in :meth:`RingSource.reading_view`, so shares another node put on them over a direct
path are still found there. Bulk share traffic never rides a relay's circuit limits.

:func:`ring_of` is the pure rule; :class:`RingSource` is its driver.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import trio

from poolai.mesh.bounded import Memo
from poolai.mesh.errors import MeshError
from poolai.mesh.peer_ids import peer_id_bytes, peer_id_text
from poolai.mesh.ring import RING_MASK, node_position
from poolai.mesh.short_ids import short_id
from poolai.storage.placement import PeerId, Ring

if TYPE_CHECKING:
    from poolai.mesh.host import MeshHost
    from poolai.mesh.peers import PeerBook

log = logging.getLogger(__name__)

WALK_TIMEOUT = 10.0  # seconds one ring walk may take


def ring_of(me: PeerId, *groups: Iterable[PeerId]) -> Ring:
    """The ring of ``me`` and every peer in ``groups`` (duplicates count once)."""
    peers = {me}
    for group in groups:
        peers.update(bytes(p) for p in group)
    return Ring.from_positions((p, node_position(p)) for p in peers)


def walk_done(me_position: int, start: int, reached: int) -> bool:
    """Whether a clockwise walk from ``me_position`` that was at ``start`` and now reached
    ``reached`` has come back round past this node (pure)."""
    if reached == me_position:
        return True
    d_start = (start - me_position) & RING_MASK
    d_reached = (reached - me_position) & RING_MASK
    return d_reached <= d_start


class RingSource:
    """This node's ring view for placement (see the module doc).

    ``overlay`` is the running :class:`~poolai.mesh.overlay_net.OverlayNode`
    (or None: a node without the overlay uses its connections alone).
    """

    def __init__(
        self, host: MeshHost, overlay: Any | None, book: PeerBook | None, *,
        ttl: float = 10.0, max_hops: int = 256, clock: Callable[[], float] = time.monotonic,
        unreachable_s: float = 120.0, max_verify: int = 256, dial_timeout: float = 5.0,
        departed_s: float = 1200.0, relay_only: Callable[[str], bool] | None = None,
    ) -> None:
        self.host = host
        self.relay_only = relay_only  # peers reached only through a relay: no shares placed on them
        self.overlay = overlay
        self.book = book
        self.me = peer_id_bytes(host.peer_id)
        self.ttl = ttl
        self.max_hops = max_hops
        self.clock = clock
        self._walked: frozenset[PeerId] = frozenset()
        self._walked_at: float | None = None
        self._lock = trio.Lock()
        self._raw_ids: Memo[str, PeerId] = Memo(peer_id_bytes)
        self.unreachable_s = unreachable_s
        self.max_verify = max_verify
        self.dial_timeout = dial_timeout
        self._unreachable: dict[PeerId, float] = {}  # peer -> until (clock)
        self.departed_s = departed_s
        self._last_in_view: dict[PeerId, float] = {}  # peer -> when a view last held it (clock)

    def _connected(self) -> list[PeerId]:
        out = []
        for name in self.host.member_peers():  # not a reachability dial-back (mesh.members)
            try:
                out.append(self._raw_ids(name))
            except ValueError:
                pass  # not a peer id: it has no place on the ring
        return out

    def _members(self) -> list[PeerId]:
        if self.overlay is None:
            return []
        return [p.peer_id for p in self.overlay.table.members()]

    def view(self) -> Ring:
        """The ring shares are placed on: overlay members and the last walk, less the peers
        found unreachable, plus connected members; less the peers reachable only through
        a relay (``relay_only``; reads keep them, absent, see :meth:`reading_view`)."""
        now = self.clock()
        gone = self._gone(now)
        known = [p for p in (*self._members(), *self._walked) if p not in gone]
        ring = ring_of(self.me, known, self._connected())
        relayed = self._relay_only(ring.peers)
        if relayed:
            ring = ring.without(relayed)
        self._note_present(ring, now)
        return ring

    def _relay_only(self, peers: Iterable[PeerId]) -> set[PeerId]:
        if self.relay_only is None:
            return set()
        return {p for p in peers if p != self.me and self.relay_only(peer_id_text(p))}

    def _gone(self, now: float) -> set[PeerId]:
        """The peers marked unreachable whose time is not up (forgetting the others)."""
        gone = {p for p, until in self._unreachable.items() if until > now}
        if len(gone) < len(self._unreachable):
            self._unreachable = {p: u for p, u in self._unreachable.items() if u > now}
        return gone

    def reading_view(self) -> Ring:
        """:meth:`view` plus the peers that left it in the last ``departed_s``, marked absent
        (see the module doc)."""
        ring = self.view()
        present = set(ring.peers)
        relayed = set() if self.relay_only is None else self._relay_only(
            p for p in (*self._members(), *self._walked, *self._connected()) if p not in present)
        departed = sorted(p for p in {*self._last_in_view, *relayed} if p not in present)
        if not departed:
            return ring
        return Ring.from_positions(
            [*zip(ring.peers, ring.positions, strict=True), *((p, node_position(p)) for p in departed)],
            absent=departed,
        )

    def _note_present(self, ring: Ring, now: float) -> None:
        if len(self._last_in_view) > 10_000:
            self._last_in_view.clear()
        horizon = now - self.departed_s
        if any(t < horizon for t in self._last_in_view.values()):
            self._last_in_view = {p: t for p, t in self._last_in_view.items() if t >= horizon}
        for p in ring.peers:
            self._last_in_view[p] = now

    def mark_unreachable(self, peer: str) -> None:
        """A dial to ``peer`` failed: leave it out of the ring for a while."""
        try:
            raw = peer_id_bytes(peer)
        except ValueError:
            return
        if len(self._unreachable) > 10_000:
            self._unreachable.clear()
        self._unreachable[raw] = self.clock() + self.unreachable_s

    async def refresh(self, *, force: bool = False, verify: bool = False) -> Ring:
        """:meth:`view` after a ring walk (at most one per ``ttl`` unless ``force``); with
        ``verify`` also dial the members not connected and drop those that do not answer."""
        if self.overlay is not None:
            async with self._lock:
                now = self.clock()
                if force or self._walked_at is None or now - self._walked_at >= self.ttl:
                    with trio.move_on_after(WALK_TIMEOUT):
                        self._walked = frozenset(await self._walk())
                    self._walked_at = self.clock()
        if verify:
            await self._verify(self.view())
        return self.view()

    async def _verify(self, ring: Ring) -> None:
        connected = set(self._connected())
        todo = [p for p in ring.peers if p != self.me and p not in connected][: self.max_verify]
        limiter = trio.CapacityLimiter(16)

        async def dial(peer: PeerId) -> None:
            name = peer_id_text(peer)
            addrs = self.addresses(name)
            async with limiter:
                ok = False
                with trio.move_on_after(self.dial_timeout):
                    try:
                        if addrs:
                            await self.host.connect(name, addrs)
                            ok = True
                    except MeshError as exc:
                        log.info("storage ring: %s unreachable: %s", short_id(name), exc)
            if not ok:
                self.mark_unreachable(name)

        async with trio.open_nursery() as nursery:
            for peer in todo:
                nursery.start_soon(dial, peer)

    async def _walk(self) -> set[PeerId]:
        """Walk the ring clockwise from this node by successor lists; the peers met."""
        me_pos = node_position(self.me)
        gone = self._gone(self.clock())  # not asked: a dial to a peer that has gone takes ~0.7 s
        known = ring_of(self.me, [p for p in self._members() if p not in gone], self._connected())
        met: set[PeerId] = set()
        # Start from the last peer of our own view that lies clockwise of us: the overlay's
        # successor list has already told us who is in between.
        ring_after = [p for p in known.successors((me_pos + 1) & RING_MASK) if p != self.me]
        if not ring_after:
            return met
        cursor = ring_after[0]
        failed: set[PeerId] = set()
        for _ in range(self.max_hops):
            successors = () if cursor in gone else await self.overlay.neighbours_of(cursor)
            if not successors:
                if cursor not in gone and cursor not in self._connected():
                    self.mark_unreachable(peer_id_text(cursor))  # reads and later walks skip it
                failed.add(cursor)
                # An unreachable cursor: step to the next peer we know after it.
                later = [p for p in ring_of(self.me, known.peers, met).successors(
                    (node_position(cursor) + 1) & RING_MASK) if p not in failed]
                if not later or later[0] == self.me:
                    break
                cursor = later[0]
                continue
            met.update(p.peer_id for p in successors if p.peer_id != self.me)
            last = successors[-1]
            if walk_done(me_pos, node_position(cursor), last.position) or last.peer_id == self.me:
                break
            if any(p.peer_id == self.me for p in successors):
                break
            cursor = last.peer_id
        return met - failed - gone

    def addresses(self, peer: str) -> list[str]:
        """Addresses to dial ``peer`` at: the peer book's, then the host peer store's."""
        addrs: list[str] = []
        if self.book is not None:
            try:
                entry = self.book.get(peer)
            except ValueError:
                entry = None
            if entry is not None:
                addrs.extend(entry.addrs)
        for a in self.host.peer_addrs(peer):
            if a not in addrs:
                addrs.append(a)
        return addrs


def describe(ring: Ring) -> list[str]:
    """The ring's peers as text ids (for status pages and logs)."""
    return [peer_id_text(p) for p in ring.peers]
