"""Per-pair round-trip times for virtual nodes, from a measured host-to-host RTT matrix.

Virtual node i sits on host ``host[i]`` behind an access link of ``access[i]`` ms:

    rtt(i, j) = matrix[host[i]][host[j]] + access[i] + access[j]     (i != j)

With no more nodes than hosts every node gets its own host. Beyond that hosts
are drawn with replacement, and two nodes on one host (matrix entry 0) are
``access[i] + access[j]`` apart: at least twice the smallest access delay,
never 0, as two machines on one site would be.
"""

from __future__ import annotations

import csv
import math
import random
from pathlib import Path

ACCESS_MS = (0.5, 2.5)  # uniform per-node access delay, one way of the round trip each


def load_matrix(path: str | Path) -> list[list[float]]:
    """A square RTT matrix (ms) from a CSV with no header; rejects non-square or NaN input."""
    with open(path, newline="") as f:
        rows = [[float(x) for x in row] for row in csv.reader(f) if row]
    n = len(rows)
    if n == 0 or any(len(r) != n for r in rows):
        raise ValueError(f"{path}: not a square matrix")
    if any(math.isnan(x) for r in rows for x in r):
        raise ValueError(f"{path}: missing entries")
    return rows


class RttModel:
    """RTTs between ``n`` virtual nodes mapped onto the hosts of ``matrix``."""

    def __init__(self, matrix: list[list[float]], n: int, rng: random.Random) -> None:
        hosts = len(matrix)
        self.matrix = matrix
        if n <= hosts:
            self.host = rng.sample(range(hosts), n)
        else:
            self.host = [rng.randrange(hosts) for _ in range(n)]
        self.access = [rng.uniform(*ACCESS_MS) for _ in range(n)]
        self.distinct_hosts = len(set(self.host))

    def rtt(self, i: int, j: int) -> float:
        if i == j:
            return 0.0
        return self.matrix[self.host[i]][self.host[j]] + self.access[i] + self.access[j]
