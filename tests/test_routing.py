"""Greedy routing: owner chains, strict progress, latency ranking, and iterative lookups."""

from __future__ import annotations

import bisect
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from poolai.mesh.coords import Coord
from poolai.mesh.lookup import IterativeLookup, LookupConfig
from poolai.mesh.ring import RING_MASK, RING_SIZE, harmonic_target, in_arc, ring_distance
from poolai.mesh.routing import HopCost, LeafView, PeerInfo, Step, owner_chain, rank_next_hops, step


def peer(pos: int, coord: Coord | None = None) -> PeerInfo:
    return PeerInfo(b"p%d" % pos, pos, coord)


class StaticRing:
    """Nodes with exact successor/predecessor lists and a few harmonic long links each."""

    def __init__(self, n: int, seed: int, width: int = 4, long_links: int = 3) -> None:
        rng = random.Random(seed)
        self.pos = sorted({rng.getrandbits(64) for _ in range(n)})
        n = len(self.pos)
        self.peers = [peer(p) for p in self.pos]
        self.by_id = {p.peer_id: i for i, p in enumerate(self.peers)}
        w = min(width, n - 1)
        self.views = [
            LeafView(
                self.peers[i],
                tuple(self.peers[(i + d) % n] for d in range(1, w + 1)),
                tuple(self.peers[(i - d) % n] for d in range(1, w + 1)),
            )
            for i in range(n)
        ]
        self.known = [
            [self.peers[self.owner(harmonic_target(self.pos[i], n, rng))] for _ in range(long_links)]
            for i in range(n)
        ]

    def owner(self, key: int) -> int:
        k = bisect.bisect_left(self.pos, key)
        return k % len(self.pos)

    def answer(self, i: int, key: int, exclude=frozenset(), origin=None) -> Step:
        return step(self.views[i], key, self.known[i], exclude=frozenset(exclude),
                    cost=HopCost(origin, size_estimate=len(self.pos)))


def drive(lookup: IterativeLookup, answer, dead=frozenset()) -> IterativeLookup:
    """Answer every query at once (a network with zero latency)."""
    for _ in range(10_000):
        queries = lookup.next_queries()
        if lookup.done:
            return lookup
        for p in queries:
            if p.peer_id in dead:
                lookup.on_timeout(p.peer_id)
            else:
                lookup.on_answer(p.peer_id, answer(p.peer_id, lookup.request()))
    raise AssertionError("lookup did not terminate")


def test_owner_chain_names_the_successor_of_the_key():
    me, s1, s2, p1 = peer(100), peer(200), peer(300), peer(50)
    view = LeafView(me, (s1, s2), (p1,))
    assert owner_chain(view, 100, frozenset())[0] == me  # a node owns its own position
    assert owner_chain(view, 60, frozenset())[0] == me
    assert owner_chain(view, 150, frozenset()) == (s1, s2)
    assert owner_chain(view, 250, frozenset()) == (s2,)
    assert owner_chain(view, 40, frozenset()) == ()  # beyond what the node knows
    assert owner_chain(view, 150, frozenset({s1.peer_id})) == (s2,)  # dead peers are skipped
    assert owner_chain(view, 60, frozenset({p1.peer_id})) == ()  # cannot vouch without a pred
    lone = LeafView(me, (), ())
    assert owner_chain(lone, 12345, frozenset()) == (me,)


def test_owner_chain_across_zero():
    me, s1, p1 = peer(RING_MASK - 10), peer(5), peer(RING_MASK - 100)
    view = LeafView(me, (s1,), (p1,))
    assert owner_chain(view, 2, frozenset())[0] == s1
    assert owner_chain(view, RING_MASK - 50, frozenset())[0] == me


def test_next_hops_make_strict_progress_and_keep_the_closest():
    me = peer(0)
    cands = [peer(p) for p in (10, 1000, 5000, RING_MASK - 3, 9000)]
    hops = rank_next_hops(me, 5000, cands, cost=HopCost(size_estimate=10), limit=2)
    assert all(ring_distance(h.position, 5000) < 5000 for h in hops)
    assert peer(5000) in hops  # the most progress is always offered
    assert rank_next_hops(peer(5000), 5000, cands) == ()  # nothing beats being at the key


def test_latency_breaks_near_ties_in_progress():
    origin = Coord((0.0, 0.0), 1.0, 0.1)
    key = RING_SIZE // 2
    far_fast = peer(key - RING_SIZE // 1000, Coord((5.0, 0.0), 1.0, 0.1))
    near_slow = peer(key - RING_SIZE // 1100, Coord((300.0, 0.0), 1.0, 0.1))
    by_latency = HopCost(origin, size_estimate=10_000, ms_per_bit=25.0)
    assert rank_next_hops(peer(0), key, [near_slow, far_fast], cost=by_latency)[0] == far_fast
    by_progress = HopCost(size_estimate=10_000)
    assert rank_next_hops(peer(0), key, [near_slow, far_fast], cost=by_progress)[0] == near_slow


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 80), seed=st.integers(0, 10_000), keys=st.lists(
    st.integers(0, RING_MASK), min_size=1, max_size=5))
def test_lookups_always_progress_terminate_and_find_the_owner(n, seed, keys):
    ring = StaticRing(n, seed)
    rng = random.Random(seed)
    for key in keys:
        q = rng.randrange(n)
        steps: list[Step] = []

        def answer(pid, req, key=key, steps=steps):
            s = ring.answer(ring.by_id[pid], req.key, req.exclude)
            steps.append(s)
            return s

        lk = drive(IterativeLookup(key, ring.answer(q, key)), answer)
        assert lk.owner == ring.peers[ring.owner(key)]
        assert lk.queries <= LookupConfig().max_queries
        for s in steps:
            here = ring_distance(s.responder.position, key)
            assert all(ring_distance(h.position, key) < here for h in s.next_hops)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_lookups_route_around_dead_peers(seed):
    ring = StaticRing(120, seed, width=8)
    rng = random.Random(seed)
    dead_idx = set(rng.sample(range(120), 24))
    dead = frozenset(ring.peers[i].peer_id for i in dead_idx)
    live = [i for i in range(120) if i not in dead_idx]
    for _ in range(5):
        key = rng.randrange(RING_SIZE)
        q = rng.choice(live)
        want = ring.owner(key)
        while want in dead_idx:
            want = (want + 1) % 120
        lk = drive(IterativeLookup(key, ring.answer(q, key)),
                   lambda pid, req: ring.answer(ring.by_id[pid], req.key, req.exclude), dead)
        assert lk.owner == ring.peers[want]


def test_a_slow_owner_taken_for_dead_is_counted_as_a_timeout():
    """What a loaded machine does to a lookup: the owner answers too late, the lookup names
    the next peer, and says a peer timed out; with every peer answering it says none did."""
    ring = StaticRing(32, 3, width=4)
    key = ring.pos[20] - 1
    clean = drive(IterativeLookup(key, ring.answer(0, key)),
                  lambda pid, req: ring.answer(ring.by_id[pid], req.key, req.exclude))
    assert (clean.owner, clean.timeouts) == (ring.peers[20], 0)
    slow = frozenset({ring.peers[20].peer_id})
    late = drive(IterativeLookup(key, ring.answer(0, key)),
                 lambda pid, req: ring.answer(ring.by_id[pid], req.key, req.exclude), slow)
    assert (late.owner, late.timeouts) == (ring.peers[21], 1)


def test_a_lying_peer_cannot_make_a_lookup_loop_or_go_backwards():
    ring = StaticRing(64, 5)
    key = ring.pos[40] - 1
    liar = ring.peers[10]

    def answer(pid, req):
        if pid == liar.peer_id:  # names peers far from the key, and itself again
            return Step(liar, next_hops=(ring.peers[50], ring.peers[0], liar))
        return ring.answer(ring.by_id[pid], req.key, req.exclude)

    lk = drive(IterativeLookup(key, Step(ring.peers[0]), seeds=[liar]), answer)
    assert lk.owner == ring.peers[40]
    assert lk.queries < 20


def test_a_joining_node_routes_from_its_seed():
    ring = StaticRing(30, 9)
    newcomer = peer(ring.pos[12] + 1)
    lk = IterativeLookup(newcomer.position, Step(newcomer), seeds=[ring.peers[3]])
    drive(lk, lambda pid, req: ring.answer(ring.by_id[pid], req.key, req.exclude))
    assert lk.owner == ring.peers[13]


def test_the_query_budget_bounds_a_lookup():
    ring = StaticRing(200, 2, width=1, long_links=0)  # a bare ring: greedy crawls
    key = ring.pos[100]
    lk = drive(IterativeLookup(key, ring.answer(0, key), config=LookupConfig(max_queries=5)),
               lambda pid, req: ring.answer(ring.by_id[pid], req.key, req.exclude))
    assert lk.owner is None and lk.queries == 5


def test_owner_chain_without_predecessors_stays_inside_its_arc():
    me = peer(100)
    view = LeafView(me, (peer(200),), ())
    assert owner_chain(view, 150, frozenset())[0].position == 200
    assert owner_chain(view, 99, frozenset()) == ()
    assert in_arc(150, 100, 200)
