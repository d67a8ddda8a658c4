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


async def wait_for(condition: Callable[[], object], what: str, within: float = 30.0) -> None:
    """:func:`poll_until` within ``within`` seconds; past it, an AssertionError that names
    ``what`` the test was waiting for."""
    try:
        with trio.fail_after(within):
            await poll_until(condition)
    except trio.TooSlowError:
        raise AssertionError(f"timed out after {within} s waiting for {what}") from None
