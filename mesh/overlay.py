"""One node's view of the small-world overlay: events in, decisions out.

The ring is kept Chord-style: a list of successors and of predecessors
refreshed from the neighbours on either side (stabilisation copies the
successor's list, so dead entries fall out). On top of the ring each node
keeps a few *long links* drawn from Symphony's harmonic distribution (every
doubling of ring distance equally likely; the network size comes from the
density of the node's own lists) and a few *proximity links* to the
lowest-latency peers it has measured. Incoming links count for routing too.

The table does no I/O and never reads a clock: the driver calls
``maintenance(now, rng)`` now and then and carries out the returned actions
(``Probe``, ``AskNeighbours``, ``FindLong``, ``Drop``), then reports the
results through ``record_rtt``, ``probe_failed``, ``merge_neighbours`` and
``long_link_found``. A peer that misses ``probe_misses`` probes in a row is
removed everywhere and every kind of link is refilled: successors from the
lists of the remaining neighbours, long links by a fresh harmonic draw,
proximity links from measured candidates.

Routing answers come from ``step`` (see ``poolai.mesh.routing``); lookups
from ``lookup`` (see ``poolai.mesh.lookup``).
"""

from __future__ import annotations

import bisect
import dataclasses
import random
import statistics
from collections import OrderedDict
from collections.abc import Iterable, Sequence

from poolai.mesh import coords
from poolai.mesh.links import (
    DEFAULT_CONFIG,
    Action,
    AskNeighbours,
    Drop,
    FindLong,
    LinkSet,
    OverlayConfig,
    Probe,
)
from poolai.mesh.lookup import DEFAULT_LOOKUP, IterativeLookup, LookupConfig, StepRequest
from poolai.mesh.ring import (
    RING_MASK,
    clockwise,
    harmonic_target,
    node_position,
    size_from_span,
)
from poolai.mesh.routing import LeafView, PeerInfo, Step
from poolai.mesh.routing import step as route_step


@dataclasses.dataclass(slots=True)
class _LongSlot:
    peer: PeerInfo | None = None
    target: int | None = None  # target of the lookup in flight, if any
    drawn_for: float = 0.0  # size estimate the current link was drawn with
    retry_at: float = 0.0


class OverlayTable:
    """The overlay state of the node ``peer_id`` (opaque bytes; its position is derived)."""

    def __init__(
        self,
        peer_id: bytes,
        config: OverlayConfig = DEFAULT_CONFIG,
        coord: coords.Coord | None = None,
    ) -> None:
        self.config = config
        self.peer_id = peer_id
        self.position = node_position(peer_id)
        self.coord = coord if coord is not None else coords.origin(config.vivaldi)
        self._rng = random.Random(peer_id)  # only for Vivaldi tie-breaks when no rng is passed
        self._succ: list[PeerInfo] = []
        self._pred: list[PeerInfo] = []
        self._long = [_LongSlot() for _ in range(config.long_links)]
        self._prox: list[PeerInfo] = []
        self._incoming: dict[bytes, tuple[PeerInfo, float]] = {}
        self._nbr: dict[bytes, tuple[LinkSet, float]] = {}
        self._asked: dict[bytes, float] = {}
        self._rtt: OrderedDict[bytes, tuple[float, PeerInfo]] = OrderedDict()
        self._misses: dict[bytes, int] = {}
        self._next_probe: dict[bytes, float] = {}
        self._failed: dict[bytes, float] = {}
        self._out: tuple[PeerInfo, ...] = ()
        self._drops: list[bytes] = []
        self._next_stabilise = 0.0
        self._next_sample = 0.0
        self._next_prox = 0.0
        self._snapshot: LinkSet | None = None
        self._known: list[PeerInfo] | None = None
        self._views: list[LeafView] | None = None
        self._size: float | None = None
        self._version = 0

    # -- queries ------------------------------------------------------------------------

    @property
    def info(self) -> PeerInfo:
        """This node as its peers should see it (with its current coordinate)."""
        return PeerInfo(self.peer_id, self.position, self.coord)

    def links(self) -> LinkSet:
        """A frozen snapshot of every link, to serve to neighbours and status pages."""
        if self._snapshot is None:
            fresh = self._fresh
            self._snapshot = LinkSet(
                node=self.info,
                successors=fresh(self._succ),
                predecessors=fresh(self._pred),
                long=fresh(s.peer for s in self._long if s.peer is not None),
                proximity=fresh(self._prox),
                incoming=tuple(p for p, _ in self._incoming.values()),
                out=fresh(self._out),
                size_estimate=self.size_estimate(),
                version=self._version,
            )
        return self._snapshot

    def size_estimate(self) -> float:
        """Network size guessed from how densely the successor/predecessor lists fill the ring."""
        if self._size is None:
            self._size = self._estimate_size()
        return self._size

    def _estimate_size(self) -> float:
        if not self._succ or not self._pred:
            return float(1 + len(self._succ) + len(self._pred))
        ids = {p.peer_id for p in self._succ}
        if any(p.peer_id in ids for p in self._pred):
            return float(1 + len(ids | {p.peer_id for p in self._pred}))  # lists wrap: all known
        span = clockwise(self._pred[-1].position, self._succ[-1].position)
        return size_from_span(len(self._succ) + len(self._pred), span)

    def ms_per_bit(self) -> float:
        """Latency weight of routing: the typical RTT to our links per ring bit one hop resolves."""
        rtts = [e[0] for e in map(self._rtt.get, (p.peer_id for p in self._out)) if e is not None]
        typical = statistics.median(rtts) if rtts else self.config.default_rtt_ms
        return typical / self.config.bits_per_hop

    def measured_rtt(self, peer_id: bytes) -> float | None:
        """The smoothed RTT we measured to ``peer_id``, if any."""
        entry = self._rtt.get(peer_id)
        return entry[0] if entry is not None else None

    def step(
        self, key: int, exclude: Iterable[bytes] = (), origin: coords.Coord | None = None
    ) -> Step:
        """Answer a routing request: the owner chain for ``key`` or ranked next hops.

        ``origin`` is the querier's coordinate (rank latency from its side);
        ``exclude`` peers it found dead. Never raises on odd input.
        """
        skip = frozenset(exclude) | self._failed.keys()
        return route_step(
            LeafView(self.info, tuple(self._succ), tuple(self._pred)),
            key,
            self._known_peers(),
            self._lookahead(),
            exclude=frozenset(skip),
            origin=origin,
            size_estimate=self.size_estimate(),
            ms_per_bit=self.ms_per_bit(),
            default_rtt_ms=self.config.default_rtt_ms,
            limit=self.config.step_limit,
        )

    def answer(self, request: StepRequest) -> Step:
        """``step`` for a request received from a querier."""
        return self.step(request.key, request.exclude, request.origin)

    def lookup(
        self, key: int, seeds: Sequence[PeerInfo] = (), config: LookupConfig = DEFAULT_LOOKUP
    ) -> IterativeLookup:
        """Start an iterative lookup of ``key`` from this node (seeds: bootstrap peers to try)."""
        # A node that knows nobody yet must not answer "mine" to its own join lookup.
        alone = not self._succ and not self._pred
        first = Step(self.info) if alone and seeds else self.step(key, origin=self.coord)
        return IterativeLookup(
            key,
            first,
            origin=self.coord,
            size_estimate=self.size_estimate(),
            ms_per_bit=self.ms_per_bit(),
            default_rtt_ms=self.config.default_rtt_ms,
            config=config,
            seeds=seeds,
        )

    # -- events -------------------------------------------------------------------------

    def observe(self, peer: PeerInfo, now: float, direct: bool = False) -> None:
        """Learn of a peer. ``direct``: it contacted us itself (clears a failure mark).

        Second-hand news of a peer we saw fail is ignored for ``failed_memory``.
        """
        pid = peer.peer_id
        if pid == self.peer_id:
            return
        if pid in self._failed:
            if not direct:
                return
            del self._failed[pid]
        if self._insert_leaf(peer):
            self._relink()

    def add_incoming(self, peer: PeerInfo, now: float) -> bool:
        """``peer`` keeps a link to us (call on each of its link probes). False when full."""
        self.observe(peer, now, direct=True)
        if peer.peer_id not in self._incoming and len(self._incoming) >= self.config.max_incoming:
            return False
        if peer.peer_id not in self._incoming:
            self._version += 1
            self._changed()
        self._incoming[peer.peer_id] = (peer, now)
        return True

    def record_rtt(
        self,
        peer_id: bytes,
        rtt_ms: float,
        their_coord: coords.Coord | None,
        now: float,
        rng: random.Random | None = None,
    ) -> None:
        """A round trip to ``peer_id`` took ``rtt_ms``: update our coordinate and its liveness."""
        if their_coord is not None:
            self.coord = coords.update(
                self.coord, their_coord, rtt_ms, rng or self._rng, self.config.vivaldi
            )
            self._snapshot = None
        self._misses.pop(peer_id, None)
        old = self._rtt.pop(peer_id, None)
        position = old[1].position if old is not None else node_position(peer_id)
        info = PeerInfo(peer_id, position, their_coord)
        self.observe(info, now, direct=True)
        smoothed = rtt_ms if old is None else 0.7 * old[0] + 0.3 * rtt_ms
        self._rtt[peer_id] = (smoothed, info)
        self._trim_rtt()

    def probe_failed(self, peer_id: bytes, now: float) -> bool:
        """A probe to ``peer_id`` timed out. Returns True when that removed the peer."""
        misses = self._misses.get(peer_id, 0) + 1
        self._misses[peer_id] = misses
        if misses >= self.config.probe_misses:
            self.mark_failed(peer_id, now)
            return True
        return False

    def mark_failed(self, peer_id: bytes, now: float) -> None:
        """Remove ``peer_id`` from every list at once and refill what it leaves empty."""
        self._failed[peer_id] = now + self.config.failed_memory
        for name in ("_misses", "_next_probe", "_nbr", "_asked", "_rtt", "_incoming"):
            getattr(self, name).pop(peer_id, None)
        self._succ = [p for p in self._succ if p.peer_id != peer_id]
        self._pred = [p for p in self._pred if p.peer_id != peer_id]
        self._prox = [p for p in self._prox if p.peer_id != peer_id]
        for slot in self._long:
            if slot.peer is not None and slot.peer.peer_id == peer_id:
                slot.peer, slot.retry_at = None, now
        for links, _ in list(self._nbr.values()):
            for p in (*links.successors, *links.predecessors, links.node):
                if p.peer_id not in self._failed:
                    self._insert_leaf(p)
        self._relink()

    def merge_neighbours(self, from_peer: bytes, links: LinkSet, now: float) -> None:
        """Take in ``from_peer``'s link set: lookahead for routing, and ring repair.

        From a peer on our successor (predecessor) list that side is *copied*,
        as in Chord's stabilisation, so entries it has seen die fall out of
        ours too; from anyone else new ring neighbours are only added.
        """
        if links.node.peer_id != from_peer or from_peer == self.peer_id:
            return
        links = links.clipped()
        self.observe(links.node, now, direct=True)
        old = self._nbr.get(from_peer)
        self._nbr[from_peer] = (links, now)
        changed = False
        ring = [links.node, *links.successors, *links.predecessors]
        if any(p.peer_id == from_peer for p in self._succ):
            new = self._nearest(ring, True)
            changed = [p.peer_id for p in new] != [p.peer_id for p in self._succ]
            self._succ = new
        if any(p.peer_id == from_peer for p in self._pred):
            new = self._nearest(ring, False)
            changed = changed or [p.peer_id for p in new] != [p.peer_id for p in self._pred]
            self._pred = new
        if old is None or old[0].version != links.version:
            for p in (*links.successors, *links.predecessors):
                if p.peer_id != self.peer_id and p.peer_id not in self._failed:
                    changed = self._insert_leaf(p) or changed
        if changed:
            self._relink()
        else:
            self._known = self._views = None  # the neighbour's entries are new, ours are not

    def long_link_found(self, slot: int, target: int, owner: PeerInfo, now: float) -> None:
        """The lookup for long-link ``slot`` found ``owner``; stale or odd answers are ignored."""
        if not 0 <= slot < len(self._long) or self._long[slot].target != target:
            return
        s = self._long[slot]
        s.target = None
        if owner.peer_id == self.peer_id or owner.peer_id in self._failed:
            s.retry_at = now + self.config.long_retry
            return
        s.peer, s.drawn_for = owner, self.size_estimate()
        self._relink()

    def maintenance(self, now: float, rng: random.Random) -> list[Action]:
        """What to do now: probes, list requests, long-link lookups and drops that are due."""
        cfg = self.config
        actions: list[Action] = [Drop(p) for p in self._drops]
        self._drops = []
        self._expire(now)
        actions += self._long_link_actions(now, rng)
        for p in self._out:
            if now >= self._next_probe.get(p.peer_id, 0.0):
                self._next_probe[p.peer_id] = now + cfg.probe_interval
                actions.append(Probe(p.peer_id, True))
        asks: list[bytes] = []
        if now >= self._next_stabilise:
            self._next_stabilise = now + cfg.stabilise_interval
            asks += [p.peer_id for p in (self._succ[:1] + self._pred[:1])]
        asks += self._stale_neighbours(now)
        for pid in dict.fromkeys(asks):
            self._asked[pid] = now
            actions.append(AskNeighbours(pid))
        if now >= self._next_sample:
            self._next_sample = now + cfg.sample_interval
            # Vivaldi needs both far samples (global shape) and near ones (local accuracy,
            # which nearest-peer choices depend on): one random neighbour's neighbour, and
            # one of the nearest peers measured so far.
            pick = self._second_hand(rng, 1)
            if pick:
                actions.append(Probe(rng.choice(pick).peer_id, False))
            near = self._nearest_measured(cfg.near_samples)
            if near:
                actions.append(Probe(rng.choice(near), False))
        if now >= self._next_prox:
            self._next_prox = now + cfg.proximity_interval
            actions += self._proximity_actions(rng)
        return actions

    # -- internals ----------------------------------------------------------------------

    def _changed(self) -> None:
        self._size = None
        self._snapshot = None
        self._known = None
        self._views = None

    def _fresh(self, peers: Iterable[PeerInfo]) -> tuple[PeerInfo, ...]:
        """Peers with the newest coordinate we have for each (from our RTT samples)."""
        out = []
        for p in peers:
            entry = self._rtt.get(p.peer_id)
            out.append(entry[1] if entry is not None and entry[1].coord is not None else p)
        return tuple(out)

    def _nearest(self, peers: Iterable[PeerInfo], clockwise_side: bool) -> list[PeerInfo]:
        limit = self.config.successor_list if clockwise_side else self.config.predecessor_list
        best: dict[bytes, tuple[int, PeerInfo]] = {}
        for p in peers:
            if p.peer_id == self.peer_id or p.peer_id in self._failed:
                continue
            d = clockwise(self.position, p.position) if clockwise_side else clockwise(
                p.position, self.position
            )
            best[p.peer_id] = (d, p)
        return [p for _, p in sorted(best.values(), key=lambda e: e[0])[:limit]]

    def _insert_leaf(self, peer: PeerInfo) -> bool:
        # Hot path (every observed peer): reject on distance before any list scan.
        me = self.position
        changed = False
        d = (peer.position - me) & RING_MASK
        group, limit = self._succ, self.config.successor_list
        if d and (len(group) < limit or d < (group[-1].position - me) & RING_MASK):
            dists = [(p.position - me) & RING_MASK for p in group]
            if d not in dists:  # positions are sha256-derived: equal position, same peer
                group.insert(bisect.bisect_left(dists, d), peer)
                del group[limit:]
                changed = True
        d = (me - peer.position) & RING_MASK
        group, limit = self._pred, self.config.predecessor_list
        if d and (len(group) < limit or d < (me - group[-1].position) & RING_MASK):
            dists = [(me - p.position) & RING_MASK for p in group]
            if d not in dists:
                group.insert(bisect.bisect_left(dists, d), peer)
                del group[limit:]
                changed = True
        return changed

    def _relink(self) -> None:
        cfg = self.config
        out: dict[bytes, PeerInfo] = {}
        for p in (
            *self._succ[: cfg.successor_links],
            *self._pred[: cfg.predecessor_links],
            *(s.peer for s in self._long if s.peer is not None),
            *self._prox,
        ):
            out.setdefault(p.peer_id, p)
        new_ids = out.keys()
        for p in self._out:
            if p.peer_id not in new_ids:
                self._drops.append(p.peer_id)
                self._next_probe.pop(p.peer_id, None)
                self._misses.pop(p.peer_id, None)
        self._out = tuple(out.values())
        self._version += 1
        self._changed()

    def _neighbour_ids(self) -> set[bytes]:
        ids = {p.peer_id for p in self._out} | self._incoming.keys()
        ids.update(p.peer_id for p in self._succ[:1] + self._pred[:1])
        return ids

    def _expire(self, now: float) -> None:
        cfg = self.config
        ttl = cfg.probe_interval * (cfg.probe_misses + 1)
        stale = [pid for pid, (_, heard) in self._incoming.items() if now - heard > ttl]
        for pid in stale:
            del self._incoming[pid]
        for pid in [pid for pid, until in self._failed.items() if until <= now]:
            del self._failed[pid]
        keep = self._neighbour_ids()
        gone = [pid for pid in self._nbr if pid not in keep]
        for pid in gone:
            del self._nbr[pid]
        if stale:
            self._version += 1
        if stale or gone:
            self._changed()

    def _stale_neighbours(self, now: float) -> list[bytes]:
        cfg = self.config
        due = []
        for pid in self._neighbour_ids():
            asked = self._asked.get(pid)
            have = self._nbr.get(pid)
            if asked is not None and now - asked < (
                cfg.exchange_interval if have is not None else cfg.probe_interval
            ):
                continue
            due.append((have[1] if have is not None else -1.0, pid))
        due.sort()
        return [pid for _, pid in due[: cfg.exchange_batch]]

    def _long_link_actions(self, now: float, rng: random.Random) -> list[Action]:
        n = self.size_estimate()
        if n <= self.config.successor_list + 1:
            return []  # the lists already cover the whole ring: long links add nothing
        actions: list[Action] = []
        factor = self.config.resize_factor
        resize_done = False
        for i, slot in enumerate(self._long):
            if slot.target is not None and now < slot.retry_at:
                continue  # a lookup is in flight
            stale = slot.peer is not None and not (
                slot.drawn_for / factor <= n <= slot.drawn_for * factor
            )
            if slot.peer is None and now >= slot.retry_at or stale and not resize_done:
                resize_done = resize_done or stale  # re-draw one link per call, not all at once
                slot.target = harmonic_target(self.position, n, rng)
                slot.retry_at = now + self.config.long_retry
                actions.append(FindLong(i, slot.target))
        return actions

    def _second_hand(self, rng: random.Random, count: int) -> list[PeerInfo]:
        """The peers named by ``count`` random neighbours (cheap stand-in for all we know)."""
        if not self._nbr:
            return []
        out: list[PeerInfo] = []
        for links, _ in rng.sample(list(self._nbr.values()), min(count, len(self._nbr))):
            out += links.successors + links.predecessors + links.long + links.proximity
            out += links.incoming
        return [p for p in out if p.peer_id != self.peer_id and p.peer_id not in self._failed]

    def _proximity_actions(self, rng: random.Random) -> list[Action]:
        cfg = self.config
        if cfg.proximity_links == 0:
            return []
        taken = {p.peer_id for p in self._out if p not in self._prox}
        measured = sorted(
            ((rtt, info) for pid, (rtt, info) in self._rtt.items() if pid not in taken),
            key=lambda e: e[0],
        )
        best = [info for _, info in measured[: cfg.proximity_links]]
        if [p.peer_id for p in best] != [p.peer_id for p in self._prox]:
            self._prox = best
            self._relink()
        # Measure the most promising peer we have only a coordinate for.
        full = len(measured) >= cfg.proximity_links
        worst = measured[cfg.proximity_links - 1][0] if full else None
        unmeasured = [
            (coords.predicted_rtt(self.coord, p.coord), p.peer_id)
            for p in self._second_hand(rng, 2)
            if p.coord is not None and p.peer_id not in self._rtt and p.peer_id not in taken
        ]
        if unmeasured:
            guess, pid = min(unmeasured)
            if worst is None or guess < worst:
                return [Probe(pid, False)]
        return []

    def _nearest_measured(self, count: int) -> list[bytes]:
        links = {p.peer_id for p in self._out}
        ranked = sorted((e[0], pid) for pid, e in self._rtt.items() if pid not in links)
        return [pid for _, pid in ranked[:count]]

    def _trim_rtt(self) -> None:
        if len(self._rtt) <= self.config.rtt_memory:
            return
        links = {p.peer_id for p in self._out} | {p.peer_id for p in self._prox}
        for pid in list(self._rtt):
            if len(self._rtt) <= self.config.rtt_memory:
                break
            if pid not in links:
                del self._rtt[pid]

    def _known_peers(self) -> list[PeerInfo]:
        if self._known is None:
            seen: dict[bytes, PeerInfo] = {}
            for p in (*self._out, *(p for p, _ in self._incoming.values())):
                seen[p.peer_id] = p
            for links, _ in self._nbr.values():
                for p in links.peers():
                    seen.setdefault(p.peer_id, p)
            seen.pop(self.peer_id, None)
            for pid in self._failed:
                seen.pop(pid, None)
            self._known = list(seen.values())
        return self._known

    def _lookahead(self) -> list[LeafView]:
        if self._views is None:
            self._views = [links.leaf_view() for links, _ in self._nbr.values()]
        return self._views
