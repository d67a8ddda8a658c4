"""Ring arithmetic for the overlay: 64-bit positions, distances, ownership, harmonic draws.

Positions live on a ring of 2**64 points. A node sits at the first 8 bytes
(big-endian) of ``sha256(peer_id)``; a key sits at the first 8 bytes of
``sha256(b"poolai/key" + key)``, so a peer cannot pick its own id to land on
a chosen key without grinding hashes. A key is owned by its *successor*: the
first node clockwise at or after the key's position (the Chord convention).

Everything here is pure integer arithmetic; the overlay, the router and the
simulator share it so that they can never disagree on who owns what.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
from collections.abc import Sequence

RING_BITS = 64
RING_SIZE = 1 << RING_BITS
RING_MASK = RING_SIZE - 1
KEY_DOMAIN = b"poolai/key"


def node_position(peer_id: bytes) -> int:
    """The ring position of a peer: the first 8 bytes of sha256(peer id), big-endian."""
    return int.from_bytes(hashlib.sha256(peer_id).digest()[:8], "big")


def key_position(key: bytes) -> int:
    """The ring position of a key: first 8 bytes of sha256(b"poolai/key" + key), big-endian.

    The domain prefix keeps key positions apart from node positions: the key
    equal to a node's id bytes does not land exactly on that node.
    """
    return int.from_bytes(hashlib.sha256(KEY_DOMAIN + key).digest()[:8], "big")


def clockwise(a: int, b: int) -> int:
    """Distance travelled going clockwise (increasing positions) from ``a`` to ``b``."""
    return (b - a) & RING_MASK


def ring_distance(a: int, b: int) -> int:
    """The shorter way round between two positions (symmetric, at most 2**63)."""
    d = (b - a) & RING_MASK
    return min(d, RING_SIZE - d)


def in_arc(x: int, a: int, b: int) -> bool:
    """Whether ``x`` lies in the half-open clockwise arc ``(a, b]``.

    When ``a == b`` the arc is the whole ring: a lone node owns every key.
    """
    if a == b:
        return True
    return 0 < ((x - a) & RING_MASK) <= ((b - a) & RING_MASK)


def owns(node: int, predecessor: int, key: int) -> bool:
    """Whether the node at ``node`` whose predecessor is at ``predecessor`` owns ``key``."""
    return in_arc(key, predecessor, node)


def successor_index(sorted_positions: Sequence[int], key: int) -> int:
    """Index of the owner of ``key`` in an ascending list of node positions (wraps at the end).

    Raises ``ValueError`` on an empty list: an empty ring owns nothing.
    """
    if not sorted_positions:
        raise ValueError("no nodes on the ring")
    i = bisect.bisect_left(sorted_positions, key)
    return 0 if i == len(sorted_positions) else i


def bits_to_go(distance: int, size_estimate: float) -> float:
    """log2 of the expected number of nodes within ``distance`` of a point: hops still to make.

    Zero at the key itself; grows by one each time the distance doubles.
    """
    return math.log2(1.0 + distance * max(size_estimate, 1.0) / RING_SIZE)


def harmonic_fraction(size_estimate: float, u: float) -> float:
    """Symphony's long-link length as a fraction of the ring: ``n ** (u - 1)`` for u in [0, 1).

    The result lies in ``[1/n, 1)`` with density ``1 / (x ln n)``: every
    doubling of distance is equally likely, which is what makes greedy
    routing over such links take O(log^2 n / k) hops.
    """
    n = max(size_estimate, 2.0)
    return float(n ** (u - 1.0))


def harmonic_cdf(fraction: float, size_estimate: float) -> float:
    """P(harmonic fraction <= ``fraction``): ``1 + ln(x) / ln(n)`` clamped to [0, 1]."""
    n = max(size_estimate, 2.0)
    if fraction <= 1.0 / n:
        return 0.0
    if fraction >= 1.0:
        return 1.0
    return 1.0 + math.log(fraction) / math.log(n)


def harmonic_target(position: int, size_estimate: float, rng: random.Random) -> int:
    """A clockwise long-link target drawn from the harmonic distribution around ``position``."""
    frac = harmonic_fraction(size_estimate, rng.random())
    step = max(1, min(RING_SIZE - 1, int(frac * RING_SIZE)))
    return (position + step) & RING_MASK


def size_from_span(count: int, span: int) -> float:
    """Network size implied by ``count`` nodes found spread over ``span`` ring points.

    Used on a node's successor and predecessor lists: nodes are uniform on the
    ring, so n is about count * 2**64 / span. ``span == 0`` means the node saw
    nobody and the estimate is 1.
    """
    if count <= 0 or span <= 0:
        return 1.0
    return max(1.0, count * RING_SIZE / span)
