"""Kademlia-style baseline: XOR metric, k-buckets (k=20), iterative lookups with alpha=3.

Node ids are the same 64-bit ring positions PoolAI uses, and a key's owner
is the live node XOR-closest to the key. A converged routing table holds,
for each shared-prefix length, up to k nodes drawn at random from that
subtree (Kademlia keeps the longest-lived contacts, which bear no relation
to latency). Tables are built lazily per node and cached. Before repair a
table still names failed nodes; "after repair" rebuilds every table from
the live nodes only (an idealised refresh).

The lookup ends when the owner itself answers (FIND_VALUE semantics with
the value stored at the owner alone), or fails when the k closest nodes it
knows have all been asked.
"""

from __future__ import annotations

import bisect
import random

from simlib.baseline import Baseline

BITS = 64


class Kademlia(Baseline):
    def __init__(self, positions: list[int], k: int = 20, alpha: int = 3, seed: int = 0) -> None:
        self.k = k
        self.alpha = alpha
        self.seed = seed
        super().__init__(positions)

    def rebuild(self) -> None:
        super().rebuild()
        self._tables: dict[int, list[int]] = {}

    def table(self, i: int) -> list[int]:
        t = self._tables.get(i)
        if t is None:
            t = self._build(i)
            self._tables[i] = t
        return t

    def _build(self, i: int) -> list[int]:
        rng = random.Random(self.seed * 1_000_003 + i)
        x = self.pos[i]
        out: list[int] = []
        for shared in range(BITS):
            bit = BITS - 1 - shared
            base = (x >> (bit + 1)) << (bit + 1)
            lo = base + ((1 - ((x >> bit) & 1)) << bit)
            a = bisect.bisect_left(self.sorted_pos, lo)
            b = bisect.bisect_left(self.sorted_pos, lo + (1 << bit))
            members = self.sorted_idx[a:b]
            out += members if len(members) <= self.k else rng.sample(members, self.k)
            # Stop once no other node shares the next prefix bit with us.
            same_lo = base + (((x >> bit) & 1) << bit)
            c = bisect.bisect_left(self.sorted_pos, same_lo)
            d = bisect.bisect_left(self.sorted_pos, same_lo + (1 << bit))
            if d - c <= 1:
                break
        return out

    def owner_of(self, key: int) -> int:
        """The live node XOR-closest to ``key`` (descend the binary trie of live ids)."""
        lo, hi = 0, len(self.truth_pos)
        prefix = 0
        for bit in range(BITS - 1, -1, -1):
            split = bisect.bisect_left(self.truth_pos, prefix | (1 << bit), lo, hi)
            want_one = (key >> bit) & 1
            if want_one:
                if split < hi:
                    lo, prefix = split, prefix | (1 << bit)
                else:
                    hi = split
            else:
                if lo < split:
                    hi = split
                else:
                    lo, prefix = split, prefix | (1 << bit)
        return self.truth_idx[lo]

    def answer(self, j: int, key: int) -> list[int]:
        return sorted(self.table(j), key=lambda c: self.pos[c] ^ key)[: self.k]

    def lookup(self, i: int, key: int, owner: int) -> KadLookup:
        return KadLookup(self, i, key, owner)


class KadLookup:
    """Kademlia's iterative node lookup, stopping when ``owner`` answers."""

    def __init__(self, net: Kademlia, querier: int, key: int, owner: int) -> None:
        self.net = net
        self.key = key
        self.owner_idx = owner
        self.done = False
        self.owner: int | None = None
        self.hops = 0
        self._depth: dict[int, int] = {}
        self._short: list[tuple[int, int]] = []  # (xor distance, node), sorted
        self._sent: set[int] = {querier}
        self._inflight: set[int] = set()
        self._dead: set[int] = set()
        if querier == owner:
            self.done, self.owner = True, querier
            return
        self._add(net.answer(querier, key), 1)

    def request(self) -> int:
        return self.key

    def _add(self, nodes: list[int], depth: int) -> None:
        for c in nodes:
            if c not in self._depth:
                self._depth[c] = depth
                bisect.insort(self._short, (self.net.pos[c] ^ self.key, c))

    def next_queries(self) -> list[int]:
        out = []
        while not self.done and len(self._inflight) < self.net.alpha:
            pick = None
            live_seen = 0
            for _, c in self._short:
                if c in self._dead:
                    continue
                live_seen += 1
                if live_seen > self.net.k:
                    break
                if c not in self._sent:
                    pick = c
                    break
            if pick is None:
                break
            self._sent.add(pick)
            self._inflight.add(pick)
            out.append(pick)
        if not out and not self._inflight:
            self.done = True
        return out

    def on_answer(self, j: int, contacts: list[int]) -> None:
        self._inflight.discard(j)
        if j == self.owner_idx:
            self.done, self.owner, self.hops = True, j, self._depth[j]
            return
        self._add(contacts, self._depth[j] + 1)

    def on_timeout(self, j: int) -> None:
        self._inflight.discard(j)
        self._dead.add(j)
