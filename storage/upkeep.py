"""Upkeep of a stored file: where its shares are, whether holders really keep them, leases.

Transport-agnostic like :mod:`poolai.storage.raid`, and built on the same
placement walks:

* :func:`locate` asks ``has`` of each share's holder, then of the peers
  further along its lookup walk for the shares not found there.
* :func:`verify_segment` fetches k shares of a segment (hash-checked),
  rebuilds the other n - k, and challenges their holders with an audit
  (random nonce and range): a holder proves possession without shipping the
  share, and the verifier can check the proof because it has just rebuilt
  the bytes. A failed proof is healed by storing the right bytes there again.
* :func:`renew_file` extends the lease of every share along the walks.

Every call to a peer runs under ``timeout`` and through ``limiter``; peers'
faults count as "missing" or "failed", never raise.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from poolai.storage import erasure, integrity, placement
from poolai.storage.errors import PeerError
from poolai.storage.manifest import Manifest
from poolai.storage.placement import PeerId, Ring
from poolai.storage.transfers import MAX_HAS_IDS, ShareMeta, peer_tag

log = logging.getLogger(__name__)

Offload = Callable[..., Awaitable[Any]]
Key = tuple[int, int]  # (segment, share index)


@dataclasses.dataclass(frozen=True, slots=True)
class UpkeepConfig:
    timeout: float = 30.0  # one exchange with one peer
    max_requests: int = 16  # exchanges in flight
    depth_extra: int = 3  # lookup walk depth is n + depth_extra (as raid's get)
    audit_length: int = 64 << 10  # bytes of a share an audit covers (less for small shares)


@dataclasses.dataclass(frozen=True, slots=True)
class AuditProof:
    """One audit challenge and its outcome: what a verifier can show a third party.

    ``digest`` is the holder's answer (``b""`` if none); ``passed`` means it equals
    ``integrity.audit_digest(nonce, share[offset:offset+length])`` of the verified share.
    ``at`` is when the answer came (the ``clock`` passed to :func:`verify_segment`).
    """

    index: int
    holder: PeerId
    share_id: bytes
    share_size: int
    offset: int
    length: int
    nonce: bytes
    digest: bytes
    passed: bool
    at: float


@dataclasses.dataclass(frozen=True, slots=True)
class SegmentCheck:
    """One segment's shares: who holds each (None = nobody found) and what was proven.

    ``verified[i]`` is True when share i was fetched and hash-checked or its
    holder passed an audit, False when the holder failed one, None when not
    checked. ``healed`` lists indices re-stored after a failed proof.
    """

    segment: int
    holders: tuple[PeerId | None, ...]
    verified: tuple[bool | None, ...]
    healed: tuple[int, ...] = ()
    proofs: tuple[AuditProof, ...] = ()

    @property
    def live(self) -> int:
        return sum(h is not None for h in self.holders)

    @property
    def spread(self) -> int:
        """Distinct peers holding the shares found: n when every share has a peer of its own."""
        return len({h for h in self.holders if h is not None})

    @property
    def most_on_one(self) -> int:
        """The most shares any one peer holds: what the segment loses if that peer leaves."""
        counts = collections.Counter(h for h in self.holders if h is not None)
        return max(counts.values(), default=0)

    def health(self, k: int) -> str:
        """``healthy`` (all n found on n distinct peers, none failed), ``concentrated`` (all n
        found, but some peer holds several, as on a mesh of fewer than n peers: a node that
        put a file while alone holds all of it), ``degraded`` (>= k usable) or ``lost``."""
        usable = sum(
            h is not None and v is not False
            for h, v in zip(self.holders, self.verified, strict=True)
        )
        if usable < k:
            return "lost"
        if usable < len(self.holders):
            return "degraded"
        return "healthy" if self.spread == len(self.holders) else "concentrated"


def _walks(ring: Ring, file_id: bytes, m: Manifest, depth: int) -> dict[int, list[list[PeerId]]]:
    """Each segment's lookup walk of each share (see placement.segment_walks)."""
    present = ring.present()
    return {seg: placement.segment_walks(ring, file_id, seg, m.n, depth, present=present).walks
            for seg in range(m.segment_count)}


async def _ask_has(
    transport: Any, peer: PeerId, items: list[tuple[Key, bytes]], config: UpkeepConfig,
    limiter: trio.CapacityLimiter, found: dict[Key, PeerId],
) -> None:
    for at in range(0, len(items), MAX_HAS_IDS):
        batch = items[at : at + MAX_HAS_IDS]
        try:
            async with limiter:
                with trio.fail_after(config.timeout):
                    held = await transport.has(peer, [sid for _, sid in batch])
        except (PeerError, trio.TooSlowError) as exc:
            log.info("has on %s failed: %r", peer_tag(peer), exc)
            return
        for (key, _), yes in zip(batch, held, strict=True):
            if yes is True:
                found.setdefault(key, peer)


async def locate(
    transport: Any, ring: Ring, m: Manifest, *, config: UpkeepConfig = UpkeepConfig(),
    limiter: trio.CapacityLimiter | None = None,
) -> dict[Key, PeerId]:
    """Where each share of the file is: (segment, index) -> first peer on its walk that has it."""
    file_id = m.file_id()
    limiter = limiter or trio.CapacityLimiter(config.max_requests)
    depth = m.n + config.depth_extra
    walks = _walks(ring, file_id, m, depth)
    found: dict[Key, PeerId] = {}
    for rank in range(depth):
        asks: dict[PeerId, list[tuple[Key, bytes]]] = {}
        for seg, walk in walks.items():
            for i, peers in enumerate(walk):
                if (seg, i) not in found and rank < len(peers):
                    asks.setdefault(peers[rank], []).append(((seg, i), m.share_id(seg, i)))
        if not asks:
            break
        async with trio.open_nursery() as nursery:
            for peer, items in asks.items():
                nursery.start_soon(_ask_has, transport, peer, items, config, limiter, found)
    return found


async def verify_segment(
    transport: Any, m: Manifest, seg: int, holders: tuple[PeerId | None, ...], *,
    rng: random.Random, offload: Offload = trio.to_thread.run_sync,
    heal_lease: int | None = None, config: UpkeepConfig = UpkeepConfig(),
    limiter: trio.CapacityLimiter | None = None, clock: Callable[[], float] = time.time,
) -> SegmentCheck:
    """Prove every located share of one segment (see the module doc).

    Every holder is challenged, also those whose share was just fetched (an
    audit is what a holder can be credited for; a fetch proves nothing to a
    third party). With fewer than k shares fetchable nothing can be audited:
    the fetched ones are verified, the rest stay unchecked. With
    ``heal_lease`` a share whose holder fails its audit is stored there again
    with that lease. ``proofs`` lists every challenge and answer.
    """
    limiter = limiter or trio.CapacityLimiter(config.max_requests)
    verified: list[bool | None] = [None] * m.n
    shares: dict[int, bytes] = {}

    async def fetch(i: int, peer: PeerId) -> None:
        try:
            async with limiter:
                with trio.fail_after(config.timeout):
                    data = await transport.fetch(peer, m.share_id(seg, i))
        except (PeerError, trio.TooSlowError) as exc:
            log.info("fetch for audit from %s failed: %r", peer_tag(peer), exc)
            return
        ok = await offload(integrity.matches, m.share_id(seg, i), data)
        verified[i] = ok
        if ok:
            shares[i] = data

    order = [i for i in range(m.n) if holders[i] is not None]
    for start in range(0, len(order), m.k):  # k at a time, primaries first, until k are valid
        if len(shares) >= m.k:
            break
        async with trio.open_nursery() as nursery:
            for i in order[start : start + m.k]:
                nursery.start_soon(fetch, i, holders[i])
    if len(shares) < m.k:
        return SegmentCheck(seg, holders, tuple(verified))
    length = m.segment_span(seg)[1]
    data = await offload(erasure.decode_segment, shares, length, m.k, m.n)
    rebuilt = await offload(erasure.encode_segment, data, m.k, m.n)
    healed: list[int] = []
    proofs: list[AuditProof] = []

    async def audit(i: int, peer: PeerId) -> None:
        size = len(rebuilt[i])
        span = min(config.audit_length, size)
        offset = rng.randrange(size - span + 1)
        nonce = rng.randbytes(integrity.AUDIT_NONCE_SIZE)
        expected = integrity.audit_digest(nonce, rebuilt[i][offset : offset + span])
        try:
            async with limiter:
                with trio.fail_after(config.timeout):
                    proof = await transport.audit(peer, m.share_id(seg, i), offset, span, nonce)
        except (PeerError, trio.TooSlowError) as exc:
            proof = b""
            log.info("audit of %s failed: %r", peer_tag(peer), exc)
        passed = proof == expected
        proofs.append(AuditProof(i, peer, m.share_id(seg, i), size, offset, span, nonce,
                                 bytes(proof), passed, clock()))
        verified[i] = passed and verified[i] is not False
        if not passed and heal_lease is not None:
            log.warning("holder %s failed the audit of share (%d, %d); storing it again",
                        peer_tag(peer), seg, i)
            try:
                async with limiter:
                    with trio.fail_after(config.timeout):
                        meta = ShareMeta(m.file_id(), heal_lease)
                        await transport.store(peer, m.share_id(seg, i), rebuilt[i], meta)
                healed.append(i)
            except (PeerError, trio.TooSlowError) as exc:
                log.info("re-storing on %s failed: %r", peer_tag(peer), exc)

    async with trio.open_nursery() as nursery:
        for i in order:
            if verified[i] is not False:
                nursery.start_soon(audit, i, holders[i])
    proofs.sort(key=lambda p: p.index)
    return SegmentCheck(seg, holders, tuple(verified), tuple(sorted(healed)), tuple(proofs))


async def renew_file(
    transport: Any, ring: Ring, m: Manifest, lease_expiry: int, *, manifest_copies: int,
    config: UpkeepConfig = UpkeepConfig(), limiter: trio.CapacityLimiter | None = None,
) -> int:
    """Extend every share's (and manifest copy's) lease on every peer of its lookup walk.

    Shares can sit a few places along the walk (fallbacks, joins), so every
    peer on it is asked; a peer renews what it holds. Returns how many
    renewals holders confirmed.
    """
    file_id = m.file_id()
    limiter = limiter or trio.CapacityLimiter(config.max_requests)
    depth = m.n + config.depth_extra
    asks: dict[PeerId, set[bytes]] = {}
    for seg, walks in _walks(ring, file_id, m, depth).items():
        for i, walk in enumerate(walks):
            for peer in walk:
                asks.setdefault(peer, set()).add(m.share_id(seg, i))
    for walk in placement.manifest_walks(ring, file_id, manifest_copies, manifest_copies + 2):
        for peer in walk:
            asks.setdefault(peer, set()).add(file_id)
    renewed = 0

    async def renew(peer: PeerId, ids: list[bytes]) -> None:
        nonlocal renewed
        for at in range(0, len(ids), MAX_HAS_IDS):
            try:
                async with limiter:
                    with trio.fail_after(config.timeout):
                        done = await transport.renew(peer, ids[at : at + MAX_HAS_IDS], lease_expiry)
            except (PeerError, trio.TooSlowError) as exc:
                log.info("renew on %s failed: %r", peer_tag(peer), exc)
                return
            renewed += sum(1 for d in done if d is True)

    async with trio.open_nursery() as nursery:
        for peer, ids in asks.items():
            nursery.start_soon(renew, peer, sorted(ids))
    return renewed
