"""Chord-style baseline: fingers at successor(n + 2^i), a successor list, iterative lookups.

Same positions and the same owner (the live successor) as PoolAI. Each hop
answers with its closest preceding fingers (best first) or, when the key
falls between it and its successor, its successor list as an owner chain.
The querier asks one hop at a time (Chord has no parallel lookups), skips
peers that time out, and ends when the owner answers. Tables are built
lazily from the live ring; "after repair" rebuilds them (idealised
stabilisation and fix_fingers).
"""

from __future__ import annotations

import bisect

from simlib.baseline import Baseline

BITS = 64
MASK = (1 << BITS) - 1


class Chord(Baseline):
    def __init__(self, positions: list[int], successors: int = 8) -> None:
        self.r = successors
        super().__init__(positions)

    def rebuild(self) -> None:
        super().rebuild()
        self._rank = {i: k for k, i in enumerate(self.sorted_idx)}
        self._tables: dict[int, tuple[list[int], list[int], int]] = {}

    def _succ_at(self, point: int) -> int:
        k = bisect.bisect_left(self.sorted_pos, point & MASK)
        return self.sorted_idx[k % len(self.sorted_idx)]

    def owner_of(self, key: int) -> int:
        k = bisect.bisect_left(self.truth_pos, key)
        return self.truth_idx[k % len(self.truth_idx)]

    def table(self, i: int) -> tuple[list[int], list[int], int]:
        """(fingers, successor list, predecessor) of node i."""
        t = self._tables.get(i)
        if t is None:
            x = self.pos[i]
            fingers = list(dict.fromkeys(self._succ_at(x + (1 << b)) for b in range(BITS)))
            fingers = [f for f in fingers if f != i]
            k = self._rank.get(i, bisect.bisect_left(self.sorted_pos, x))
            m = len(self.sorted_idx)
            succ = [self.sorted_idx[(k + d) % m] for d in range(1, min(self.r, m - 1) + 1)]
            t = (fingers, succ, self.sorted_idx[(k - 1) % m])
            self._tables[i] = t
        return t

    def answer(self, j: int, key: int, exclude: frozenset[int]) -> tuple[str, list[int]]:
        fingers, succ, pred = self.table(j)
        x = self.pos[j]
        live_succ = [s for s in succ if s not in exclude]
        to_key = (key - x) & MASK
        if 0 < (key - self.pos[pred]) & MASK <= (x - self.pos[pred]) & MASK or pred == j:
            return ("owners", [j])
        if live_succ and to_key and to_key <= (self.pos[live_succ[0]] - x) & MASK:
            return ("owners", live_succ)
        preceding = [
            c for c in {*fingers, *succ}
            if c not in exclude and 0 < (self.pos[c] - x) & MASK < to_key
        ]
        preceding.sort(key=lambda c: (key - self.pos[c]) & MASK)
        return ("next", preceding[:3])

    def lookup(self, i: int, key: int) -> ChordLookup:
        return ChordLookup(self, i, key)


class ChordLookup:
    def __init__(self, net: Chord, querier: int, key: int) -> None:
        self.net = net
        self.key = key
        self.done = False
        self.owner: int | None = None
        self.hops = 0
        self._dead: set[int] = set()
        self._depth = {querier: 0}
        self._chain: list[int] = []
        self._options: list[int] = []
        self._sent: set[int] = {querier}
        self._inflight: int | None = None
        self._absorb(querier, net.answer(querier, key, frozenset()))

    def request(self) -> frozenset[int]:
        return frozenset(self._dead)

    def _absorb(self, j: int, answer: tuple[str, list[int]]) -> None:
        kind, nodes = answer
        if kind == "owners" and nodes and nodes[0] == j:
            self.done, self.owner, self.hops = True, j, self._depth[j]
            return
        for c in nodes:
            self._depth.setdefault(c, self._depth[j] + 1)
        if kind == "owners":
            self._chain = nodes
        else:
            self._options = nodes + [o for o in self._options if o not in nodes]

    def next_queries(self) -> list[int]:
        if self.done or self._inflight is not None:
            return []
        for c in (self._chain or self._options):
            if c not in self._sent and c not in self._dead:
                self._sent.add(c)
                self._inflight = c
                return [c]
        self.done = True
        return []

    def on_answer(self, j: int, answer: tuple[str, list[int]]) -> None:
        self._inflight = None
        if j in self._chain:
            self.done, self.owner, self.hops = True, j, self._depth[j]
            return
        self._chain = []
        self._absorb(j, answer)

    def on_timeout(self, j: int) -> None:
        self._inflight = None
        self._dead.add(j)
