"""Burst RAID: put, get and repair erasure-coded files across many peers at once.

Transport-agnostic: every exchange with a peer goes through a
:class:`ShareTransport` (the node implements it over libp2p; tests route it
to in-process stores). Blocking work (file I/O, zfec, hashing) goes through
``offload`` (default ``trio.to_thread.run_sync``); the event loop only
moves bytes and keeps time.

* put: pass 1 (``build_manifest``) reads, encodes and hashes the file, so the
  file id, every share id and every holder are known before a byte leaves;
  ``has`` asks holders what they already keep (so a re-run resumes); pass 2
  re-reads the segments still needed, checks they encode to the same ids and
  sends their shares through one transfer limiter, with at most
  ``segments_in_flight`` segments in memory. A failing holder is replaced
  by the next peer clockwise. The manifest is stored last, replicated.
* get: per segment, ask k + ``extra_fetches`` holders at once, start one more
  fetch whenever ``hedge_delay`` passes without an answer, keep the first k
  shares whose hash matches the manifest, cancel the rest, decode, and write
  segments in order. A partial output is verified segment by segment and the
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
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Protocol

import trio

from poolai.storage import erasure, integrity, placement
from poolai.storage import manifest as manifest_mod
from poolai.storage.errors import (
    FileChanged,
    ManifestError,
    NotEnoughShares,
    PeerError,
    PutFailed,
    StorageError,
)
from poolai.storage.manifest import Manifest
from poolai.storage.placement import PeerId, Ring

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""``(bytes_done, bytes_total)`` of the file, called on the trio thread (for a progress bar)."""

Offload = Callable[..., Awaitable[Any]]
"""Runs blocking ``fn(*args)`` off the event loop: ``trio.to_thread.run_sync`` or a wrapper
bound to a node-wide CPU limiter."""

MAX_HAS_IDS = 1024  # ids per ``has`` request


@dataclass(frozen=True, slots=True)
class ShareMeta:
    """What a holder is told about a share it stores: its file, and how long to keep it."""

    file_id: bytes
    lease_expiry: int  # unix seconds; after this an unpinned share may be collected


class ShareTransport(Protocol):
    """Share exchanges with one remote peer; every peer fault is raised as ``PeerError``.

    Callers put their own deadline around each call; implementations add none.
    """

    async def store(self, peer: PeerId, share_id: bytes, data: bytes, meta: ShareMeta) -> None:
        """Ask ``peer`` to keep ``data`` under ``share_id`` until ``meta.lease_expiry``."""
        ...

    async def fetch(self, peer: PeerId, share_id: bytes) -> bytes:
        """The bytes ``peer`` holds under ``share_id``; unverified (callers check the hash)."""
        ...

    async def has(self, peer: PeerId, share_ids: Sequence[bytes]) -> Sequence[bool]:
        """For each of at most ``MAX_HAS_IDS`` ids, whether ``peer`` holds it."""
        ...

    async def audit(
        self, peer: PeerId, share_id: bytes, offset: int, length: int, nonce: bytes
    ) -> bytes:
        """``peer``'s ``integrity.audit_digest(nonce, share[offset:offset+length])``."""
        ...


@dataclass(frozen=True, slots=True)
class RaidConfig:
    """Concurrency, deadlines and redundancy goals of put/get/repair.

    Memory held is about ``segments_in_flight`` x segment size x n/k.
    ``happy``: shares of every segment a put must place (default k + (n-k)//2).
    Raises ValueError on nonsensical values.
    """

    max_transfers: int = 16  # share exchanges in flight, all peers together
    segments_in_flight: int = 4
    peer_timeout: float = 30.0  # one exchange with one peer
    hedge_delay: float = 2.0  # silence after which a get asks one more holder
    extra_fetches: int = 2  # holders asked beyond k at the start of a segment
    max_attempts: int = 3  # holders tried per share: the holder, then fallbacks
    happy: int | None = None
    manifest_copies: int = 5
    manifest_happy: int = 2

    def __post_init__(self) -> None:
        if min(self.max_transfers, self.segments_in_flight, self.max_attempts) < 1:
            raise ValueError("max_transfers, segments_in_flight, max_attempts must be >= 1")
        if self.peer_timeout <= 0 or self.hedge_delay <= 0 or self.extra_fetches < 0:
            raise ValueError("timeouts must be positive and extra_fetches >= 0")
        if not 1 <= self.manifest_happy <= self.manifest_copies:
            raise ValueError("need 1 <= manifest_happy <= manifest_copies")

    def happy_for(self, k: int, n: int) -> int:
        """Shares per segment a put must place for these parameters."""
        goal = self.happy if self.happy is not None else k + (n - k) // 2
        return max(k, min(n, goal))


DEFAULT_CONFIG = RaidConfig()


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


class _Session:
    """One operation's transfer limiter, deadlines and fault containment."""

    def __init__(self, transport: ShareTransport, config: RaidConfig, offload: Offload) -> None:
        self.transport = transport
        self.config = config
        self.offload = offload
        self.limiter = trio.CapacityLimiter(config.max_transfers)

    async def store(self, peer: PeerId, share_id: bytes, data: bytes, meta: ShareMeta) -> bool:
        try:
            async with self.limiter:
                with trio.fail_after(self.config.peer_timeout):
                    await self.transport.store(peer, share_id, data, meta)
        except (PeerError, trio.TooSlowError) as exc:
            log.info("store %s on %s failed: %r", _short(share_id), _short(peer), exc)
            return False
        return True

    async def place(
        self, candidates: Iterator[PeerId], taken: set[PeerId], share_id: bytes, data: bytes,
        meta: ShareMeta,
    ) -> bool:
        """Store on the first candidate that accepts; True if one did.

        The first candidate (the holder) is always tried; later ones are
        skipped when ``taken`` by another share of the segment.
        """
        tried = 0
        for peer in candidates:
            if tried >= self.config.max_attempts:
                break
            if tried and peer in taken:
                continue
            taken.add(peer)  # claim before awaiting so concurrent fallbacks pick other peers
            tried += 1
            if await self.store(peer, share_id, data, meta):
                return True
        return False

    async def probe(self, asks: dict[PeerId, list[tuple[object, bytes]]]) -> set[object]:
        """Ask each peer which of its (key, share id) pairs it holds; return the held keys."""
        held: set[object] = set()

        async def ask(peer: PeerId, batch: list[tuple[object, bytes]]) -> None:
            try:
                async with self.limiter:
                    with trio.fail_after(self.config.peer_timeout):
                        answer = await self.transport.has(peer, [sid for _, sid in batch])
            except (PeerError, trio.TooSlowError) as exc:
                log.info("has on %s failed: %r", _short(peer), exc)
                return
            if len(answer) != len(batch):
                log.warning("has on %s answered %d of %d", _short(peer), len(answer), len(batch))
                return
            held.update(key for (key, _), yes in zip(batch, answer, strict=True) if yes is True)

        async with trio.open_nursery() as nursery:
            for peer, items in asks.items():
                for at in range(0, len(items), MAX_HAS_IDS):
                    nursery.start_soon(ask, peer, items[at : at + MAX_HAS_IDS])
        return held

    async def gather(
        self, attempts: list[tuple[int, PeerId, bytes]], need: int, initial: int
    ) -> dict[int, bytes] | None:
        """Fetch until ``need`` distinct keys have a verified answer; None if attempts run out.

        ``attempts`` are (key, peer, expected share id), best first; ``initial``
        start at once, each failure starts the next, and so does each
        ``hedge_delay`` without an answer. Those still running are cancelled.
        """
        valid: dict[int, bytes] = {}
        running: dict[int, int] = {}
        pending = list(attempts)
        send, recv = trio.open_memory_channel[tuple[int, bytes | None]](max(1, len(attempts)))

        async def fetch(key: int, peer: PeerId, share_id: bytes) -> None:
            data: bytes | None = None
            try:
                async with self.limiter:
                    with trio.fail_after(self.config.peer_timeout):
                        data = await self.transport.fetch(peer, share_id)
            except (PeerError, trio.TooSlowError) as exc:
                log.info("fetch %s from %s failed: %r", _short(share_id), _short(peer), exc)
            if data is not None and not await self.offload(integrity.matches, share_id, data):
                log.warning("peer %s sent a corrupt %s", _short(peer), _short(share_id))
                data = None
            send.send_nowait((key, data))

        def launch(nursery: trio.Nursery) -> bool:
            useful = [a for a in pending if a[0] not in valid]
            if not useful:
                return False
            choice = next((a for a in useful if not running.get(a[0])), useful[0])
            pending.remove(choice)
            running[choice[0]] = running.get(choice[0], 0) + 1
            nursery.start_soon(fetch, *choice)
            return True

        async with trio.open_nursery() as nursery:
            for _ in range(initial):
                launch(nursery)
            while len(valid) < need:
                if not any(running.values()) and not launch(nursery):
                    break
                with trio.move_on_after(self.config.hedge_delay) as hedge:
                    key, data = await recv.receive()
                if hedge.cancelled_caught:
                    launch(nursery)  # the holders asked are slow: ask one more
                    continue
                running[key] -= 1
                if data is None:
                    launch(nursery)
                else:
                    valid.setdefault(key, data)
            nursery.cancel_scope.cancel()
        return valid if len(valid) >= need else None

    async def fetch_segment(
        self, ring: Ring, file_id: bytes, m: Manifest, seg: int,
        prefer: frozenset[int] = frozenset(),
    ) -> dict[int, bytes] | None:
        """k verified shares of a segment by index, or None; ``prefer`` indices are asked first."""
        if not ring.peers:
            return None
        holders = placement.segment_holders(ring, file_id, seg, m.n)
        depth = m.n + 2  # see placement: covers the successor rule's skips, a fallback, a join
        walks = [
            list(islice(placement.share_lookup(ring, file_id, seg, i, holders), depth))
            for i in range(m.n)
        ]
        order = sorted(range(m.n), key=lambda i: (i not in prefer, i))  # primaries decode fastest
        attempts = [
            (i, walks[i][rank], m.share_id(seg, i))
            for rank in range(depth)
            for i in order
            if rank < len(walks[i])
        ]
        return await self.gather(attempts, m.k, m.k + self.config.extra_fetches)


# ---------------------------------------------------------------------------- blocking helpers


def _read_exact(fd: int, length: int, offset: int) -> bytes:
    parts = []
    while length:
        chunk = os.pread(fd, length, offset)
        if not chunk:
            raise FileChanged("file is shorter than when it was measured")
        parts.append(chunk)
        length, offset = length - len(chunk), offset + len(chunk)
    return b"".join(parts)


def _encode_at(fd: int, size: int, params: erasure.ErasureParams, seg: int) -> list[bytes]:
    offset, length = erasure.segment_span(size, params.segment_size, seg)
    return erasure.encode_segment(_read_exact(fd, length, offset), params.k, params.n)


def _segment_hashes(fd: int, size: int, params: erasure.ErasureParams, seg: int) -> bytes:
    return b"".join(integrity.share_id(s) for s in _encode_at(fd, size, params, seg))


def _encode_checked(fd: int, m: Manifest, seg: int) -> list[bytes] | None:
    try:
        shares = _encode_at(fd, m.size, m.params, seg)
    except FileChanged:
        return None
    ok = all(integrity.share_id(s) == m.share_id(seg, i) for i, s in enumerate(shares))
    return shares if ok else None


def _rebuild(m: Manifest, seg: int, shares: dict[int, bytes]) -> list[bytes]:
    segment = erasure.decode_segment(shares, m.segment_span(seg)[1], m.k, m.n)
    rebuilt = erasure.encode_segment(segment, m.k, m.n)
    # Verified inputs always re-encode to the manifest's shares: a mismatch is our bug.
    if any(integrity.share_id(s) != m.share_id(seg, i) for i, s in enumerate(rebuilt)):
        raise RuntimeError(f"segment {seg} rebuilt to shares that differ from the manifest")
    return rebuilt


def _open_output(path: str | os.PathLike[str], m: Manifest, resume: bool) -> tuple[int, int]:
    """Open the output; return (fd, first segment to fetch) after checking partial content."""
    fd = os.open(os.fspath(path), os.O_RDWR | os.O_CREAT, 0o644)
    start = 0
    if resume:
        existing = os.fstat(fd).st_size
        for seg in range(m.segment_count):
            offset, length = m.segment_span(seg)
            if offset + length > existing:
                break
            # Shares 0..k-1 are the segment's own blocks: hashing them checks the segment.
            blocks = erasure.split_blocks(os.pread(fd, length, offset), m.k)
            if any(integrity.share_id(b) != m.share_id(seg, i) for i, b in enumerate(blocks)):
                break
            start = seg + 1
    os.ftruncate(fd, m.size if start == m.segment_count else start * m.segment_size)
    return fd, start


def _write_at(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _finish(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
) -> Manifest:
    """Pass 1 of a put: read, encode and hash a file into its manifest; sends nothing.

    Raises OSError for the file, ManifestError if it is too large for ``params``.
    """
    fd = await offload(os.open, os.fspath(path), os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        count = erasure.segment_count(size, params.segment_size)
        if count * params.n > manifest_mod.MAX_SHARE_HASHES:
            raise ManifestError(f"{size} bytes need a larger segment size")
        hashes = bytearray()
        for seg in range(count):
            hashes += await offload(_segment_hashes, fd, size, params, seg)
            if progress:
                progress(min(size, (seg + 1) * params.segment_size), size)
    finally:
        os.close(fd)
    return manifest_mod.make_manifest(size, params, bytes(hashes))


async def _replicate_manifest(
    session: _Session, ring: Ring, file_id: bytes, blob: bytes, meta: ShareMeta
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
    session = _Session(transport, config, offload)
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
            holders = placement.segment_holders(ring, file_id, seg, m.n)
            taken = set(holders)
            placed = m.n - len(todo)

            async def place(i: int) -> None:
                nonlocal placed
                walk = placement.share_candidates(ring, file_id, seg, i, holders)
                if await session.place(walk, taken, m.share_id(seg, i), shares[i], meta):
                    placed += 1
                    tally.stored += 1
                else:
                    tally.failed += 1

            async with trio.open_nursery() as nursery:
                for i in todo:
                    nursery.start_soon(place, i)
            segment_done(seg, placed)
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
                shares = await offload(_encode_checked, fd, m, seg)
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


async def fetch_manifest(
    file_id: bytes,
    transport: ShareTransport,
    ring: Ring,
    *,
    config: RaidConfig = DEFAULT_CONFIG,
    offload: Offload = trio.to_thread.run_sync,
) -> Manifest:
    """Fetch a file's manifest from its replica holders and verify it against ``file_id``.

    Raises NotEnoughShares if no holder returns bytes hashing to ``file_id``,
    ManifestError if those bytes are not a valid manifest.
    """
    session = _Session(transport, config, offload)
    attempts: list[tuple[int, PeerId, bytes]] = []
    if ring.peers:
        holders = placement.manifest_holders(ring, file_id, config.manifest_copies)
        depth = len(holders) + 2
        walks = [
            list(islice(placement.manifest_lookup(ring, file_id, j, holders), depth))
            for j in range(len(holders))
        ]
        seen: set[PeerId] = set()
        for rank in range(depth):
            for j, walk in enumerate(walks):
                if rank < len(walk) and walk[rank] not in seen:
                    seen.add(walk[rank])
                    attempts.append((j, walk[rank], file_id))
    got = await session.gather(attempts, 1, 1 + config.extra_fetches)
    if not got:
        raise NotEnoughShares(f"no holder returned manifest {_short(file_id)}")
    return manifest_mod.decode(next(iter(got.values())))


async def get_file(
    file_id: bytes,
    out_path: str | os.PathLike[str],
    transport: ShareTransport,
    ring: Ring,
    *,
    config: RaidConfig = DEFAULT_CONFIG,
    manifest: Manifest | None = None,
    resume: bool = True,
    progress: Progress | None = None,
    offload: Offload = trio.to_thread.run_sync,
) -> Manifest:
    """Download a file into ``out_path``; return its manifest.

    With ``resume`` an existing ``out_path`` is verified segment by segment
    and only the rest is fetched. Every share is hash-checked before use, so
    the output never holds unverified bytes. Raises NotEnoughShares when a
    segment has fewer than k valid shares reachable (the verified prefix
    stays for a later resume), ValueError if ``manifest`` is not
    ``file_id``'s, OSError for the output.
    """
    m = manifest or await fetch_manifest(file_id, transport, ring, config=config, offload=offload)
    if m.file_id() != file_id:
        raise ValueError("manifest does not belong to file_id")
    session = _Session(transport, config, offload)
    fd, start = await offload(_open_output, out_path, m, resume)
    tally = _Tally(done_bytes=min(m.size, start * m.segment_size))
    window = trio.Semaphore(config.segments_in_flight)
    ready = [trio.Event() for _ in range(start, m.segment_count)]
    decoded: dict[int, bytes] = {}

    async def fetch(seg: int, nursery: trio.Nursery) -> None:
        shares = await session.fetch_segment(ring, file_id, m, seg)
        if shares is None:
            tally.failure.append(NotEnoughShares(f"segment {seg}: fewer than {m.k} valid shares"))
            nursery.cancel_scope.cancel()
            return
        length = m.segment_span(seg)[1]
        decoded[seg] = await offload(erasure.decode_segment, shares, length, m.k, m.n)
        ready[seg - start].set()

    async def launch(nursery: trio.Nursery) -> None:
        for seg in range(start, m.segment_count):
            await window.acquire()
            nursery.start_soon(fetch, seg, nursery)

    try:
        if progress:
            progress(tally.done_bytes, m.size)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(launch, nursery)
            for seg in range(start, m.segment_count):
                await ready[seg - start].wait()
                data = decoded.pop(seg)
                await offload(_write_at, fd, data, seg * m.segment_size)
                window.release()
                tally.done_bytes += len(data)
                if progress:
                    progress(tally.done_bytes, m.size)
    except BaseException:
        os.close(fd)
        raise
    if tally.failure:
        os.close(fd)
        raise tally.failure[0]
    await offload(_finish, fd)
    return m


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
    session = _Session(transport, config, offload)
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
                log.warning("segment %d of %s is below k shares", seg, _short(file_id))
                tally.lost += 1
                tally.failed += len(missing)
                return
            rebuilt = await offload(_rebuild, m, seg, shares)
            holders = placement.segment_holders(ring, file_id, seg, m.n)
            taken = set(holders)

            async def place(i: int) -> None:
                walk = placement.share_candidates(ring, file_id, seg, i, holders)
                if await session.place(walk, taken, m.share_id(seg, i), rebuilt[i], meta):
                    tally.stored += 1
                else:
                    tally.failed += 1

            async with trio.open_nursery() as nursery:
                for i in missing:
                    nursery.start_soon(place, i)
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


def _short(ident: bytes) -> str:
    return ident.hex()[:12]
