"""LoopLoad: the share of wall time a thread ran or waited to run, per window."""

from __future__ import annotations

import os
import time

from poolai.storage.loop_load import CPU_BOUND, LoopLoad, thread_demand


class Clocks:
    """A wall clock and a thread's demand, both moved by hand; counts demand reads."""

    def __init__(self) -> None:
        self.now = 100.0
        self.spent = 5.0
        self.reads = 0

    def clock(self) -> float:
        return self.now

    def demand(self) -> float:
        self.reads += 1
        return self.spent


def test_the_share_of_each_window_decides_and_the_kernel_is_read_once_per_window():
    clocks = Clocks()  # steps are binary fractions, so the sums below are exact
    load = LoopLoad(0.25, clock=clocks.clock, demand=clocks.demand)
    assert not load.busy() and clocks.reads == 1  # the first call only starts a window

    clocks.now += 0.125
    clocks.spent += 0.125
    assert not load.busy() and clocks.reads == 1  # window not over: not read, still 0

    clocks.now += 0.125
    clocks.spent += 0.109375  # 0.234375 of 0.25 s running or ready to run
    assert load.busy() and load.fraction == 0.9375 and clocks.reads == 2

    clocks.now += 0.5
    clocks.spent += 0.125  # an idle stretch (waiting for the network)
    assert not load.busy() and load.fraction == 0.25

    clocks.now += 0.25
    clocks.spent += 0.234375  # busy again
    assert load.busy()


def test_a_spinning_thread_reads_as_busy():
    """Against the kernel: a thread that never sleeps is running or waiting to run the
    whole time (on a loaded machine it waits, and that counts: it is still the limit)."""
    load = LoopLoad(0.05)
    load.busy()
    start = time.monotonic()
    spun = 0
    while time.monotonic() - start < 0.2:
        spun += 1
        load.busy()
    if os.path.exists("/proc/thread-self/schedstat"):
        assert load.busy() and load.fraction > CPU_BOUND, load.fraction
    else:  # CPU time alone: a loaded machine may give the thread less than CPU_BOUND
        assert load.fraction > 0
    assert thread_demand() > 0 and spun > 0
