"""Placement: which peers hold which shares, computed from a view of the ring alone.

Pure code: no I/O, no network, no index. Every peer sits on a 64-bit ring at
``ring_position(peer_id)`` (the first 8 bytes of sha256(peer_id), big-endian;
the same rule as the overlay's ring, restated here so storage does not depend
on it). Every share has a target position::

    share_position(file_id, seg, i) = first 8 bytes of sha256(b"S" || file_id || u64 seg || u16 i)
    manifest_position(file_id, j)   = first 8 bytes of sha256(b"M" || file_id || u16 j)

Successor rule: the holder of a target is the first peer clockwise from it
(position >= target, wrapping) that does not already hold another share of
the same segment. The n shares of a segment therefore land on n distinct
peers whenever the ring has n peers; with fewer, peers are reused round-robin
so a small mesh still stores everything (with less fault tolerance).

Any node with the file id and a ring view finds the holders, and a join or
leave only moves the shares whose targets fall between the changed peer and
its predecessor (about 1/N of them) plus the rare share that skipped over it.

Fallbacks: when a holder fails, the next candidates for a share are the
peers clockwise after its target that hold no share of the segment; a put
falls back along that walk and a get probes along the same walk.

Absent peers: a ring may keep peers that left recently as ``absent``. They
still count when holders are computed, so the holders of the shares that
stayed are the peers they were put on (leaving a peer out instead shifts
the holders of other shares of the same segment too: a successor skipped
as "used" is free again, and a ring smaller than n wraps differently). They
are never yielded as candidates. Readers use such a ring; writers use one
of present peers only, so nothing is placed on a peer that has gone.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice

PeerId = bytes
RING_BITS = 64
RING_SIZE = 1 << RING_BITS


def ring_position(peer_id: PeerId) -> int:
    """Position of a peer on the 64-bit ring."""
    return int.from_bytes(hashlib.sha256(peer_id).digest()[:8], "big")


def share_position(file_id: bytes, seg: int, index: int) -> int:
    """Target ring position of share ``index`` of segment ``seg`` of a file."""
    key = b"S" + file_id + seg.to_bytes(8, "big") + index.to_bytes(2, "big")
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big")


def manifest_position(file_id: bytes, copy: int) -> int:
    """Target ring position of replica ``copy`` of a file's manifest."""
    key = b"M" + file_id + copy.to_bytes(2, "big")
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big")


@dataclass(frozen=True, slots=True)
class Ring:
    """An immutable snapshot of the ring: peers sorted by (position, peer id).

    Build it with :meth:`from_positions` (positions given, e.g. by the
    overlay) or :meth:`from_peers` (positions computed with ``ring_position``).
    ``absent``: peers on the ring that have left (see the module doc); a subset
    of ``peers``.
    """

    positions: tuple[int, ...]
    peers: tuple[PeerId, ...]
    absent: frozenset[PeerId] = field(default=frozenset())

    @classmethod
    def from_positions(
        cls, entries: Iterable[tuple[PeerId, int]], absent: Iterable[PeerId] = ()
    ) -> Ring:
        """Ring from ``(peer_id, position)`` pairs; a repeated peer id keeps its first position.
        ``absent`` peers among them are marked absent (others named there are ignored).

        Raises ValueError for a position outside the 64-bit ring.
        """
        seen: dict[PeerId, int] = {}
        for peer, position in entries:
            if not 0 <= position < RING_SIZE:
                raise ValueError(f"ring position {position} out of range")
            seen.setdefault(bytes(peer), position)
        ordered = sorted((pos, peer) for peer, pos in seen.items())
        return cls(tuple(pos for pos, _ in ordered), tuple(peer for _, peer in ordered),
                   frozenset(bytes(p) for p in absent) & seen.keys())

    @classmethod
    def from_peers(cls, peer_ids: Iterable[PeerId], absent: Iterable[PeerId] = ()) -> Ring:
        """Ring from peer ids, each at ``ring_position(peer_id)``."""
        return cls.from_positions(((p, ring_position(p)) for p in peer_ids), absent)

    def __len__(self) -> int:
        return len(self.peers)

    def __contains__(self, peer: object) -> bool:
        return peer in self.peers

    def without(self, gone: Iterable[PeerId]) -> Ring:
        """A new ring with the given peers removed (e.g. peers known to have left)."""
        drop = set(gone)
        pairs = zip(self.positions, self.peers, strict=True)
        kept = [(pos, p) for pos, p in pairs if p not in drop]
        return Ring(tuple(pos for pos, _ in kept), tuple(p for _, p in kept), self.absent - drop)

    def present(self) -> Ring:
        """This ring without its absent peers (itself when none is absent): where shares
        are placed now, and where repair puts those that left with an absent peer."""
        return self.without(self.absent) if self.absent else self

    def successors(self, position: int) -> Iterator[PeerId]:
        """Every peer once, clockwise from the first at or after ``position``."""
        count = len(self.peers)
        start = bisect.bisect_left(self.positions, position)
        for step in range(count):
            yield self.peers[(start + step) % count]


def _assign(ring: Ring, targets: Iterable[int]) -> tuple[PeerId, ...]:
    if not ring.peers:
        raise ValueError("cannot place shares on an empty ring")
    used: set[PeerId] = set()
    out: list[PeerId] = []
    for target in targets:
        if len(used) == len(ring):
            used.clear()  # fewer peers than shares: start another round
        holder = next(p for p in ring.successors(target) if p not in used)
        used.add(holder)
        out.append(holder)
    return tuple(out)


def segment_holders(ring: Ring, file_id: bytes, seg: int, n: int) -> tuple[PeerId, ...]:
    """The n holders of a segment's shares, by share index (distinct when the ring has n peers).
    Absent peers count (see the module doc).

    Raises ValueError on an empty ring.
    """
    return _assign(ring, (share_position(file_id, seg, i) for i in range(n)))


@dataclass(frozen=True, slots=True)
class SegmentWalks:
    """Where to look for a segment's shares (see :func:`segment_walks`)."""

    holders: tuple[PeerId, ...]  # on the ring, absent peers counted: where shares were put
    current: tuple[PeerId, ...] | None  # on the present peers, when some are absent
    walks: list[list[PeerId]]  # per share index, the first ``depth`` peers to ask


def segment_walks(
    ring: Ring, file_id: bytes, seg: int, n: int, depth: int, *,
    present: Ring | None = None, present_first: bool = False,
) -> SegmentWalks:
    """Each share's :func:`share_lookup` walk, ``depth`` peers deep. ``present`` is
    ``ring.present()`` when the caller has it; with ``present_first`` a share's holder on the
    present peers comes before its holder on ``ring`` (a file put after peers left)."""
    holders = segment_holders(ring, file_id, seg, n)
    current = None
    if ring.absent:
        present = present if present is not None else ring.present()
        current = segment_holders(present, file_id, seg, n) if present.peers else None
    first, second = (current, holders) if present_first and current else (holders, current)
    walks = [list(islice(share_lookup(ring, file_id, seg, i, first, second), depth))
             for i in range(n)]
    return SegmentWalks(holders, current, walks)


def manifest_holders(ring: Ring, file_id: bytes, copies: int) -> tuple[PeerId, ...]:
    """The holders of a manifest's ``copies`` replicas (distinct when the ring is large enough)."""
    return _assign(ring, (manifest_position(file_id, j) for j in range(copies)))


def _fallback_walk(
    ring: Ring, primary: PeerId, target: int, holders: tuple[PeerId, ...]
) -> Iterator[PeerId]:
    if primary not in ring.absent:
        yield primary
    others = set(holders) | ring.absent
    for peer in ring.successors(target):
        if peer not in others:
            yield peer


def _lookup_walk(
    ring: Ring, target: int, first: Iterable[PeerId]
) -> Iterator[PeerId]:
    seen = set(ring.absent)
    for peer in (*first, *ring.successors(target)):
        if peer not in seen:
            seen.add(peer)
            yield peer


def share_candidates(
    ring: Ring, file_id: bytes, seg: int, index: int, holders: tuple[PeerId, ...]
) -> Iterator[PeerId]:
    """Peers to try for one share, best first: its holder, then clockwise peers outside ``holders``.

    ``holders`` is ``segment_holders(ring, file_id, seg, n)`` (passed in so a
    caller walking all n shares computes it once).
    """
    target = share_position(file_id, seg, index)
    return _fallback_walk(ring, holders[index], target, holders)


def share_lookup(
    ring: Ring, file_id: bytes, seg: int, index: int, holders: tuple[PeerId, ...],
    current: tuple[PeerId, ...] | None = None,
) -> Iterator[PeerId]:
    """Peers that may hold a share, likeliest first: its holder, its holder on the present
    peers (``current`` = ``segment_holders(ring.present(), ...)``, given when peers are
    absent: where repair puts a share that left with its holder), then all peers
    clockwise. Absent peers are skipped. :func:`segment_walks` does a whole segment."""
    first = (holders[index], current[index]) if current else (holders[index],)
    return _lookup_walk(ring, share_position(file_id, seg, index), first)


def manifest_lookup(
    ring: Ring, file_id: bytes, copy: int, holders: tuple[PeerId, ...],
    current: tuple[PeerId, ...] | None = None,
) -> Iterator[PeerId]:
    """Peers that may hold manifest replica ``copy``, as :func:`share_lookup` for shares."""
    first = (holders[copy], current[copy]) if current else (holders[copy],)
    return _lookup_walk(ring, manifest_position(file_id, copy), first)


def manifest_walks(ring: Ring, file_id: bytes, copies: int, depth: int) -> list[list[PeerId]]:
    """For each manifest replica, the first ``depth`` peers of its :func:`manifest_lookup`
    (with the present peers' holders when some are absent). Empty for an empty ring."""
    if not ring.peers:
        return []
    holders = manifest_holders(ring, file_id, copies)
    present = ring.present()
    current = manifest_holders(present, file_id, copies) if ring.absent and present.peers else None
    return [list(islice(manifest_lookup(ring, file_id, j, holders, current), depth))
            for j in range(len(holders))]


def manifest_candidates(
    ring: Ring, file_id: bytes, copy: int, holders: tuple[PeerId, ...]
) -> Iterator[PeerId]:
    """Peers to try for manifest replica ``copy``: its holder, then clockwise others."""
    target = manifest_position(file_id, copy)
    return _fallback_walk(ring, holders[copy], target, holders)
