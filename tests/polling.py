"""Waiting on state that signals no event: another service's tables, a file a thread
writes, a server's counters. Where an event exists, tests await it instead."""

from __future__ import annotations

from collections.abc import Callable

import trio


async def poll_until(condition: Callable[[], object], interval: float = 0.05) -> None:
    """Return once ``condition()`` is true, checking every ``interval`` seconds; the
    caller bounds the wait with ``trio.fail_after``."""
    while not condition():  # noqa: ASYNC110 - nothing signals this state
        await trio.sleep(interval)
