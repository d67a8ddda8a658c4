"""A mapping that forgets its oldest entries: the one shape of every bounded table.

Tables a peer can feed (results checked, RTTs measured, jobs finished) must
stay bounded; each used to hand-roll an OrderedDict that popped its oldest
entry. :class:`CappedDict` is that, once: entries keep the order they were
first set in (or last set in, with ``renew=True``), and :meth:`CappedDict.put`
or :meth:`CappedDict.trim` drop the oldest ones past ``capacity``. Entries the
caller must keep (a link in use, a job still running) are passed as a
predicate; they are never dropped and do not count toward the capacity.

:class:`Memo` is the other bounded table repeated by hand: a cache of a pure
conversion (peer id text to bytes and back) that is reset when it grows past
its capacity.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, ItemsView, Iterator, KeysView, MutableMapping, ValuesView
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")
Keep = Callable[[K, V], bool]


class CappedDict(MutableMapping[K, V]):
    """A dict of at most ``capacity`` droppable entries once trimmed, oldest dropped first.

    ``renew``: setting an existing key makes it the newest (least recently written
    goes first) instead of keeping its first place (first in, first out).
    ``slack``: let the droppable entries grow to ``capacity + slack`` before trimming
    back to ``capacity``, so a hot table is scanned once per ``slack`` inserts.
    Plain item assignment never drops anything; :meth:`put` and :meth:`trim` do.
    Raises ValueError for a negative capacity or slack.
    """

    def __init__(self, capacity: int, *, renew: bool = False, slack: int = 0) -> None:
        if capacity < 0 or slack < 0:
            raise ValueError(f"capacity and slack must not be negative, got {capacity} and {slack}")
        self.capacity = capacity
        self.renew = renew
        self.slack = slack
        self._data: OrderedDict[K, V] = OrderedDict()

    def __getitem__(self, key: K) -> V:
        return self._data[key]

    def __setitem__(self, key: K, value: V) -> None:
        self._data[key] = value
        if self.renew:
            self._data.move_to_end(key)

    def __delitem__(self, key: K) -> None:
        del self._data[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._data)  # oldest first

    def __len__(self) -> int:
        return len(self._data)

    def __reversed__(self) -> Iterator[K]:
        return reversed(self._data)  # newest first

    # The dict's own views: reversible (newest first) like a dict's, and faster than Mapping's.
    def keys(self) -> KeysView[K]:
        return self._data.keys()

    def values(self) -> ValuesView[V]:
        return self._data.values()

    def items(self) -> ItemsView[K, V]:
        return self._data.items()

    def __repr__(self) -> str:
        return f"CappedDict({dict(self._data)!r}, capacity={self.capacity})"

    def put(self, key: K, value: V, keep: Keep[K, V] | None = None) -> list[tuple[K, V]]:
        """Set ``key`` and trim; returns the entries dropped, oldest first."""
        self[key] = value
        return self.trim(keep)

    def trim(self, keep: Keep[K, V] | None = None) -> list[tuple[K, V]]:
        """Past ``capacity + slack`` droppable entries, drop the oldest until ``capacity``
        remain. ``keep(key, value)`` true: never dropped, not counted. Returns the dropped."""
        if len(self._data) <= self.capacity + self.slack:
            return []  # the common case, without a scan
        droppable = [k for k, v in self._data.items() if keep is None or not keep(k, v)]
        excess = len(droppable) - self.capacity
        if excess <= self.slack:
            return []
        return [(k, self._data.pop(k)) for k in droppable[:excess]]


class Memo(Generic[K, V]):
    """``convert(key)``, remembered for up to ``capacity`` keys, then all forgotten at once.

    For a pure conversion that is worth not repeating (peer id text to bytes
    and back) applied to keys peers supply: the memo stays bounded however many
    distinct keys arrive, at the cost of converting again after a reset.
    ``convert``'s exceptions pass through, and nothing is remembered for them.
    """

    def __init__(self, convert: Callable[[K], V], capacity: int = 10_000) -> None:
        self._convert = convert
        self._capacity = capacity
        self._done: dict[K, V] = {}

    def __call__(self, key: K) -> V:
        try:
            return self._done[key]
        except KeyError:
            pass
        value = self._convert(key)
        if len(self._done) > self._capacity:
            self._done.clear()
        self._done[key] = value
        return value
