"""The overlay table: ring lists, link kinds, failure detection and repair, and the simulator."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest

from poolai.mesh import links as mesh_links
from poolai.mesh.coords import Coord
from poolai.mesh.lookup import LookupConfig, StepRequest
from poolai.mesh.overlay import OverlayTable
from poolai.mesh.ring import RING_SIZE, clockwise, key_position
from poolai.mesh.routing import PeerInfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from simlib.latency import RttModel  # noqa: E402
from simlib.poolai_net import PoolNet  # noqa: E402


def ring_of(n: int, seed: int = 0) -> list[PeerInfo]:
    """n peers sorted by ring position."""
    return sorted((PeerInfo.of(b"peer-%d-%d" % (seed, i)) for i in range(n)),
                  key=lambda p: p.position)


def table_at(k: int, ring: list[PeerInfo],
             config: mesh_links.OverlayConfig = mesh_links.DEFAULT_CONFIG) -> OverlayTable:
    t = OverlayTable(ring[k].peer_id, config)
    for p in ring:
        t.observe(p, 0.0)
    return t


def test_config_rejects_more_than_eight_outgoing_links():
    with pytest.raises(ValueError):
        mesh_links.OverlayConfig(long_links=5, proximity_links=1)
    assert mesh_links.OverlayConfig(long_links=4, proximity_links=1).max_out_links == 8


def test_lists_hold_the_nearest_peers_on_each_side_across_zero():
    ring = ring_of(50)
    t = table_at(0, ring)  # the lowest position: its predecessors wrap past zero
    links = t.links()
    assert [p.peer_id for p in links.successors] == [p.peer_id for p in ring[1:9]]
    assert [p.peer_id for p in links.predecessors] == [p.peer_id for p in ring[:-9:-1]]
    assert 25 < t.size_estimate() < 100
    tiny = table_at(0, ring[:4])
    assert tiny.size_estimate() == 4  # lists wrap round: every node is known


def test_size_estimate_tracks_the_network_size():
    ring = ring_of(2000, seed=1)
    estimates = sorted(table_at(k, ring).size_estimate() for k in range(0, 2000, 40))
    assert 1000 < estimates[len(estimates) // 2] < 4000


def test_long_links_are_drawn_looked_up_and_kept_within_the_link_budget():
    ring = ring_of(300)
    t = table_at(10, ring)
    rng = random.Random(4)
    actions = t.maintenance(0.0, rng)
    finds = [a for a in actions if isinstance(a, mesh_links.FindLong)]
    assert len(finds) == 4
    assert {a.peer for a in actions if isinstance(a, mesh_links.Probe)} == {p.peer_id for p in t.links().out}
    assert any(isinstance(a, mesh_links.AskNeighbours) for a in actions)
    by_pos = [p.position for p in ring]
    for f in finds:
        owner = ring[next((i for i, p in enumerate(by_pos) if p >= f.target), 0)]
        t.long_link_found(f.slot, f.target, owner, 1.0)
    t.long_link_found(0, 12345, ring[3], 1.0)  # a stale answer for another target is ignored
    links = t.links()
    assert 1 <= len(links.long) <= 4
    assert len(links.out) <= 8 and len({p.peer_id for p in links.out}) == len(links.out)
    assert not [a for a in t.maintenance(2.0, rng) if isinstance(a, mesh_links.FindLong)]


def test_long_links_are_redrawn_when_the_size_estimate_moves():
    ring = ring_of(400)
    t = table_at(0, ring[::20])  # sees only every 20th node: thinks the network is small
    rng = random.Random(1)
    for f in [a for a in t.maintenance(0.0, rng) if isinstance(a, mesh_links.FindLong)]:
        t.long_link_found(f.slot, f.target, ring[40], 0.0)
    for p in ring:
        t.observe(p, 1.0)  # the ring fills in: the estimate grows twentyfold
    redraw = [a for a in t.maintenance(100.0, rng) if isinstance(a, mesh_links.FindLong)]
    assert len(redraw) == 1  # one link at a time, not all at once


def test_a_silent_peer_is_removed_after_k_misses_and_every_link_kind_refilled():
    ring = ring_of(100)
    t = table_at(50, ring)
    succ = t.links().successors[0]
    # The second successor told us its lists, so the gap can be closed at once.
    second = OverlayTable(ring[52].peer_id)
    for p in ring:
        second.observe(p, 0.0)
    t.merge_neighbours(second.peer_id, second.links(), 0.0)
    t.long_link_found(0, 0, succ, 0.0)  # ignored: no lookup pending for that target
    rng = random.Random(2)
    finds = [a for a in t.maintenance(0.0, rng) if isinstance(a, mesh_links.FindLong)]
    t.long_link_found(finds[0].slot, finds[0].target, ring[80], 0.0)
    long_peer = ring[80]
    assert not t.probe_failed(succ.peer_id, 1.0)
    assert not t.probe_failed(succ.peer_id, 2.0)
    assert t.probe_failed(succ.peer_id, 3.0)
    links = t.links()
    assert succ.peer_id not in {p.peer_id for p in links.successors}
    assert len(links.successors) == 8 and links.successors[0].peer_id == ring[52].peer_id
    t.mark_failed(long_peer.peer_id, 4.0)
    actions = t.maintenance(5.0, rng)
    assert mesh_links.Drop(succ.peer_id) in actions and mesh_links.Drop(long_peer.peer_id) in actions
    assert any(isinstance(a, mesh_links.FindLong) and a.slot == finds[0].slot for a in actions)
    # Second-hand news of the dead peer is ignored; the peer itself calling is not.
    t.observe(succ, 6.0)
    assert succ.peer_id not in {p.peer_id for p in t.links().successors}
    t.observe(succ, 7.0, direct=True)
    assert t.links().successors[0].peer_id == succ.peer_id


def test_stabilisation_copies_the_successors_list():
    ring = ring_of(60)
    t = table_at(0, ring)
    dead = ring[3]
    s1 = OverlayTable(ring[1].peer_id)
    for p in ring:
        if p is not dead:
            s1.observe(p, 0.0)
    t.merge_neighbours(s1.peer_id, s1.links(), 1.0)
    assert dead.peer_id not in {p.peer_id for p in t.links().successors}
    t.merge_neighbours(b"someone-else", s1.links(), 1.0)  # a link set must come from its owner
    assert ring[1].peer_id in {p.peer_id for p in t.links().successors}


def test_incoming_links_are_bounded_and_expire():
    ring = ring_of(40)
    t = OverlayTable(ring[0].peer_id, mesh_links.OverlayConfig(max_incoming=3))
    assert all(t.add_incoming(p, 0.0) for p in ring[1:4])
    assert not t.add_incoming(ring[5], 0.0)
    assert len(t.links().incoming) == 3
    t.maintenance(10_000.0, random.Random(0))
    assert t.links().incoming == ()


def test_the_proximity_link_goes_to_the_lowest_measured_rtt():
    ring = ring_of(80)
    t = table_at(0, ring)
    rng = random.Random(3)
    coord = Coord((0.0,) * 4, 1.0, 0.5)
    for i, p in enumerate(ring[20:30]):
        t.record_rtt(p.peer_id, 100.0 - i, coord, 0.0, rng)
    t.maintenance(0.0, rng)
    assert [p.peer_id for p in t.links().proximity] == [ring[29].peer_id]
    t.record_rtt(ring[40].peer_id, 3.0, coord, 1.0, rng)
    t.maintenance(100.0, rng)
    assert [p.peer_id for p in t.links().proximity] == [ring[40].peer_id]
    assert t.measured_rtt(ring[40].peer_id) == 3.0


def test_link_sets_from_peers_are_clipped_to_the_wire_bounds():
    ring = ring_of(200)
    fat = mesh_links.LinkSet(node=ring[1], successors=tuple(ring[2:100]), incoming=tuple(ring[2:200]))
    clipped = fat.clipped()
    assert len(clipped.successors) == 16 and len(clipped.incoming) == 64
    t = table_at(0, ring[:50])
    t.merge_neighbours(ring[1].peer_id, fat, 0.0)
    assert len(t.links().successors) == 8


def small_net(n: int, seed: int) -> PoolNet:
    rng = random.Random(seed)
    matrix = [[0.0 if i == j else 20.0 + 7.0 * abs(i - j) for j in range(12)] for i in range(12)]
    return PoolNet(n, RttModel(matrix, n, rng), rng, mesh_links.OverlayConfig(), LookupConfig())


def exact_lists(net: PoolNet) -> int:
    order = net.live_idx
    m = len(order)
    wrong = 0
    for k, i in enumerate(order):
        want = [net.ids[order[(k + d) % m]] for d in range(1, min(8, m - 1) + 1)]
        wrong += [p.peer_id for p in net.tables[i].links().successors] != want
    return wrong


def test_nodes_join_one_by_one_and_the_ring_converges():
    net = small_net(60, seed=5)
    net.alive = [False] * 60
    net.alive[0] = True
    net._sort_live()
    rng = random.Random(5)
    for i in range(1, 60):
        assert net.join(i, rng.randrange(i))
        if i % 5 == 0:
            net.run_rounds(1, 30.0)
    net.route_long = True
    net.run_rounds(12, 30.0)
    assert exact_lists(net) == 0
    for _ in range(100):
        key = key_position(rng.randbytes(8))
        assert net.lookup(rng.randrange(60), key).owner == net.owner_of(key)


def test_the_ring_repairs_itself_after_a_fifth_of_the_nodes_fail():
    net = small_net(120, seed=6)
    net.seed_ring()
    net.run_rounds(6, 30.0)
    rng = random.Random(6)
    victims = rng.sample(range(120), 24)
    net.fail(victims)
    net.route_long = True
    net.run_rounds(12, 30.0)  # detection takes 3 missed probes (3 min), repair a few more
    dead = {net.ids[i] for i in victims}
    for i in net.live_idx:
        links = net.tables[i].links()
        assert not dead & {p.peer_id for p in links.out}
    for _ in range(100):
        key = key_position(rng.randbytes(8))
        q = rng.choice(net.live_idx)
        assert net.lookup(q, key).owner == net.owner_of(key)
    # Deep list entries are cleaned one stabilisation hop at a time, away from the
    # nodes that probed the dead peer.
    net.run_rounds(18, 30.0)
    assert exact_lists(net) == 0
    for _ in range(100):
        key = key_position(rng.randbytes(8))
        q = rng.choice(net.live_idx)
        assert net.lookup(q, key).owner == net.owner_of(key)


def test_simulator_smoke_run(tmp_path):
    """A 200-node run of the whole simulator: every lookup succeeds, hops are logarithmic."""
    rng = random.Random(8)
    hosts = [(rng.uniform(0, 150), rng.uniform(0, 150)) for _ in range(40)]
    matrix = tmp_path / "rtt.csv"
    matrix.write_text("\n".join(
        ",".join(f"{math.dist(a, b) + (5.0 if a != b else 0.0):.1f}" for b in hosts) for a in hosts
    ))
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "sim_overlay.py"), "--rtt", str(matrix),
         "--n", "200", "--lookups", "200", "--rounds", "8", "--seed", "3"],
        capture_output=True, text=True, check=True, timeout=120,
    )
    report = json.loads(out.stdout)
    pool = report["poolai"]
    assert pool["success"] == 1.0
    assert pool["failed_after_repair"]["success"] == 1.0
    assert pool["failed_before_repair"]["success"] >= 0.95
    assert pool["hops"]["mean"] <= 0.5 * math.log2(200)
    assert pool["hops"]["p99"] <= math.log2(200)
    assert pool["links_out"]["max"] <= 8
    assert report["kademlia"]["success"] == 1.0 and report["chord"]["success"] == 1.0


def test_positions_spread_evenly_enough_for_the_estimate():
    ring = ring_of(1000, seed=9)
    gaps = [clockwise(a.position, b.position) for a, b in zip(ring, ring[1:], strict=False)]
    assert max(gaps) < 20 * RING_SIZE / 1000


def test_the_proximity_walk_asks_a_near_peer_and_probes_what_it_names():
    ring = ring_of(60)
    rng = random.Random(5)
    dims = mesh_links.OverlayConfig().vivaldi.dimensions

    def at(x: float) -> Coord:
        return Coord((x,) + (0.0,) * (dims - 1), 1.0, 0.2)

    t = table_at(0, ring)
    t.coord = at(0.0)
    for i, p in enumerate(ring[10:14]):
        t.record_rtt(p.peer_id, 20.0 + i, at(20.0 + i), 0.0, rng)
    first = t.maintenance(0.0, rng)
    asks = [a.peer for a in first if isinstance(a, mesh_links.AskNear)]
    assert len(asks) == 1 and asks[0] in {ring[10].peer_id, ring[11].peer_id}
    # The asked peer knows peers near us; it ranks them by predicted RTT to our coordinate.
    u = table_at(10, ring)
    u.coord = at(20.0)
    for x, p in ((3.0, ring[30]), (90.0, ring[31]), (1.0, ring[32])):
        u.record_rtt(p.peer_id, abs(20.0 - x), at(x), 0.0, rng)
    u.maintenance(0.0, rng)
    answer = u.near(t.coord)
    assert [p.peer_id for p in answer[:2]] == [ring[32].peer_id, ring[30].peer_id]
    t.merge_near(u.peer_id, answer, 1.0)
    probes = {a.peer for a in t.maintenance(30.0, rng) if isinstance(a, mesh_links.Probe)}
    assert {ring[32].peer_id, ring[30].peer_id} <= probes
    assert ring[31].peer_id not in probes


def test_a_request_with_a_bad_coordinate_is_answered_by_progress_alone():
    ring = ring_of(100)
    t = table_at(0, ring)
    bad = Coord((math.nan,) * mesh_links.OverlayConfig().vivaldi.dimensions, 1.0, 0.5)
    key = ring[50].position
    request = StepRequest(key, tuple(b"x%d" % i for i in range(500)), bad)
    assert t.answer(request) == t.step(key, request.exclude[:64], None)
