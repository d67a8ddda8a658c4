"""How busy the event loop's thread is: the share of wall time it ran or waited to run.

A read may take a parity share instead of a primary whose holder is busier
(``transfers.PRIMARY_EDGE``): that spreads the read over more holders'
uplinks, and costs the reader a zfec rebuild (about 0.34 ms of CPU per MB of
the segment). It pays while holders' uplinks are the limit and the reader
has CPU to spare. When the reader's own thread is the limit (on a fast
network, or on a machine it shares with the holders) a rebuild only adds to
the reader's work: on ten local nodes sharing two cores, reads rebuilt 43 %
of their segments without this check and 5-17 % with it, and the getting
node spent 1.79 instead of 1.96 ms of CPU per MB (docs/storage.md).

:class:`LoopLoad` tells the two apart from the kernel's per-thread
accounting (``/proc/thread-self/schedstat``: time on a CPU plus time ready
but waiting for one). Where that file is missing it counts the thread's CPU
time alone (``time.thread_time``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

CPU_BOUND = 0.9
"""A thread running or ready to run this share of the time is the limit of its work."""


def thread_demand() -> float:
    """Seconds the calling thread has run or waited to run so far."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as handle:
            on_cpu, waiting, _ = handle.read().split()
        return (int(on_cpu) + int(waiting)) / 1e9
    except (OSError, ValueError):
        return time.thread_time()


class LoopLoad:
    """The share of wall time the calling thread ran or waited to run, over the last
    ``window`` seconds or more (0 until a first window has passed).

    Call it from one thread (the event loop's); it reads the kernel at most once per
    ``window``."""

    def __init__(
        self, window: float = 0.1, *, clock: Callable[[], float] = time.monotonic,
        demand: Callable[[], float] = thread_demand,
    ) -> None:
        self._window = window
        self._clock = clock
        self._demand = demand
        self._since: tuple[float, float] | None = None  # taken on the first call, in its thread
        self.fraction = 0.0

    def busy(self) -> bool:
        """Whether the thread was running or ready to run ``CPU_BOUND`` of the last window."""
        now = self._clock()
        if self._since is None:
            self._since = (now, self._demand())
        start, used = self._since
        if now - start >= self._window:
            spent = self._demand()
            self.fraction = (spent - used) / (now - start)
            self._since = (now, spent)
        return self.fraction >= CPU_BOUND
