"""Runs one iterative lookup on a virtual clock, the same way for every system.

A lookup object offers ``next_queries()``, ``request()``, ``on_answer(peer,
answer)``, ``on_timeout(peer)`` and ``done``/``owner``/``hops``. The engine
sends each query when the lookup asks for it; a live peer's answer arrives
one RTT later (querier to peer and back), a dead peer's silence is noticed
``TIMEOUT_MS`` later. The lookup's latency is the virtual time at which it
finished.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Callable
from typing import Any

TIMEOUT_MS = 1000.0


@dataclasses.dataclass(slots=True)
class Outcome:
    owner: int | None
    hops: int
    latency_ms: float
    rpcs: int
    timeouts: int


def run_lookup(
    lookup: Any,
    querier: int,
    index_of: Callable[[Any], int],
    ask: Callable[[int, Any], Any],
    rtt: Callable[[int, int], float],
    alive: Callable[[int], bool],
    on_rtt: Callable[[int, float, Any], None] | None = None,
) -> Outcome:
    """Drive ``lookup`` to completion; ``ask(j, request)`` is node j's answer."""
    heap: list[tuple[float, int, int, Any, Any]] = []
    now = 0.0
    seq = 0
    rpcs = timeouts = 0

    def send() -> None:
        nonlocal seq, rpcs
        for peer in lookup.next_queries():
            j = index_of(peer)
            rpcs += 1
            seq += 1
            if alive(j):
                answer = ask(j, lookup.request())
                heapq.heappush(heap, (now + rtt(querier, j), seq, j, peer, answer))
            else:
                heapq.heappush(heap, (now + TIMEOUT_MS, seq, j, peer, None))

    send()
    while heap and not lookup.done:
        now, _, j, peer, answer = heapq.heappop(heap)
        pid = getattr(peer, "peer_id", peer)
        if answer is None:
            timeouts += 1
            lookup.on_timeout(pid)
        else:
            if on_rtt is not None:
                on_rtt(j, rtt(querier, j), answer)
            lookup.on_answer(pid, answer)
        send()
    owner = None if lookup.owner is None else index_of(lookup.owner)
    return Outcome(owner, lookup.hops, now, rpcs, timeouts)
