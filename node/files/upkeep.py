"""One upkeep pass of the storage service: gc, scrub, repair, audit, credits.

Run by :meth:`StorageService.upkeep` (every ``storage_interval`` seconds, or
``POST /api/storage/repair``) under its lock:

1. collect expired shares held here, and hash-check a slice of them (a
   rotted share is deleted, so the owner's repair replaces it);
2. for each looked-after file: drop it once its lease ran out unpinned,
   renew a pinned one's leases when half used, repair missing shares, locate
   every share, and prove one random segment's holders (fetch k, rebuild,
   audit every holder; a holder that fails is given the share again);
3. feed every holder found and every audit into the service's
   :class:`~poolai.node.files.audits.AuditLedger`, and report the holders
   that passed all their audits in an epoch now over to the credits service
   (``storage_audited``), once per holder and epoch; a node without the
   credits service drops the evidence;
4. tell the share store what each holder keeps of ours (:func:`holder_credits`):
   its credit, which grows what that peer may keep here (``storage.grants``).

Holders keep a share at most ``grants.MAX_LEASE_S`` past the last put or renewal,
so a file whose own lease is longer is renewed whenever less than half of that
is left (``grants.renewal_due``), pinned or not.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from poolai.mesh.errors import MeshError
from poolai.mesh.peer_ids import peer_id_text
from poolai.mesh.short_ids import short_hex, short_peer
from poolai.node.files.catalog import FileEntry
from poolai.storage import grants, raid, upkeep
from poolai.storage.errors import ShareNotFound
from poolai.storage.manifest import Manifest

if TYPE_CHECKING:
    from poolai.node.credits.receipts import AuditEvidence
    from poolai.node.files.audits import AuditLedger
    from poolai.node.files.catalog import FileRegistry
    from poolai.storage.placement import Ring
    from poolai.storage.raid import RaidConfig
    from poolai.storage.store import ShareStore
    from poolai.storage.transfers import ShareTransport

log = logging.getLogger(__name__)

SCRUB_PER_PASS = 256  # held shares hash-checked per upkeep pass


class StorageService(Protocol):
    """What an upkeep pass uses of the storage service (:mod:`poolai.node.files.service`):
    its parts (read) and the counters and cursor that a pass moves on (written)."""

    store: ShareStore | None
    files: FileRegistry
    ledger: AuditLedger
    credits: AuditSink | None
    health: dict[bytes, FileHealth]
    credit_claims: int
    scrub_cursor: bytes
    leases_asked: dict[bytes, int]  # file id -> the (capped) expiry its holders were last asked for
    lease_s: int
    raid_config: RaidConfig
    rng: random.Random
    clock: Callable[[], float]

    @property
    def transport(self) -> ShareTransport | None: ...  # read only: the service's is the libp2p one

    async def ring(self, *, fresh: bool = False) -> Ring: ...

    def offload_io(self, fn: Callable[..., Any], *args: Any) -> Awaitable[Any]: ...

    def offload_cpu(self, fn: Callable[..., Any], *args: Any) -> Awaitable[Any]: ...


class AuditSink(Protocol):
    """Where an owner's evidence of holders' passed audits goes to be paid (the credits
    service). Raises ValueError, MeshError or OSError when a claim is refused or not kept."""

    async def storage_audited(self, *, holder: str, epoch: int, bytes_held: int, shares: int,
                              audits: Sequence[AuditEvidence]) -> bytes: ...


@dataclasses.dataclass(frozen=True, slots=True)
class FileHealth:
    """Where every share of a file is and, when verified, which holders proved it."""

    file_id: bytes
    manifest: Manifest
    segments: tuple[upkeep.SegmentCheck, ...]
    verified: bool
    checked_at: float

    def counts(self) -> dict[str, int]:
        out = {"healthy": 0, "concentrated": 0, "degraded": 0, "lost": 0}
        for seg in self.segments:
            out[seg.health(self.manifest.k)] += 1
        return out

    def spread(self) -> int:
        """The fewest distinct peers any segment's shares sit on (n at best)."""
        return min((seg.spread for seg in self.segments), default=0)

    def most_on_one(self) -> int:
        """The most shares of one segment that one peer holds (1 at best)."""
        return max((seg.most_on_one for seg in self.segments), default=0)


@dataclasses.dataclass(frozen=True, slots=True)
class UpkeepReport:
    at: float
    gc_shares: int
    gc_bytes: int
    scrubbed: int
    scrub_failures: int
    files: int
    expired_files: int
    shares_missing: int
    shares_rebuilt: int
    segments_lost: int
    audited: int
    audit_failures: int
    healed: int
    credit_claims: int


async def upkeep_pass(svc: StorageService) -> UpkeepReport:
    """One pass over ``svc`` (the caller holds its upkeep lock)."""
    assert svc.store is not None and svc.transport is not None
    now = int(time.time())
    await svc.ring(fresh=True)  # walk the ring now: repair must see who has left and joined
    gc = await svc.offload_io(svc.store.gc, now)
    scrubbed, bad = await svc.offload_io(_scrub_slice, svc)
    n: collections.Counter[str] = collections.Counter()
    for entry in svc.files.entries():
        if not entry.pinned and entry.lease_expiry <= now:
            await svc.offload_io(svc.files.remove, entry.file_id)
            svc.health.pop(entry.file_id, None)
            svc.leases_asked.pop(entry.file_id, None)
            n["expired"] += 1
            continue
        if entry.pinned and entry.lease_expiry - now < svc.lease_s // 2:
            entry = dataclasses.replace(entry, lease_expiry=now + svc.lease_s)
            await svc.offload_io(svc.files.put, entry)
            await _renew(svc, entry, now)
        # after a restart: as if asked at the put (it was asked then at least)
        asked = svc.leases_asked.get(entry.file_id, entry.added + grants.MAX_LEASE_S)
        if grants.renewal_due(asked, entry.lease_expiry, now):
            await _renew(svc, entry, now)
        await _look_after(svc, entry, n)
    await svc.offload_io(svc.store.set_credits, holder_credits(svc.health.values(), svc.ledger.me))
    claims = await _claim_credits(svc)
    return UpkeepReport(time.time(), gc.shares, gc.bytes, scrubbed, bad, len(svc.files), n["expired"],
                        n["missing"], n["rebuilt"], n["lost"], n["audited"], n["audit_failed"],
                        n["healed"], claims)


async def _renew(svc: StorageService, entry: FileEntry, now: int) -> None:
    assert svc.transport is not None
    await upkeep.renew_file(svc.transport, await svc.ring(), entry.manifest, entry.lease_expiry,
                            manifest_copies=svc.raid_config.manifest_copies)
    svc.leases_asked[entry.file_id] = min(entry.lease_expiry, now + grants.MAX_LEASE_S)


def holder_credits(health: Iterable[FileHealth], me: bytes) -> dict[str, int]:
    """Bytes of this node's shares each holder was last found keeping (distinct shares),
    by peer id text; none for a holder that failed a proof, nor for this node."""
    held: dict[bytes, dict[bytes, int]] = {}
    failed: set[bytes] = set()
    for file in health:
        m = file.manifest
        for check in file.segments:
            size = _share_size(m, check.segment)
            for i, holder in enumerate(check.holders):
                if holder is None or holder == me:
                    continue
                if check.verified[i] is False:
                    failed.add(holder)
                else:
                    held.setdefault(holder, {})[m.share_id(check.segment, i)] = size
    out = {}
    for holder, shares in held.items():
        if holder not in failed:
            with contextlib.suppress(ValueError):  # not a peer id: nobody to credit
                out[peer_id_text(holder)] = sum(shares.values())
    return out


async def _look_after(svc: StorageService, entry: FileEntry, n: collections.Counter[str]) -> None:
    assert svc.transport is not None
    m, ring = entry.manifest, await svc.ring()
    repaired = await raid.repair_file(m, svc.transport, ring, lease_expiry=entry.lease_expiry,
                                      config=svc.raid_config, offload=svc.offload_cpu)
    n["missing"] += repaired.shares_missing
    n["rebuilt"] += repaired.shares_rebuilt
    n["lost"] += repaired.segments_lost
    if repaired.shares_rebuilt or repaired.segments_lost:
        log.info("repaired %s: %d missing, %d rebuilt, %d segments lost", short_hex(entry.file_id),
                 repaired.shares_missing, repaired.shares_rebuilt, repaired.segments_lost)
    found = await upkeep.locate(svc.transport, ring, m)
    at = svc.clock()
    for (seg, i), holder in found.items():
        svc.ledger.held(holder, m.share_id(seg, i), _share_size(m, seg), at)
    checks = [
        upkeep.SegmentCheck(seg, tuple(found.get((seg, i)) for i in range(m.n)), (None,) * m.n)
        for seg in range(m.segment_count)
    ]
    if checks:  # prove one random segment's holders; re-store what a holder failed to prove
        seg = svc.rng.randrange(m.segment_count)
        checks[seg] = check = await upkeep.verify_segment(
            svc.transport, m, seg, checks[seg].holders, rng=svc.rng,
            offload=svc.offload_cpu, heal_lease=entry.lease_expiry, clock=svc.clock,
        )
        for proof in check.proofs:
            svc.ledger.audited(proof)
        n["audited"] += sum(v is not None for v in check.verified)
        n["audit_failed"] += sum(v is False for v in check.verified)
        n["healed"] += len(check.healed)
    svc.health[entry.file_id] = FileHealth(entry.file_id, m, tuple(checks), False, time.time())


async def _claim_credits(svc: StorageService) -> int:
    """Report every holder that passed its audits in an epoch now over (once each)."""
    claims = svc.ledger.due(svc.clock())
    if not claims:
        return 0
    credits = svc.credits
    if credits is None:  # a node without the credits service: the evidence is dropped
        return 0
    made = 0
    for claim in claims:
        try:
            await credits.storage_audited(
                holder=peer_id_text(claim.holder), epoch=claim.epoch, bytes_held=claim.bytes_held,
                shares=claim.shares, audits=list(claim.audits),
            )
            made += 1
        except (ValueError, MeshError, OSError) as exc:  # refused (ReceiptRejected is a
            # MeshError) or not recorded: the credits service's trouble must not stop upkeep
            log.warning("storage credit for %s not claimed: %s", short_peer(claim.holder), exc)
    svc.credit_claims += made
    return made


def _scrub_slice(svc: StorageService) -> tuple[int, int]:
    """Hash-check the next SCRUB_PER_PASS held shares after the cursor (blocking)."""
    assert svc.store is not None
    ids = sorted(svc.store.share_ids())
    start = bisect.bisect_right(ids, svc.scrub_cursor)
    batch = ids[start : start + SCRUB_PER_PASS] or ids[:SCRUB_PER_PASS]
    bad = 0
    for share_id in batch:
        try:
            bad += not svc.store.check(share_id)  # hashes the whole share
        except ShareNotFound:
            pass
    svc.scrub_cursor = batch[-1] if batch else b""
    return len(batch), bad


def _share_size(m: Manifest, seg: int) -> int:
    return -(-m.segment_span(seg)[1] // m.k)
