"""Ring arithmetic: positions, wrap-around, ownership and the harmonic long-link draw."""

from __future__ import annotations

import hashlib
import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from poolai.mesh.ring import (
    RING_MASK,
    RING_SIZE,
    bits_to_go,
    clockwise,
    harmonic_cdf,
    harmonic_fraction,
    harmonic_target,
    in_arc,
    key_position,
    node_position,
    ring_distance,
    size_from_span,
    successor_index,
)

positions = st.integers(min_value=0, max_value=RING_MASK)


def test_positions_are_the_first_eight_bytes_of_sha256():
    pid = b"\x00\x24\x08\x01peer"
    assert node_position(pid) == int.from_bytes(hashlib.sha256(pid).digest()[:8], "big")
    assert key_position(b"k") == int.from_bytes(
        hashlib.sha256(b"poolai/key" + b"k").digest()[:8], "big"
    )
    assert key_position(pid) != node_position(pid)  # keys and nodes live in separate domains


def test_clockwise_wraps_around_zero():
    assert clockwise(RING_MASK, 0) == 1
    assert clockwise(0, RING_MASK) == RING_MASK
    assert clockwise(5, 5) == 0
    assert clockwise(RING_MASK - 1, 3) == 5


def test_ring_distance_takes_the_short_way_round():
    assert ring_distance(RING_MASK, 0) == 1
    assert ring_distance(0, RING_MASK) == 1
    assert ring_distance(0, RING_SIZE // 2) == RING_SIZE // 2
    assert ring_distance(10, 10 + RING_SIZE // 2 + 7) == RING_SIZE // 2 - 7


def test_in_arc_is_half_open_and_wraps():
    assert in_arc(5, 3, 5) and not in_arc(3, 3, 5)
    assert in_arc(0, RING_MASK - 1, 2)  # arc across zero
    assert in_arc(RING_MASK, RING_MASK - 1, 2)
    assert not in_arc(RING_MASK - 1, RING_MASK - 1, 2)
    assert not in_arc(3, RING_MASK - 1, 2)
    assert in_arc(123, 7, 7)  # a lone node owns the whole ring


@given(positions, positions, positions)
def test_in_arc_matches_clockwise_distances(x, a, b):
    if a != b:
        assert in_arc(x, a, b) == (0 < clockwise(a, x) <= clockwise(a, b))


@given(positions, positions)
def test_distances_are_consistent(a, b):
    assert clockwise(a, b) + clockwise(b, a) in (0, RING_SIZE)
    assert ring_distance(a, b) == ring_distance(b, a) <= RING_SIZE // 2


def test_successor_index_wraps_past_the_last_node():
    nodes = [10, 20, 30]
    assert successor_index(nodes, 20) == 1  # a node owns the key at its own position
    assert successor_index(nodes, 21) == 2
    assert successor_index(nodes, 31) == 0
    assert successor_index(nodes, 0) == 0
    with pytest.raises(ValueError):
        successor_index([], 1)


def test_harmonic_fraction_spans_one_over_n_to_one():
    assert harmonic_fraction(1000, 0.0) == pytest.approx(1 / 1000)
    assert harmonic_fraction(1000, 0.5) == pytest.approx(1 / math.sqrt(1000))
    assert harmonic_fraction(1000, 0.999999) < 1.0


def test_harmonic_targets_follow_the_log_uniform_law():
    """Kolmogorov-Smirnov against P(X <= x) = 1 + ln x / ln n, plus equal mass per doubling."""
    n = 10_000
    rng = random.Random(7)
    me = RING_MASK - 12345  # near the top so most targets wrap past zero
    samples = sorted(clockwise(me, harmonic_target(me, n, rng)) / RING_SIZE for _ in range(4000))
    m = len(samples)
    d = max(
        max(abs((i + 1) / m - harmonic_cdf(x, n)), abs(i / m - harmonic_cdf(x, n)))
        for i, x in enumerate(samples)
    )
    assert d < 1.63 / math.sqrt(m)  # KS critical value at the 1% level
    # Chi-square over the log2(n) doublings between 1/n and 1: each holds the same share.
    bins = math.ceil(math.log2(n))
    counts = [0] * bins
    for x in samples:
        counts[min(bins - 1, int(-math.log2(x)))] += 1
    edges = [2.0**-k for k in range(bins + 1)]
    expected = [
        m * (harmonic_cdf(edges[k], n) - harmonic_cdf(max(edges[k + 1], 1 / n), n))
        for k in range(bins)
    ]
    chi2 = sum((c - e) ** 2 / e for c, e in zip(counts, expected, strict=True))
    assert chi2 < 27.7  # the chi-square 99% quantile for 14 - 1 degrees of freedom


def test_size_from_span_and_bits_to_go():
    assert size_from_span(16, RING_SIZE // 1000) == pytest.approx(16_000, rel=1e-6)
    assert size_from_span(0, 0) == 1.0
    assert bits_to_go(0, 1000) == 0.0
    assert bits_to_go(RING_SIZE // 1000, 1000) == pytest.approx(1.0)
