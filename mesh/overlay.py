"""One node's view of the small-world overlay: events in, decisions out.

The ring is kept Chord-style (``poolai.mesh.ringlists``): lists of successors
and predecessors refreshed by stabilisation. On top of the ring each node
keeps a few *long links* drawn from Symphony's harmonic distribution (every
doubling of ring distance equally likely; the network size comes from the
density of the node's own lists) and a few *proximity links* to the
lowest-latency peers it has measured (``poolai.mesh.nearby``). Incoming links
count for routing too.

The table does no I/O and never reads a clock: the driver calls
``maintenance(now, rng)`` now and then, carries out the returned actions
(``Probe``, ``AskNeighbours``, ``AskNear``, ``FindLong``, ``Drop``) and
reports the results through ``record_rtt``, ``probe_failed``,
``merge_neighbours``, ``merge_near`` and ``long_link_found``. A peer that
misses ``probe_misses`` probes in a row is removed everywhere and every kind
of link is refilled: successors from the remaining neighbours' lists, long
links by a fresh harmonic draw, proximity links from measured peers.

Routing answers come from ``step`` (``poolai.mesh.routing``); lookups from
``lookup`` (``poolai.mesh.lookup``).
"""

from __future__ import annotations

import dataclasses
import random
import statistics
from collections.abc import Iterable, Sequence

from poolai.mesh import coords
from poolai.mesh.links import (
    DEFAULT_CONFIG,
    Action,
    AskNear,
    AskNeighbours,
    Drop,
    FindLong,
    LinkSet,
    OverlayConfig,
    Probe,
)
from poolai.mesh.lookup import (
    DEFAULT_LOOKUP,
    MAX_EXCLUDE,
    IterativeLookup,
    LookupConfig,
    StepRequest,
)
from poolai.mesh.nearby import NEAR_ANSWER, Measurements
from poolai.mesh.ring import RING_MASK, harmonic_target, node_position
from poolai.mesh.ringlists import RingLists
from poolai.mesh.routing import HopCost, LeafView, PeerInfo, Step
from poolai.mesh.routing import step as route_step

WALK_FANOUT = 2  # the proximity walk asks one of this many nearest measured peers
SNAPSHOT_REFRESH = 8  # rebuild the link snapshot for a new coordinate every this many samples


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
        self._ring = RingLists(peer_id, self.position, config.successor_list,
                               config.predecessor_list)
        self._long = [_LongSlot() for _ in range(config.long_links)]
        self._prox: list[PeerInfo] = []
        self._incoming: dict[bytes, tuple[PeerInfo, float]] = {}
        self._incoming_cap = config.max_incoming  # lowered for a node behind NAT (limit_incoming)
        self._nbr: dict[bytes, tuple[LinkSet, float]] = {}
        self._asked: dict[bytes, float] = {}
        self._meas = Measurements(config.rtt_memory)
        self._misses: dict[bytes, int] = {}
        self._next_probe: dict[bytes, float] = {}
        self._failed: dict[bytes, float] = {}
        self._out: tuple[PeerInfo, ...] = ()
        self._drops: list[bytes] = []
        self._next = {"stabilise": 0.0, "sample": 0.0, "proximity": 0.0}
        self._snapshot: LinkSet | None = None
        self._known: list[PeerInfo] | None = None
        self._views: list[LeafView] | None = None
        self._size: float | None = None
        self._version = 0
        self._samples = 0

    # -- queries ------------------------------------------------------------------------

    @property
    def info(self) -> PeerInfo:
        """This node as its peers should see it (with its current coordinate)."""
        return PeerInfo(self.peer_id, self.position, self.coord)

    def links(self) -> LinkSet:
        """A frozen snapshot of every link, to serve to neighbours and status pages."""
        if self._snapshot is None:
            fresh = self._meas.fresh
            self._snapshot = LinkSet(
                node=self.info,
                successors=tuple(map(fresh, self._ring.succ)),
                predecessors=tuple(map(fresh, self._ring.pred)),
                long=tuple(fresh(s.peer) for s in self._long if s.peer is not None),
                proximity=tuple(map(fresh, self._prox)),
                incoming=tuple(p for p, _ in self._incoming.values()),
                out=tuple(map(fresh, self._out)),
                size_estimate=self.size_estimate(),
                version=self._version,
            )
        return self._snapshot

    def size_estimate(self) -> float:
        """Network size guessed from how densely the successor/predecessor lists fill the ring."""
        if self._size is None:
            self._size = self._ring.size_estimate()
        return self._size

    def ms_per_bit(self) -> float:
        """Latency weight of routing: the typical RTT to our links per ring bit one hop resolves."""
        rtts = [e[0] for e in map(self._meas.rtt.get, (p.peer_id for p in self._out)) if e]
        typical = statistics.median(rtts) if rtts else self.config.default_rtt_ms
        return typical / self.config.bits_per_hop

    def hop_cost(self, origin: coords.Coord | None) -> HopCost:
        """How this node ranks next hops for a querier at ``origin``."""
        return HopCost(origin, self.size_estimate(), self.ms_per_bit(), self.config.default_rtt_ms)

    def members(self) -> tuple[PeerInfo, ...]:
        """Every live peer this node knows on the ring (read-only): its own successor,
        predecessor, long, proximity and incoming links and its neighbours' lists, without
        peers that recently failed. Storage places shares on these."""
        seen = {p.peer_id: p for p in (*self._ring.succ, *self._ring.pred)}
        for p in self._known_peers():
            seen.setdefault(p.peer_id, p)
        seen.pop(self.peer_id, None)
        return tuple(p for pid, p in seen.items() if pid not in self._failed)

    def measured_rtt(self, peer_id: bytes) -> float | None:
        """The smoothed RTT we measured to ``peer_id``, if any."""
        entry = self._meas.rtt.get(peer_id)
        return entry[0] if entry is not None else None

    def near(self, coord: coords.Coord, limit: int = NEAR_ANSWER) -> tuple[PeerInfo, ...]:
        """Our nearest peers and incoming links, ranked by predicted RTT to ``coord``.

        The answer to a peer's proximity walk (an ``AskNear`` on its side).
        """
        extra = (*self._prox, *(p for p, _ in self._incoming.values()))
        return self._meas.answer_near(coord, extra, self._failed, limit)

    def step(
        self, key: int, exclude: Iterable[bytes] = (), origin: coords.Coord | None = None
    ) -> Step:
        """Answer a routing request: the owner chain for ``key`` and/or ranked next hops.

        ``origin`` is the querier's coordinate (rank latency from its side);
        ``exclude`` peers it found dead. Never raises on odd input.
        """
        return route_step(
            self._ring.view(self.info),
            key,
            self._known_peers(),
            self._lookahead(),
            exclude=frozenset(exclude) | self._failed.keys(),
            cost=self.hop_cost(origin),
            limit=self.config.step_limit,
        )

    def answer(self, request: StepRequest) -> Step:
        """``step`` for a request received from a querier (its exclude list and coordinate
        are bounded and checked here: a bad coordinate ranks by progress alone)."""
        origin = request.origin
        if origin is not None and not origin.is_valid(self.config.vivaldi.dimensions):
            origin = None
        return self.step(request.key & RING_MASK, request.exclude[:MAX_EXCLUDE], origin)

    def lookup(
        self, key: int, seeds: Sequence[PeerInfo] = (), config: LookupConfig = DEFAULT_LOOKUP
    ) -> IterativeLookup:
        """Start an iterative lookup of ``key`` from this node (seeds: bootstrap peers to try)."""
        # A node that knows nobody yet must not answer "mine" to its own join lookup.
        alone = not self._ring.succ and not self._ring.pred
        first = Step(self.info) if alone and seeds else self.step(key, origin=self.coord)
        return IterativeLookup(
            key,
            first,
            cost=self.hop_cost(self.coord),
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
        if self._ring.insert(peer):
            self._relink()

    def add_incoming(self, peer: PeerInfo, now: float) -> bool:
        """``peer`` keeps a link to us (call on each of its link probes). False when full."""
        self.observe(peer, now, direct=True)
        if peer.peer_id not in self._incoming:
            if len(self._incoming) >= self._incoming_cap:
                return False
            self._version += 1
            self._changed()
        self._incoming[peer.peer_id] = (peer, now)
        return True

    def limit_incoming(self, cap: int) -> None:
        """Keep at most ``cap`` incoming links (never more than ``config.max_incoming``),
        dropping the least recently heard beyond it. A node reachable only through relays
        keeps fewer (``node/reach/roles.py``): it offers fewer peers as near and lookup
        candidates, and records no more linkers than that."""
        self._incoming_cap = max(0, min(cap, self.config.max_incoming))
        extra = len(self._incoming) - self._incoming_cap
        if extra > 0:
            for pid in sorted(self._incoming, key=lambda p: self._incoming[p][1])[:extra]:
                del self._incoming[pid]
            self._version += 1
            self._changed()

    @property
    def incoming_cap(self) -> int:
        return self._incoming_cap

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
            self._samples += 1
            if self._samples % SNAPSHOT_REFRESH == 0:
                self._snapshot = None  # let neighbours see our newer coordinate now and then
        self._misses.pop(peer_id, None)
        position = self._meas.position_of(peer_id)
        info = PeerInfo(peer_id, node_position(peer_id) if position is None else position,
                        their_coord)
        if self._meas.record(info, rtt_ms) or peer_id in self._failed:
            self.observe(info, now, direct=True)  # a peer measured before was offered before
        self._meas.trim({p.peer_id for p in self._out})

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
        for table in (self._misses, self._next_probe, self._nbr, self._asked, self._incoming):
            table.pop(peer_id, None)
        self._meas.forget(peer_id)
        self._ring.remove(peer_id)
        self._prox = [p for p in self._prox if p.peer_id != peer_id]
        for slot in self._long:
            if slot.peer is not None and slot.peer.peer_id == peer_id:
                slot.peer, slot.retry_at = None, now
        # Refill at once from the lists our ring neighbours sent lately; older ones may
        # still name peers that died since, so they wait for the next stabilisation.
        recent = now - 2 * self.config.stabilise_interval
        for links, heard in list(self._nbr.values()):
            if heard >= recent:
                self._ring.copy_from(links.node, links.successors, links.predecessors,
                                     self._failed)
        self._relink()

    def merge_neighbours(self, from_peer: bytes, links: LinkSet, now: float) -> None:
        """Take in ``from_peer``'s link set: lookahead for routing, and stabilisation.

        Only a peer on our own lists changes them (``RingLists.copy_from``);
        other peers' lists are never merged into ours: they may still name
        peers that died unnoticed and would spread them back.
        """
        if links.node.peer_id != from_peer or from_peer == self.peer_id:
            return
        links = links.clipped()
        self.observe(links.node, now, direct=True)
        self._nbr[from_peer] = (links, now)
        self._known = self._views = None
        if self._ring.copy_from(links.node, links.successors, links.predecessors, self._failed):
            self._relink()

    def merge_near(self, from_peer: bytes, peers: Sequence[PeerInfo], now: float) -> None:
        """``from_peer`` answered our ``AskNear``: the best of these are probed next."""
        skip = {self.peer_id, *self._failed}
        self._meas.offer_walk(peers[:NEAR_ANSWER], skip)

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
        neighbours = self._neighbour_ids()
        self._expire(now, neighbours)
        actions += self._long_link_actions(now, rng)
        for p in self._out:
            if now >= self._next_probe.get(p.peer_id, 0.0):
                self._next_probe[p.peer_id] = now + cfg.probe_interval
                actions.append(Probe(p.peer_id, True))
        asks: list[bytes] = []
        if self._due("stabilise", now, cfg.stabilise_interval):
            asks += [p.peer_id for p in (self._ring.succ[:1] + self._ring.pred[:1])]
        asks += self._stale_neighbours(now, neighbours)
        for pid in dict.fromkeys(asks):
            self._asked[pid] = now
            actions.append(AskNeighbours(pid))
        if self._due("proximity", now, cfg.proximity_interval):
            self._choose_proximity()
        if self._due("sample", now, cfg.sample_interval):
            actions += self._sample_actions(rng)
        return actions

    # -- internals ----------------------------------------------------------------------

    def _due(self, timer: str, now: float, interval: float) -> bool:
        if now < self._next[timer]:
            return False
        self._next[timer] = now + interval
        return True

    def _changed(self) -> None:
        self._size = None
        self._snapshot = None
        self._known = None
        self._views = None

    def _relink(self) -> None:
        cfg = self.config
        out: dict[bytes, PeerInfo] = {}
        for p in (
            *self._ring.succ[: cfg.successor_links],
            *self._ring.pred[: cfg.predecessor_links],
            *(s.peer for s in self._long if s.peer is not None),
            *self._prox,
        ):
            out.setdefault(p.peer_id, p)
        for p in self._out:
            if p.peer_id not in out:
                self._drops.append(p.peer_id)
                self._next_probe.pop(p.peer_id, None)
                self._misses.pop(p.peer_id, None)
        self._out = tuple(out.values())
        self._version += 1
        self._changed()

    def _neighbour_ids(self) -> set[bytes]:
        ids = {p.peer_id for p in self._out} | self._incoming.keys()
        ids.update(p.peer_id for p in self._ring.succ[:1] + self._ring.pred[:1])
        return ids

    def _expire(self, now: float, keep: set[bytes]) -> None:
        cfg = self.config
        ttl = cfg.probe_interval * (cfg.probe_misses + 1)
        stale = [pid for pid, (_, heard) in self._incoming.items() if now - heard > ttl]
        for pid in stale:
            del self._incoming[pid]
        for pid in [pid for pid, until in self._failed.items() if until <= now]:
            del self._failed[pid]
        gone = [pid for pid in self._nbr if pid not in keep]
        for pid in gone:
            del self._nbr[pid]
        if stale:
            self._version += 1
        if stale or gone:
            self._changed()

    def _stale_neighbours(self, now: float, neighbours: set[bytes]) -> list[bytes]:
        cfg = self.config
        due = []
        for pid in neighbours:
            asked = self._asked.get(pid)
            have = self._nbr.get(pid)
            wait = cfg.exchange_interval if have is not None else cfg.probe_interval
            if asked is None or now - asked >= wait:
                due.append((have[1] if have is not None else -1.0, pid))
        due.sort()
        return [pid for _, pid in due[: cfg.exchange_batch]]

    def _long_link_actions(self, now: float, rng: random.Random) -> list[Action]:
        n = self.size_estimate()
        if n <= self.config.successor_list + 1:
            return []  # the lists already cover the whole ring: long links add nothing
        actions: list[Action] = []
        factor = self.config.resize_factor
        resized = False
        for i, slot in enumerate(self._long):
            if slot.target is not None and now < slot.retry_at:
                continue  # a lookup is in flight
            stale = slot.peer is not None and not slot.drawn_for / factor <= n <= (
                slot.drawn_for * factor
            )
            if (slot.peer is None and now >= slot.retry_at) or (stale and not resized):
                resized = resized or stale  # re-draw one link per call, not all at once
                slot.target = harmonic_target(self.position, n, rng)
                slot.retry_at = now + self.config.long_retry
                actions.append(FindLong(i, slot.target))
        return actions

    def _sample_actions(self, rng: random.Random) -> list[Action]:
        # Vivaldi needs far samples (the global shape: a random neighbour's neighbour) and
        # near ones (local accuracy, which nearest-peer choices hinge on: our nearest
        # measured peers, and the best candidates our proximity walk turned up).
        cfg = self.config
        actions: list[Action] = []
        far = self._random_second_hand(rng)
        if far is not None:
            actions.append(Probe(far.peer_id, False))
        near = self._meas.near
        for pid in rng.sample(near, min(cfg.near_per_sample, len(near))):
            actions.append(Probe(pid, False))
        for pid in self._meas.walk_probes(self.coord, cfg.walk_per_sample, self._failed):
            actions.append(Probe(pid, False))
        if near:
            actions.append(AskNear(rng.choice(near[:WALK_FANOUT])))
        return actions

    def _random_second_hand(self, rng: random.Random) -> PeerInfo | None:
        if not self._nbr:
            return None
        links = rng.choice(list(self._nbr.values()))[0]
        pool = links.successors + links.predecessors + links.long + links.incoming
        for _ in range(3):
            p = rng.choice(pool) if pool else None
            if p is not None and p.peer_id != self.peer_id and p.peer_id not in self._failed:
                return p
        return None

    def _choose_proximity(self) -> None:
        taken = {p.peer_id for p in self._out if p not in self._prox}
        ranked = self._meas.rank(taken, self.config.near_samples)
        best = [info for _, info in ranked[: self.config.proximity_links]]
        if [p.peer_id for p in best] != [p.peer_id for p in self._prox]:
            self._prox = best
            self._relink()

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
