"""Vivaldi network coordinates with height (Dabek, Cox, Kaashoek, Morris, SIGCOMM 2004).

Each node keeps a point in a low-dimensional Euclidean space plus a *height*:
the predicted round-trip time between two nodes is the distance between
their points plus both heights. Heights model the access link that every
packet of a node crosses, which a plane alone cannot express (two nodes
behind slow links are far from everyone, including each other).

A node moves its own coordinate after every RTT it measures, like a spring
pulling it toward the distance it observed (see ``update`` for the one
departure from the paper's step). The step is adaptive: a node
whose own error estimate is high relative to the remote's moves further, and
a confident node barely moves for an uncertain one.

Everything here is pure: coordinates are frozen values, updates return new
ones. The only randomness (a direction when two points coincide) comes from
the caller's ``random.Random``.
"""

from __future__ import annotations

import dataclasses
import math
import random

MAX_DIMENSIONS = 8
MIN_RTT_MS = 0.1  # a measured RTT below this is treated as this, so the relative error stays finite
MAX_RTT_MS = 60_000.0  # an RTT above this is a broken measurement, not a network distance


@dataclasses.dataclass(frozen=True, slots=True)
class VivaldiConfig:
    """Tuning of the coordinate update.

    ``cc`` scales how far one sample moves the coordinate, ``ce`` how fast the
    error estimate follows the observed error (Dabek et al. use 0.25 for both).
    ``min_height`` keeps heights positive: a zero height would let two nodes
    on the same host predict 0 ms. Eight dimensions plus height predict
    short RTTs (the ones nearest-peer choices hinge on) clearly better than
    Dabek's two on PlanetLab data (docs/overlay-sim.md), for six more floats
    per coordinate.
    """

    dimensions: int = 8
    cc: float = 0.25
    ce: float = 0.25
    min_height_ms: float = 0.1
    initial_error: float = 1.0
    max_error: float = 1.5

    def __post_init__(self) -> None:
        if not 1 <= self.dimensions <= MAX_DIMENSIONS:
            raise ValueError(f"dimensions must be in 1..{MAX_DIMENSIONS}")
        if not (0 < self.cc <= 1 and 0 < self.ce <= 1):
            raise ValueError("cc and ce must be in (0, 1]")
        if self.min_height_ms < 0 or not 0 < self.initial_error <= self.max_error:
            raise ValueError("bad height or error bounds")


@dataclasses.dataclass(frozen=True, slots=True)
class Coord:
    """A Vivaldi coordinate: a point (ms), a height (ms) and the node's own error estimate.

    ``error`` is the moving average of |predicted - measured| / measured over
    the node's recent samples; 1.0 means "no idea yet".
    """

    vec: tuple[float, ...]
    height: float
    error: float

    def is_valid(self, dimensions: int | None = None) -> bool:
        """Whether every field is finite and in range (use on coordinates read off the wire)."""
        if dimensions is not None and len(self.vec) != dimensions:
            return False
        if not 1 <= len(self.vec) <= MAX_DIMENSIONS:
            return False
        values = (*self.vec, self.height, self.error)
        return all(math.isfinite(v) for v in values) and self.height >= 0 and self.error >= 0


def origin(config: VivaldiConfig = VivaldiConfig()) -> Coord:
    """The coordinate a fresh node starts from: the origin, minimal height, full uncertainty."""
    return Coord((0.0,) * config.dimensions, config.min_height_ms, config.initial_error)


def predicted_rtt(a: Coord, b: Coord) -> float:
    """Predicted round-trip time in ms between two coordinates: ||a - b|| + a.height + b.height."""
    s = 0.0
    for x, y in zip(a.vec, b.vec, strict=True):
        s += (x - y) * (x - y)
    return math.sqrt(s) + a.height + b.height


def relative_error(predicted_ms: float, measured_ms: float) -> float:
    """|predicted - measured| / measured, the accuracy measure used throughout the literature."""
    return abs(predicted_ms - measured_ms) / max(measured_ms, MIN_RTT_MS)


def update(
    local: Coord,
    remote: Coord,
    rtt_ms: float,
    rng: random.Random,
    config: VivaldiConfig = VivaldiConfig(),
) -> Coord:
    """The local coordinate after one RTT sample to a node at ``remote``.

    Returns ``local`` unchanged when the sample is unusable (non-finite, out
    of range, or a remote coordinate of another dimension): a peer's bad
    coordinate must not poison ours.
    """
    if not (math.isfinite(rtt_ms) and 0 <= rtt_ms <= MAX_RTT_MS):
        return local
    rv, lv = remote.vec, local.vec
    if len(rv) != len(lv) or not (
        0 <= remote.height < MAX_RTT_MS and 0 <= remote.error < MAX_RTT_MS
    ):
        return local
    rtt = max(rtt_ms, MIN_RTT_MS)
    diff = [x - y for x, y in zip(lv, rv, strict=True)]
    plane = math.sqrt(sum([d * d for d in diff]))
    if not math.isfinite(plane):
        return local  # a non-finite remote vector
    if plane == 0.0:
        # Coincident points give no direction: push apart along a random one.
        diff = [rng.gauss(0.0, 1.0) for _ in lv]
        norm = math.sqrt(sum([d * d for d in diff])) or 1.0
        diff = [d / norm * 1e-3 for d in diff]
        plane = 1e-3
    heights = local.height + remote.height
    dist = plane + heights
    # Sample weight: trust the sample in proportion to how unsure we are compared to them.
    total = local.error + remote.error
    weight = local.error / total if total > 0 else 0.5
    ce_w = config.ce * weight
    error = min(config.max_error, abs(dist - rtt) / rtt * ce_w + local.error * (1.0 - ce_w))
    # Dabek et al. move along the height-vector difference (x_l - x_r, h_l + h_r), which
    # splits the step between plane and heights in proportion to their sizes. Starting
    # from one point, that sends almost every early step into the heights and the plane
    # unfolds slowly; here the plane takes the whole step along its own unit vector and
    # the heights their proportional share on top, which converges faster.
    force = config.cc * weight * (rtt - dist)
    vec = tuple([x + force * d / plane for x, d in zip(lv, diff, strict=True)])
    height = max(config.min_height_ms, local.height + force * heights / dist)
    return Coord(vec, height, error)
