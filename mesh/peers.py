"""The peer book: every peer this node knows an address for, with dial backoff.

Pure bookkeeping (time is passed in). The connection manager asks it which
peers are due for a dial and reports outcomes back; the node saves its
``snapshot()`` to the data directory so a restarted node can rejoin the mesh
without its bootstrap list.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from poolai.mesh.backoff import Backoff

MAX_ADDRS_PER_PEER = 8
MAX_ADDR_LEN = 256
BACKOFF_BASE = 1.0
BACKOFF_MAX = 60.0
DIAL_BACKOFF = Backoff(base=BACKOFF_BASE, cap=BACKOFF_MAX)
FORGET_AFTER = 7 * 24 * 3600.0  # a peer unseen for a week is dropped from the book


@dataclasses.dataclass(slots=True)
class PeerEntry:
    peer_id: str
    addrs: list[str]
    last_seen: float = 0.0  # wall-clock seconds of the last successful contact; 0 = never
    failures: int = 0
    next_dial: float = 0.0
    bootstrap: bool = False  # named by the owner: never forgotten, always retried


def is_wildcard(addr: str) -> bool:
    """Whether a multiaddr's host is the unspecified address (``0.0.0.0`` or ``::``)."""
    parts = addr.split("/")
    return len(parts) > 2 and ((parts[1] == "ip4" and parts[2] == "0.0.0.0")
                               or (parts[1] == "ip6" and parts[2] in ("::", "0:0:0:0:0:0:0:0")))


class PeerBook:
    """Known peers and when each may be dialled next (exponential backoff on failure)."""

    def __init__(self, self_id: str, capacity: int = 2000) -> None:
        self.self_id = self_id
        self.capacity = capacity
        self._peers: dict[str, PeerEntry] = {}

    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, peer_id: str) -> bool:
        return peer_id in self._peers

    def get(self, peer_id: str) -> PeerEntry | None:
        return self._peers.get(peer_id)

    def entries(self) -> list[PeerEntry]:
        return list(self._peers.values())

    def add(self, peer_id: str, addrs: Iterable[str], *, bootstrap: bool = False) -> None:
        """Learn (or refresh) addresses for a peer; our own id is ignored, and so are wildcard
        addresses learned from peers (``/ip4/0.0.0.0/...``: a peer listening on every
        interface tells its listen address as it is, which names no host to dial or show)."""
        if peer_id == self.self_id:
            return
        clean = [a for a in addrs if isinstance(a, str) and 0 < len(a) <= MAX_ADDR_LEN
                 and (bootstrap or not is_wildcard(a))]
        entry = self._peers.get(peer_id)
        if entry is None:
            if len(self._peers) >= self.capacity and not self._evict_one():
                return
            entry = PeerEntry(peer_id, [])
            self._peers[peer_id] = entry
        learned = False
        for a in clean:
            if a not in entry.addrs:
                entry.addrs.insert(0, a)
                learned = True
        del entry.addrs[MAX_ADDRS_PER_PEER:]
        if learned and entry.failures:
            # A new way to reach it (a relay it just reserved on, say): worth a dial now,
            # not at the end of a backoff earned at the old addresses.
            entry.next_dial = 0.0
        entry.bootstrap = entry.bootstrap or bootstrap

    def mark_connected(self, peer_id: str, now: float) -> None:
        entry = self._peers.get(peer_id)
        if entry is not None:
            entry.last_seen = now
            entry.failures = 0
            entry.next_dial = 0.0

    def mark_failed(self, peer_id: str, now: float) -> float:
        """Record a failed dial; returns the delay before the next attempt."""
        entry = self._peers.get(peer_id)
        if entry is None:
            return BACKOFF_MAX
        entry.failures += 1
        delay = DIAL_BACKOFF.delay(entry.failures)
        entry.next_dial = now + delay
        return delay

    def due(self, now: float, exclude: set[str], limit: int) -> list[PeerEntry]:
        """Peers worth dialling now: bootstrap peers first, then the most recently seen."""
        ready = [
            e
            for e in self._peers.values()
            if e.peer_id not in exclude and e.addrs and e.next_dial <= now
        ]
        ready.sort(key=lambda e: (not e.bootstrap, -e.last_seen, e.failures))
        return ready[:limit]

    def forget_stale(self, now: float) -> int:
        stale = [
            p
            for p, e in self._peers.items()
            if not e.bootstrap and e.last_seen and now - e.last_seen > FORGET_AFTER
        ]
        for p in stale:
            del self._peers[p]
        return len(stale)

    def _evict_one(self) -> bool:
        candidates = [e for e in self._peers.values() if not e.bootstrap]
        if not candidates:
            return False
        victim = min(candidates, key=lambda e: (e.last_seen, -e.failures))
        del self._peers[victim.peer_id]
        return True

    # ------------------------------------------------------------------ persistence
    def snapshot(self) -> dict:
        """A JSON-ready record of the book (format version 1)."""
        return {
            "version": 1,
            "peers": [
                {"peer_id": e.peer_id, "addrs": e.addrs, "last_seen": e.last_seen}
                for e in self._peers.values()
                if e.last_seen or e.bootstrap
            ],
        }

    def restore(self, data: object) -> int:
        """Load a snapshot; malformed entries are skipped. Returns how many were loaded."""
        if not isinstance(data, dict) or data.get("version") != 1:
            return 0
        loaded = 0
        for item in data.get("peers", [])[: self.capacity]:
            if not isinstance(item, dict):
                continue
            peer_id, addrs, seen = item.get("peer_id"), item.get("addrs"), item.get("last_seen")
            if not isinstance(peer_id, str) or not isinstance(addrs, list):
                continue
            self.add(peer_id, addrs)
            entry = self._peers.get(peer_id)
            if entry is not None and isinstance(seen, int | float):
                entry.last_seen = float(seen)
                loaded += 1
        return loaded
