"""Vivaldi coordinates: prediction, one update, bad input, and convergence on a known space."""

from __future__ import annotations

import math
import random
import statistics

from poolai.mesh.coords import (
    Coord,
    VivaldiConfig,
    origin,
    predicted_rtt,
    relative_error,
    update,
)

CFG2 = VivaldiConfig(dimensions=2)


def test_prediction_is_distance_plus_both_heights():
    a = Coord((0.0, 0.0), 5.0, 0.5)
    b = Coord((30.0, 40.0), 2.0, 0.5)
    assert predicted_rtt(a, b) == predicted_rtt(b, a) == 57.0
    assert relative_error(110.0, 100.0) == 0.1


def test_an_update_moves_toward_the_measured_rtt_and_lowers_the_error():
    rng = random.Random(1)
    me = Coord((0.0, 0.0), 1.0, 1.0)
    them = Coord((10.0, 0.0), 1.0, 0.1)  # a confident peer 12 ms away by prediction
    moved = update(me, them, 100.0, rng, CFG2)
    assert predicted_rtt(moved, them) > predicted_rtt(me, them)
    assert moved.vec[0] < 0  # pushed away from the peer, along the line between us
    closer = update(Coord((90.0, 0.0), 1.0, 1.0), them, 10.0, rng, CFG2)
    assert predicted_rtt(closer, them) < 82.0
    # A confident node barely moves for an unsure one.
    sure = Coord((0.0, 0.0), 1.0, 0.01)
    assert abs(update(sure, Coord((10.0, 0.0), 1.0, 1.0), 100.0, rng, CFG2).vec[0]) < 1.0


def test_unusable_samples_leave_the_coordinate_alone():
    rng = random.Random(1)
    me = origin(CFG2)
    peer = Coord((3.0, 4.0), 1.0, 0.5)
    assert update(me, peer, math.nan, rng, CFG2) is me
    assert update(me, peer, -1.0, rng, CFG2) is me
    assert update(me, Coord((1.0, 2.0, 3.0), 1.0, 0.5), 10.0, rng, CFG2) is me
    assert update(me, Coord((math.inf, 0.0), 1.0, 0.5), 10.0, rng, CFG2) is me
    assert update(me, Coord((0.0, 0.0), -5.0, 0.5), 10.0, rng, CFG2) is me
    assert not Coord((math.nan, 0.0), 1.0, 0.5).is_valid()
    assert Coord((1.0, 2.0), 1.0, 0.5).is_valid(2) and not Coord((1.0,), 1.0, 0.5).is_valid(2)


def test_coincident_nodes_are_pushed_apart():
    rng = random.Random(3)
    a = update(origin(CFG2), origin(CFG2), 50.0, rng, CFG2)
    assert a.vec != (0.0, 0.0)
    assert a.height >= CFG2.min_height_ms


def test_coordinates_converge_on_a_plane_with_access_links():
    """60 nodes at known points plus per-node access delays: the embedding is exact."""
    rng = random.Random(11)
    n = 60
    points = [(rng.uniform(0, 200), rng.uniform(0, 200)) for _ in range(n)]
    access = [rng.uniform(1, 10) for _ in range(n)]

    def rtt(i: int, j: int) -> float:
        return math.dist(points[i], points[j]) + access[i] + access[j]

    cs = [origin(CFG2) for _ in range(n)]
    peers = [rng.sample([j for j in range(n) if j != i], 12) for i in range(n)]
    for _ in range(400):
        for i in range(n):
            j = rng.choice(peers[i])
            cs[i] = update(cs[i], cs[j], rtt(i, j), rng, CFG2)
    errors = [
        relative_error(predicted_rtt(cs[i], cs[j]), rtt(i, j))
        for i in range(n)
        for j in range(i + 1, n)
    ]
    assert statistics.median(errors) < 0.05
    assert statistics.median(c.error for c in cs) < 0.15  # nodes know they are accurate
