"""One retry schedule: exponential backoff with a cap and optional jitter.

Pure: the caller counts failures, owns the clock and passes randomness in, so
the same schedule drives dial retries (seconds), gossip stream repairs
(housekeeping rounds) and receipt or result deliveries, and each is tested
without waiting.
"""

from __future__ import annotations

import dataclasses
import random


@dataclasses.dataclass(frozen=True, slots=True)
class Backoff:
    """Wait ``base`` after the first failure, ``factor`` times longer after each further
    one, never more than ``cap``. ``jitter`` (0..1) takes up to that fraction off each
    wait at random, so peers that failed together do not retry together.
    Raises ValueError for a schedule that makes no sense."""

    base: float
    cap: float
    factor: float = 2.0
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.base <= self.cap:
            raise ValueError(f"backoff needs 0 < base <= cap, got {self.base} and {self.cap}")
        if not self.factor >= 1.0:
            raise ValueError(f"backoff factor must be at least 1, got {self.factor}")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"backoff jitter must be within 0..1, got {self.jitter}")

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """The wait after ``failures`` consecutive failures (0: none, retry at once).
        ``rng`` is required when the schedule has jitter."""
        if failures <= 0:
            return 0.0
        try:
            wait = min(self.cap, self.base * self.factor ** (failures - 1))
        except OverflowError:  # factor ** a very long run of failures
            wait = self.cap
        if self.jitter:
            if rng is None:
                raise ValueError("a backoff with jitter needs an rng")
            wait *= 1.0 - self.jitter * rng.random()
        return wait

    def next_at(self, now: float, failures: int, rng: random.Random | None = None) -> float:
        """When to try again: ``now`` plus :meth:`delay`."""
        return now + self.delay(failures, rng)
