"""An iterative lookup as a state machine: step answers in, peers to query out.

The querying node drives the lookup: it asks a few peers at a time (``alpha``)
for their ``Step`` toward the key, merges what they name, and picks whom to
ask next by the same latency-versus-progress cost the hops use, but measured
from its own coordinate, since in an iterative lookup every hop's round trip
starts and ends at the querier.

Rules that keep it finite and correct:

* A peer is queried at most once; the query budget and the hop limit bound
  the work even against peers that lie.
* Greedy queries must be strictly closer to the key than the closest peer
  that has answered so far (strict progress on a finite ring).
* An owner chain ("the owner is the first live one of these") is followed in
  order, skipping peers that timed out. The lookup ends when the first
  non-dead entry of the chain has answered: that peer is alive and every
  peer before it in the chain is known to be dead. A chain from a peer
  closer to the key replaces one from farther away.

The driver sends ``request()`` to every peer from ``next_queries()``, reports
``on_answer`` or ``on_timeout`` for each, and stops when ``done``. Time is not
this module's business: the driver owns the per-query deadline.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable

from poolai.mesh.coords import Coord
from poolai.mesh.ring import ring_distance
from poolai.mesh.routing import BY_PROGRESS, HopCost, PeerInfo, Step

MAX_EXCLUDE = 64  # the most exclude entries a hop honours from one request


@dataclasses.dataclass(frozen=True, slots=True)
class LookupConfig:
    """Bounds of one lookup: parallel queries, total queries, hops, exclude-list length."""

    alpha: int = 3
    max_queries: int = 48
    hop_limit: int = 32
    max_exclude: int = 32

    def __post_init__(self) -> None:
        if self.alpha < 1 or self.max_queries < 1 or self.hop_limit < 1:
            raise ValueError("lookup bounds must be positive")
        if not 0 <= self.max_exclude <= MAX_EXCLUDE:
            raise ValueError(f"max_exclude must be in 0..{MAX_EXCLUDE}")


DEFAULT_LOOKUP = LookupConfig()


@dataclasses.dataclass(frozen=True, slots=True)
class StepRequest:
    """What a querier sends each hop: the key, peers known dead, and its own coordinate."""

    key: int
    exclude: tuple[bytes, ...]
    origin: Coord | None


class IterativeLookup:
    """Finds the live owner of ``key``, starting from the querier's own ``Step`` answer.

    ``cost`` ranks the candidates, and its ``origin`` (the querier's coordinate)
    goes with every request. ``seeds`` are peers to try even without progress
    (a joining node's bootstrap peers). After ``done``: ``owner`` is the live
    owner or ``None`` on failure, ``hops`` the length of the referral chain
    that led to it (0 when the querier owns the key).
    """

    def __init__(
        self,
        key: int,
        first: Step,
        *,
        cost: HopCost = BY_PROGRESS,
        config: LookupConfig = DEFAULT_LOOKUP,
        seeds: Iterable[PeerInfo] = (),
    ) -> None:
        self.key = key
        self.config = config
        self._hop_cost = cost
        self._me = first.responder.peer_id
        self._cands: dict[bytes, PeerInfo] = {}
        self._depth: dict[bytes, int] = {self._me: 0}
        self._cost: dict[bytes, float] = {}
        self._free: set[bytes] = set()  # seeds: tried even without progress
        self._sent: set[bytes] = {self._me}
        self._inflight: set[bytes] = set()
        self._answered: dict[bytes, Step] = {}
        self._dead: list[bytes] = []
        self._dead_set: set[bytes] = set()
        self._best = math.inf
        self._chain: tuple[PeerInfo, ...] = ()
        self._chain_from = math.inf
        self.owner: PeerInfo | None = None
        self.hops = 0
        self.done = False
        self.queries = 0
        for s in seeds:
            if s.peer_id != self._me:
                self._add(s, 1)
                self._free.add(s.peer_id)
        self._absorb(self._me, first)

    # -- driver interface ---------------------------------------------------------------

    def request(self) -> StepRequest:
        """The request to send to every peer queried next."""
        return StepRequest(self.key, tuple(self._dead[-self.config.max_exclude :]), self._hop_cost.origin)

    def next_queries(self) -> list[PeerInfo]:
        """Peers to query now (each exactly once); marks them in flight."""
        out: list[PeerInfo] = []
        while not self.done and len(self._inflight) < self.config.alpha:
            peer = self._pick()
            if peer is None:
                break
            self._sent.add(peer.peer_id)
            self._inflight.add(peer.peer_id)
            self.queries += 1
            out.append(peer)
        if not self.done and not self._inflight and not out:
            self.done = True  # nothing left to ask: the lookup failed
        return out

    def on_answer(self, peer_id: bytes, answer: Step) -> None:
        """A queried peer answered. Answers from peers never queried are ignored."""
        if self.done or peer_id not in self._inflight or answer.responder.peer_id != peer_id:
            self._inflight.discard(peer_id)
            return
        self._inflight.discard(peer_id)
        self._absorb(peer_id, answer)

    def on_timeout(self, peer_id: bytes) -> None:
        """A queried peer did not answer in time: treat it as dead for this lookup."""
        if peer_id not in self._inflight:
            return
        self._inflight.discard(peer_id)
        self._dead.append(peer_id)
        self._dead_set.add(peer_id)
        self._check_chain()

    @property
    def timeouts(self) -> int:
        """Peers that did not answer in time, taken for dead by this lookup. A live owner
        that is merely slow is one of them, and the lookup then names the next live
        peer: a wrong owner that only a lookup without timeouts would not give."""
        return len(self._dead)

    def met(self) -> list[PeerInfo]:
        """Every peer this lookup heard of (the driver may ``observe`` them)."""
        return list(self._cands.values())

    def answered(self) -> list[bytes]:
        """Peers that answered (alive), in no particular order."""
        return list(self._answered)

    # -- internals ----------------------------------------------------------------------

    def _add(self, peer: PeerInfo, depth: int) -> None:
        pid = peer.peer_id
        if pid == self._me:
            return
        old = self._depth.get(pid)
        if old is None or depth < old:
            self._depth[pid] = depth
        if pid not in self._cands or peer.coord is not None:
            self._cands[pid] = peer
            self._cost[pid] = self._hop_cost.of(peer, self.key)

    def _absorb(self, peer_id: bytes, answer: Step) -> None:
        self._answered[peer_id] = answer
        depth = self._depth.get(peer_id, 0)
        here = ring_distance(answer.responder.position, self.key)
        if answer.owners or answer.next_hops or peer_id != self._me:
            # A querier with an empty answer (a node still joining) sets no bar to beat.
            self._best = min(self._best, here)
        if self._claims(answer):
            self._finish(answer.responder, depth)
            return
        if answer.owners and here <= self._chain_from:
            self._chain, self._chain_from = answer.owners, here
        for p in answer.owners:
            self._add(p, depth + 1)
        for p in answer.next_hops:
            self._add(p, depth + 1)
        self._check_chain()

    def _claims(self, answer: Step) -> bool:
        """Whether the responder is the owner by its own chain: every entry before it is dead."""
        me = answer.responder.peer_id
        for p in answer.owners:
            if p.peer_id == me:
                return True
            if p.peer_id not in self._dead_set:
                return False
        return False

    def _check_chain(self) -> None:
        # A head that already answered speaks for itself: it owns the key by its own
        # chain, or its chain replaces ours, or it named no owner and we route on.
        for _ in range(len(self._answered) + 1):
            head = self._chain_head()
            if head is None or head.peer_id not in self._answered:
                return
            answer = self._answered[head.peer_id]
            if self._claims(answer):
                self._finish(answer.responder, self._depth[head.peer_id])
                return
            if answer.owners and answer.owners != self._chain:
                self._chain = answer.owners
                self._chain_from = ring_distance(head.position, self.key)
            else:
                self._chain, self._chain_from = (), math.inf
                return

    def _chain_head(self) -> PeerInfo | None:
        for p in self._chain:
            if p.peer_id not in self._dead_set:
                return p
        return None

    def _finish(self, owner: PeerInfo, depth: int) -> None:
        self.owner, self.hops, self.done = owner, depth, True

    def _pick(self) -> PeerInfo | None:
        if self.queries >= self.config.max_queries:
            return None
        if self._chain:
            head = self._chain_head()
            if head is not None:
                if head.peer_id in self._sent:
                    return None  # wait for the chain's head: anything else is wasted work
                return head
            self._chain, self._chain_from = (), math.inf  # every entry is dead: route on
        best: PeerInfo | None = None
        best_cost = math.inf
        for pid, peer in self._cands.items():
            if pid in self._sent or self._depth[pid] > self.config.hop_limit:
                continue
            if pid not in self._free and ring_distance(peer.position, self.key) >= self._best:
                continue
            cost = self._cost[pid]
            if cost < best_cost:
                best, best_cost = peer, cost
        return best
