"""Burst RAID: put, get and repair erasure-coded files across many peers at once.

Transport-agnostic: every exchange with a peer goes through a
:class:`ShareTransport` (the node implements it over libp2p; tests route it
to in-process stores). Blocking work (file I/O, zfec, hashing) goes through
``offload`` (default ``trio.to_thread.run_sync``); the event loop only
moves bytes and keeps time, except for two jobs cheaper than a thread
hand-off: checking a fetched share of up to 2 MiB against its id, and
passing on a segment rebuilt from its primaries (slicing, no zfec).

* put: pass 1 (``build_manifest``) reads, encodes and hashes the file, so the
  file id, every share id and every holder are known before a byte leaves;
  ``has`` asks holders what they already keep (so a re-run resumes); pass 2
  re-reads the segments still needed, checks they encode to the same ids and
  sends their shares through one transfer limiter, with at most
  ``segments_in_flight`` segments in memory. A failing holder is replaced
  by the next peer clockwise. The manifest is stored last, replicated.
* get (in :mod:`poolai.storage.reading`; ``stream_file`` hands segments to a
  caller, ``get_file`` writes them to a file): per segment, ask k +
  ``extra_fetches`` holders at once (primaries first, parity shares of
  less busy holders instead of a busy holder's primaries), start one more fetch whenever
  ``hedge_delay`` passes without an answer, keep the first k shares whose
  hash matches the manifest, cancel the rest, decode, and hand segments
  over in order. A partial output is verified segment by segment and the
  download resumes after the last good one.
* repair: ask each segment's current holders (``has``), rebuild what is
  missing from any k valid shares and store it on its current holder.

Peers' faults (``PeerError``, timeouts, wrong bytes) are contained and
logged; a whole operation fails with ``NotEnoughShares``, ``PutFailed`` or
``FileChanged``, raised outside any nursery (never as an ExceptionGroup).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import trio

from poolai.storage import erasure, placement, segment_io
from poolai.storage import manifest as manifest_mod
from poolai.storage.errors import (
    FileChanged,
    ManifestError,
    PutFailed,
    StorageError,
)
from poolai.storage.manifest import Manifest
from poolai.storage.placement import PeerId, Ring
from poolai.storage.reading import (  # re-exported: the read side lives there
    Progress,
    ReadTally,
    Sink,
    fetch_manifest,
    get_file,
    stream_file,
)
from poolai.storage.transfers import (  # re-exported: the contract callers implement and pass
    DEFAULT_CONFIG,
    MAX_HAS_IDS,
    Offload,
    RaidConfig,
    ShareMeta,
    ShareTransport,
    Transfers,
    short,
)

__all__ = [
    "DEFAULT_CONFIG", "MAX_HAS_IDS", "Offload", "Progress", "PutResult", "RaidConfig", "ReadTally",
    "RepairResult", "Ring", "ShareMeta", "ShareTransport", "Sink", "build_manifest", "fetch_manifest",
    "get_file", "put_file", "repair_file", "stream_file",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PutResult:
    """Outcome of a successful put."""

    file_id: bytes
    manifest: Manifest
    shares_stored: int  # sent by this put
    shares_present: int  # already on their holders (resume)
    shares_failed: int  # not placed; every segment still has ``happy`` shares
    manifest_copies: int


@dataclass(frozen=True, slots=True)
class RepairResult:
    """Outcome of a repair pass."""

    file_id: bytes
    shares_missing: int
    shares_rebuilt: int
    shares_failed: int
    segments_lost: int  # fewer than k valid shares reachable: cannot be rebuilt now
    manifest_copies_added: int


@dataclass
class _Tally:
    stored: int = 0
    failed: int = 0
    missing: int = 0
    lost: int = 0
    done_bytes: int = 0
    short: list[int] = field(default_factory=list)
    failure: list[StorageError] = field(default_factory=list)


def _shares_by_holder(ring: Ring, file_id: bytes, m: Manifest) -> dict[PeerId, list]:
    asks: dict[PeerId, list[tuple[object, bytes]]] = {}
    for seg in range(m.segment_count):
        for i, peer in enumerate(placement.segment_holders(ring, file_id, seg, m.n)):
            asks.setdefault(peer, []).append(((seg, i), m.share_id(seg, i)))
    return asks


# ---------------------------------------------------------------------------- operations


async def build_manifest(
    path: str | os.PathLike[str],
    params: erasure.ErasureParams = erasure.DEFAULT_PARAMS,
    *,
    progress: Progress | None = None,
    offload: Offload = trio.to_thread.run_sync,
    window: int = 4,
) -> Manifest:
    """Pass 1 of a put: read, encode and hash a file into its manifest; sends nothing.

    Up to ``window`` segments are encoded at once (zfec and the hash release
    the GIL, so pass 1 uses as many cores as ``offload`` grants); each holds
    about segment size x (1 + n/k) bytes meanwhile.
    Raises OSError for the file, ManifestError if it is too large for ``params``.
    """
    fd = await offload(os.open, os.fspath(path), os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        count = erasure.segment_count(size, params.segment_size)
        if count * params.n > manifest_mod.MAX_SHARE_HASHES:
            raise ManifestError(f"{size} bytes need a larger segment size")
        hashes: list[bytes] = [b""] * count
        failure: list[BaseException] = []
        slots = trio.Semaphore(max(1, window))
        done = 0

        async def encode(seg: int, nursery: trio.Nursery) -> None:
            nonlocal done
            try:
                hashes[seg] = await offload(segment_io.segment_hashes, fd, size, params, seg)
            except Exception as exc:  # raised below, not as an ExceptionGroup
                failure.append(exc)
                nursery.cancel_scope.cancel()
                return
            finally:
                slots.release()
            done += erasure.segment_span(size, params.segment_size, seg)[1]
            if progress:
                progress(done, size)

        async with trio.open_nursery() as nursery:
            for seg in range(count):
                await slots.acquire()
                nursery.start_soon(encode, seg, nursery)
    finally:
        os.close(fd)
    if failure:
        raise failure[0]
    return manifest_mod.make_manifest(size, params, b"".join(hashes))


async def _replicate_manifest(
    session: Transfers, ring: Ring, file_id: bytes, blob: bytes, meta: ShareMeta
) -> tuple[int, int]:
    """Make sure the manifest copies exist; return (already there, added)."""
    holders = placement.manifest_holders(ring, file_id, session.config.manifest_copies)
    asks: dict[PeerId, list[tuple[object, bytes]]] = {}
    for j, peer in enumerate(holders):
        asks.setdefault(peer, []).append((j, file_id))
    held = await session.probe(asks)
    taken = set(holders)
    added = 0

    async def place(j: int) -> None:
        nonlocal added
        walk = placement.manifest_candidates(ring, file_id, j, holders)
        if await session.place(walk, taken, file_id, blob, meta):
            added += 1

    async with trio.open_nursery() as nursery:
        for j in range(len(holders)):
            if j not in held:
                nursery.start_soon(place, j)
    return len(held), added


async def _place_shares(
    session: Transfers, ring: Ring, m: Manifest, seg: int, shares: list[bytes],
    indices: list[int], meta: ShareMeta, tally: _Tally,
) -> int:
    """Store shares ``indices`` of segment ``seg`` at once, each on its holder or a fallback
    not taken by another share of the segment; tally each and return how many were stored."""
    file_id = meta.file_id
    holders = placement.segment_holders(ring, file_id, seg, m.n)
    taken = set(holders)
    placed = 0

    async def place(i: int) -> None:
        nonlocal placed
        walk = placement.share_candidates(ring, file_id, seg, i, holders)
        if await session.place(walk, taken, m.share_id(seg, i), shares[i], meta):
            placed += 1
            tally.stored += 1
        else:
            tally.failed += 1

    async with trio.open_nursery() as nursery:
        for i in indices:
            nursery.start_soon(place, i)
    return placed


async def put_file(
    path: str | os.PathLike[str],
    transport: ShareTransport,
    ring: Ring,
    *,
    lease_expiry: int,
    params: erasure.ErasureParams = erasure.DEFAULT_PARAMS,
    config: RaidConfig = DEFAULT_CONFIG,
    manifest: Manifest | None = None,
    progress: Progress | None = None,
    offload: Offload = trio.to_thread.run_sync,
) -> PutResult:
    """Erasure-code a file onto the ring; return its id and manifest.

    ``manifest`` (from ``build_manifest``) skips pass 1; ``params`` is then
    unused. Shares their holders already have are not sent again, so
    re-running a failed put resumes it. Raises PutFailed when a segment gets
    fewer than ``happy`` shares or the manifest fewer than ``manifest_happy``
    copies, FileChanged when the file no longer matches the manifest,
    OSError for the file.
    """
    if not ring.peers:
        raise PutFailed("no peers to store on")
    m = manifest or await build_manifest(path, params, offload=offload)
    file_id = m.file_id()
    session = Transfers(transport, config, offload)
    meta = ShareMeta(file_id, lease_expiry)
    happy = config.happy_for(m.k, m.n)
    held = await session.probe(_shares_by_holder(ring, file_id, m))
    tally = _Tally()
    window = trio.Semaphore(config.segments_in_flight)

    def segment_done(seg: int, placed: int) -> None:
        if placed < happy:
            tally.short.append(seg)
        tally.done_bytes += m.segment_span(seg)[1]
        if progress:
            progress(tally.done_bytes, m.size)

    async def put_segment(seg: int, shares: list[bytes], todo: list[int]) -> None:
        try:
            placed = await _place_shares(session, ring, m, seg, shares, todo, meta, tally)
            segment_done(seg, m.n - len(todo) + placed)
        finally:
            window.release()

    fd = await offload(os.open, os.fspath(path), os.O_RDONLY)
    try:
        if os.fstat(fd).st_size != m.size:
            raise FileChanged(f"file is no longer {m.size} bytes long")
        async with trio.open_nursery() as nursery:
            for seg in range(m.segment_count):
                todo = [i for i in range(m.n) if (seg, i) not in held]
                if not todo:
                    segment_done(seg, m.n)
                    continue
                await window.acquire()
                shares = await offload(segment_io.encode_checked, fd, m, seg)
                if shares is None:
                    window.release()
                    tally.failure.append(FileChanged(f"segment {seg} differs from the manifest"))
                    nursery.cancel_scope.cancel()
                    break
                nursery.start_soon(put_segment, seg, shares, todo)
    finally:
        os.close(fd)
    if tally.failure:
        raise tally.failure[0]
    if tally.short:
        first = tally.short[0]
        raise PutFailed(f"{len(tally.short)} segments got fewer than {happy} shares ({first}...)")
    present, added = await _replicate_manifest(session, ring, file_id, m.encode(), meta)
    if present + added < min(config.manifest_happy, len(ring)):
        raise PutFailed(f"manifest stored on {present + added} peers only")
    return PutResult(file_id, m, tally.stored, len(held), tally.failed, present + added)


async def repair_file(
    manifest: Manifest,
    transport: ShareTransport,
    ring: Ring,
    *,
    lease_expiry: int,
    config: RaidConfig = DEFAULT_CONFIG,
    progress: Progress | None = None,
    offload: Offload = trio.to_thread.run_sync,
) -> RepairResult:
    """Restore full redundancy of a file on the current ring; return what was done.

    Each share missing from its current holder is rebuilt from any k valid
    shares and stored there (or on the next peer clockwise); missing manifest
    copies are stored again. A segment with fewer than k valid shares is
    counted in ``segments_lost``, not raised: the others are still repaired.
    Raises PutFailed on an empty ring.
    """
    m = manifest
    if not ring.peers:
        raise PutFailed("no peers to repair onto")
    file_id = m.file_id()
    session = Transfers(transport, config, offload)
    meta = ShareMeta(file_id, lease_expiry)
    held = await session.probe(_shares_by_holder(ring, file_id, m))
    tally = _Tally()
    window = trio.Semaphore(config.segments_in_flight)

    def segment_done(seg: int) -> None:
        tally.done_bytes += m.segment_span(seg)[1]
        window.release()
        if progress:
            progress(tally.done_bytes, m.size)

    async def repair_segment(seg: int, missing: list[int]) -> None:
        try:
            present = frozenset(range(m.n)) - set(missing)
            shares = await session.fetch_segment(ring, file_id, m, seg, prefer=present)
            if shares is None:
                log.warning("segment %d of %s is below k shares", seg, short(file_id))
                tally.lost += 1
                tally.failed += len(missing)
                return
            rebuilt = await offload(segment_io.rebuild, m, seg, shares)
            await _place_shares(session, ring, m, seg, rebuilt, missing, meta, tally)
        finally:
            segment_done(seg)

    async with trio.open_nursery() as nursery:
        for seg in range(m.segment_count):
            missing = [i for i in range(m.n) if (seg, i) not in held]
            tally.missing += len(missing)
            await window.acquire()
            if missing:
                nursery.start_soon(repair_segment, seg, missing)
            else:
                segment_done(seg)
    _, added = await _replicate_manifest(session, ring, file_id, m.encode(), meta)
    return RepairResult(file_id, tally.missing, tally.stored, tally.failed, tally.lost, added)


