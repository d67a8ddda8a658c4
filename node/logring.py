"""The last few hundred log records, kept in memory for the status page and ``/metrics``.

A :class:`LogRing` is an ordinary :class:`logging.Handler`: the node attaches
it to the root logger while it runs, the page shows its tail and the
warnings among it as alerts, and the per-level counters become the
``poolai_log_messages_total`` metric. Memory stays bounded whatever the log
volume: old records fall off, messages are truncated.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Any

DEFAULT_CAPACITY = 500
MAX_MESSAGE = 1000  # characters kept of one message


@dataclasses.dataclass(frozen=True, slots=True)
class LogEntry:
    """One record as the page shows it. ``seq`` grows by one per record seen."""

    seq: int
    ts: float
    level: str
    logger: str
    msg: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class LogRing(logging.Handler):
    """Keeps the newest ``capacity`` records and counts every record by level."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY, level: int = logging.INFO) -> None:
        super().__init__(level)
        self._entries: collections.deque[LogEntry] = collections.deque(maxlen=capacity)
        self._seq = 0
        self._counts: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        # Called with the handler's lock held (Handler.handle), from any thread.
        try:
            msg = record.getMessage()
        except (TypeError, ValueError):  # a bad format string must not lose the record
            msg = str(record.msg)
        if record.exc_info and record.exc_info[1] is not None:
            msg = f"{msg} ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
        level = record.levelname.lower()
        self._seq += 1
        self._counts[level] = self._counts.get(level, 0) + 1
        self._entries.append(LogEntry(self._seq, round(record.created, 3), level, record.name[:100],
                                      msg[:MAX_MESSAGE]))

    def tail(self, limit: int = 100, *, min_level: int = logging.NOTSET) -> list[LogEntry]:
        """The newest ``limit`` entries at ``min_level`` or above, oldest first."""
        with self.lock:  # type: ignore[union-attr]  # Handler.createLock always sets it
            entries = list(self._entries)
        if min_level > logging.NOTSET:
            entries = [e for e in entries if logging.getLevelName(e.level.upper()) >= min_level]
        return entries[-limit:] if limit > 0 else []

    def counts(self) -> dict[str, int]:
        """Records seen since the ring was made, by level name (``warning``, ``error`` ...)."""
        with self.lock:  # type: ignore[union-attr]
            return dict(self._counts)
