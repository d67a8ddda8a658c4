"""Racing threads against each other: each call on a thread of its own, all released at
the same instant, every exception collected so a test can name it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any


def race(fn: Callable[..., Any], args: Sequence[tuple[Any, ...]], timeout: float = 60.0
         ) -> list[BaseException]:
    """Run ``fn(*a)`` for every ``a`` in ``args`` at once; the exceptions they raised."""
    start = threading.Barrier(len(args))
    errors: list[BaseException] = []

    def one(*a: Any) -> None:
        start.wait(timeout)
        try:
            fn(*a)
        except BaseException as exc:  # collected so the test names the failure
            errors.append(exc)

    threads = [threading.Thread(target=one, args=a) for a in args]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a racing thread did not finish"
    return errors
