"""PoolAI's overlay in the simulator: one ``OverlayTable`` per virtual node, driven by rounds.

Every routing decision, link choice and coordinate comes from the core; the
harness only carries its actions out (``Probe``, ``AskNeighbours``,
``AskNear``, ``FindLong``) with the latency model's RTTs, instantly, and
reports the results back through the table's event methods. Two
shortcuts, both stated in docs/overlay-sim.md: the ring is seeded by showing
each node its true successor and predecessor lists (the state a completed
join reaches), and while building, a long-link lookup is answered by the
true owner of its target (the answer a converged lookup returns). During
repair, long-link lookups really route through the damaged overlay.
"""

from __future__ import annotations

import bisect
import random

from poolai.mesh.links import AskNear, AskNeighbours, FindLong, OverlayConfig, Probe
from poolai.mesh.lookup import LookupConfig
from poolai.mesh.overlay import OverlayTable
from poolai.mesh.routing import PeerInfo
from simlib.engine import Outcome, run_lookup
from simlib.latency import RttModel


class PoolNet:
    def __init__(
        self,
        n: int,
        model: RttModel,
        rng: random.Random,
        config: OverlayConfig,
        lookup_config: LookupConfig,
    ) -> None:
        self.model = model
        self.rng = rng
        self.config = config
        self.lookup_config = lookup_config
        self.ids = [b"poolai-sim-%d" % i for i in range(n)]
        self.tables = [OverlayTable(pid, config) for pid in self.ids]
        self.index = {pid: i for i, pid in enumerate(self.ids)}
        self.alive = [True] * n
        self.now = 0.0
        self.rpcs = 0  # maintenance RPCs (probes, list requests, lookup queries for long links)
        self.route_long = False
        self._sort_live()

    # -- ground truth -------------------------------------------------------------------

    def _sort_live(self) -> None:
        live = sorted((t.position, i) for i, t in enumerate(self.tables) if self.alive[i])
        self.live_pos = [p for p, _ in live]
        self.live_idx = [i for _, i in live]

    def owner_of(self, key: int) -> int:
        k = bisect.bisect_left(self.live_pos, key)
        return self.live_idx[k % len(self.live_idx)]

    def fail(self, victims: list[int]) -> None:
        for i in victims:
            self.alive[i] = False
        self._sort_live()

    # -- building -----------------------------------------------------------------------

    def seed_ring(self) -> None:
        """Show every node its true successor and predecessor lists."""
        order = self.live_idx
        m = len(order)
        width = max(self.config.successor_list, self.config.predecessor_list)
        for k, i in enumerate(order):
            t = self.tables[i]
            for d in range(1, min(width, m - 1) + 1):
                for j in (order[(k + d) % m], order[(k - d) % m]):
                    tj = self.tables[j]
                    t.observe(PeerInfo(tj.peer_id, tj.position, None), self.now)

    def join(self, i: int, via: int) -> bool:
        """Node ``i`` joins through live node ``via`` the way a real node does.

        It looks up its own position starting from ``via``, keeps every peer
        the lookup met, and takes its successor's lists; the successor learns
        of it from the request. Stabilisation in later rounds does the rest.
        """
        t = self.tables[i]
        self.alive[i] = True
        lk = t.lookup(t.position, seeds=[self.tables[via].info], config=self.lookup_config)
        out = run_lookup(
            lk,
            i,
            lambda p: self.index[p.peer_id if isinstance(p, PeerInfo) else p],
            lambda j, req: self.tables[j].answer(req),
            self.model.rtt,
            lambda j: self.alive[j],
        )
        self.rpcs += out.rpcs
        for p in lk.met():
            t.observe(p, self.now)
        if out.owner is None or out.owner == i:
            return False
        owner = self.tables[out.owner]
        owner.observe(t.info, self.now, direct=True)
        t.merge_neighbours(owner.peer_id, owner.links(), self.now)
        self._sort_live()
        return True

    def run_rounds(self, rounds: int, dt: float) -> None:
        for _ in range(rounds):
            self.now += dt
            for i in range(len(self.tables)):
                if self.alive[i]:
                    for action in self.tables[i].maintenance(self.now, self.rng):
                        self._carry_out(i, action)

    def _carry_out(self, i: int, action: object) -> None:
        t = self.tables[i]
        now = self.now
        if isinstance(action, (Probe, AskNeighbours, AskNear)):
            # One request to one peer: a dead peer's silence fails it, whatever was asked.
            self.rpcs += 1
            j = self.index[action.peer]
            tj = self.tables[j]
            if not self.alive[j]:
                t.probe_failed(action.peer, now)
            elif isinstance(action, Probe):
                t.record_rtt(action.peer, self.model.rtt(i, j), tj.coord, now, self.rng)
                if action.link:
                    tj.add_incoming(t.info, now)
            elif isinstance(action, AskNeighbours):
                tj.observe(t.info, now, direct=True)
                t.merge_neighbours(action.peer, tj.links(), now)
            else:
                t.merge_near(action.peer, tj.near(t.coord), now)
        elif isinstance(action, FindLong):
            if self.route_long:
                out = self.lookup(i, action.target, record=False)
                self.rpcs += out.rpcs
                owner = out.owner
            else:
                owner = self.owner_of(action.target)
            if owner is not None:
                t.long_link_found(action.slot, action.target, self.tables[owner].info, now)

    # -- lookups ------------------------------------------------------------------------

    def lookup(self, i: int, key: int, record: bool = True) -> Outcome:
        t = self.tables[i]
        lk = t.lookup(key, config=self.lookup_config)
        tables = self.tables

        def on_rtt(j: int, rtt: float, answer: object) -> None:
            if record:
                t.record_rtt(self.ids[j], rtt, tables[j].coord, self.now, self.rng)

        return run_lookup(
            lk,
            i,
            lambda p: self.index[p.peer_id if isinstance(p, PeerInfo) else p],
            lambda j, req: tables[j].answer(req),
            self.model.rtt,
            lambda j: self.alive[j],
            on_rtt,
        )
