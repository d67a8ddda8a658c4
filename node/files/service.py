"""The storage service: this node's share store, the share protocol, and burst-RAID put/get.

The node keeps other peers' shares in an LMDB :class:`ShareStore` under
``<data_dir>/shares`` (bounded by ``storage_quota``) and serves them on
``/poolai/store/2.0.0``. For its owner it puts files into the mesh, gets
them back, and looks after the files it put or pinned (``<data_dir>/storage/files``).

**Ring view.** Placement needs the same ring on every node: it comes from
the overlay's membership, completed by a walk along successor lists, with the
connected peers filling in while the overlay converges
(:mod:`poolai.node.files.ring`). Holders that are not connected are dialled
at the addresses the peer book and the overlay learned. Peers are named by
their raw peer id bytes (the multihash), which placement hashes.

**Leases.** A put stores shares under a short *pending* lease and, once it
has succeeded, renews them to ``storage_lease``: the shares of a put that
failed half-way expire within a day (sooner if the lease is shorter). A
pinned file's lease is renewed by every upkeep pass; an unpinned one expires.

**Upkeep** (every ``storage_interval`` seconds, or ``POST /api/storage/repair``;
:mod:`poolai.node.files.upkeep`): collect expired shares, hash-check a
slice of the held shares, repair and spot-audit every looked-after file, and
report the holders that passed all their audits in an epoch (unix hour) now
over to the credits service (``storage_audited``), once per holder and epoch
(:mod:`poolai.node.files.audits`).

**Resume.** A put that failed is resumed by putting the same file again
(holders are asked what they already have). :meth:`StorageService.get`
keeps the verified prefix of an existing output (``resume``) or starts at a
byte offset (``from_offset``, what an HTTP ``Range`` request asks for).

**Memory.** Share-sized buffers are returned to the system when freed and
the store's map pages are dropped after each read (:mod:`poolai.storage.memory`),
so a get's resident memory stays flat whatever the file size.

**Quota.** :meth:`StorageService.set_quota` is saved in ``storage/quota.json``
with the configured quota it overrode; it holds across restarts until the
configured ``storage_quota`` itself changes.

**Grants.** What each peer may keep here is bounded by what this node grants it
(:mod:`poolai.storage.grants`): a newcomer allowance plus twice what that peer
keeps of this node's files, as the last upkeep pass found (``set_credits``);
leases are capped at 31 days and renewed by their owners. A holder's refusal
(``grant``) counts like a full quota: the put places the share elsewhere.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import random
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from poolai.node.files import upkeep as storage_upkeep
from poolai.node.files.audits import AuditLedger
from poolai.node.files.catalog import (
    AUDITS_FILE,
    QUOTA_FILE,
    FileEntry,
    FileRegistry,
    load_audit_ledger,
    load_quota,
    save_audit_ledger,
    save_quota,
)
from poolai.node.files.ring import RingSource
from poolai.node.files.upkeep import FileHealth, UpkeepReport
from poolai.storage import grants, integrity, memory, raid, upkeep
from poolai.storage.erasure import ErasureParams
from poolai.storage.errors import (
    NotEnoughShares,
    PutFailed,
    ShareNotFound,
    StorageError,
)
from poolai.storage.manifest import Manifest
from poolai.storage.placement import PeerId, Ring
from poolai.storage.protocol import PROTOCOL, ShareRefused
from poolai.storage.raid import RaidConfig, ShareMeta
from poolai.storage.server import ServerConfig, ShareServer
from poolai.storage.store import GrantStatistics, ShareStore, StoreStatistics
from poolai.storage.transport import Libp2pShareTransport

if TYPE_CHECKING:
    from poolai.mesh.overlay_net import OverlayNode
    from poolai.node.context import NodeContext
    from poolai.node.files.upkeep import AuditSink

log = logging.getLogger(__name__)

PENDING_LEASE = 86400  # seconds a put's shares live until the put has succeeded
MAP_CEILING = 1 << 40  # quota the share store's LMDB map leaves room for without a restart
# Manifests are tiny: keep many copies. No extra fetch per segment: an extra share arrives
# alongside the k it races (the transfers run in parallel), so it costs 1/k more bytes
# received and decrypted, and the abandoned stream's unread bytes stay buffered in yamux for
# a minute (docs/storage.md, "Memory"). A failed fetch starts the next holder at once and
# a holder silent for hedge_delay is hedged.
RAID = RaidConfig(manifest_copies=10, manifest_happy=2, extra_fetches=0, hedge_delay=1.0)
PhaseProgress = Callable[[str, int, int], None]
GRANTS = grants.GrantPolicy()
TOP_ACCOUNTS = 10  # peers keeping the most here, shown in the status


class QuotaRefused(PutFailed):
    """A put failed because holders refused shares: their storage quotas are full, or this
    node's grants on them are used up."""


@dataclasses.dataclass(frozen=True, slots=True)
class PutOutcome:
    file_id: bytes
    manifest: Manifest
    shares_stored: int
    shares_present: int
    shares_failed: int
    manifest_copies: int
    renewed: int
    pinned: bool
    lease_expiry: int
    spread: int  # distinct peers that took this put's shares (n at best; see FileHealth.spread)


class _CountingTransport:
    """Passes calls through and counts refusals by reason (to explain a failed put)."""

    def __init__(self, inner: Libp2pShareTransport) -> None:
        self.inner = inner
        self.refusals: collections.Counter[str] = collections.Counter()
        self.holders: set[PeerId] = set()  # peers that took a share

    async def store(self, peer: PeerId, share_id: bytes, data: bytes, meta: ShareMeta) -> None:
        try:
            await self.inner.store(peer, share_id, data, meta)
        except ShareRefused as exc:
            self.refusals[exc.reason] += 1
            raise
        self.holders.add(peer)

    async def fetch(self, peer: PeerId, share_id: bytes) -> bytes:
        return await self.inner.fetch(peer, share_id)

    async def has(self, peer: PeerId, share_ids: Sequence[bytes]) -> Sequence[bool]:
        return await self.inner.has(peer, share_ids)

    def report_corrupt(self, peer: PeerId, share_id: bytes) -> None:
        self.inner.report_corrupt(peer, share_id)

    async def audit(self, peer: PeerId, share_id: bytes, offset: int, length: int, nonce: bytes) -> bytes:
        return await self.inner.audit(peer, share_id, offset, length, nonce)


class StorageService:
    """The node service called ``storage`` (see the module doc)."""

    name = "storage"

    def __init__(self, ctx: NodeContext, *, overlay: OverlayNode | None = None,
                 credits: AuditSink | None = None,
                 relay_only: Callable[[str], bool] | None = None) -> None:
        """``overlay`` gives the ring shares are placed on (without it: this node's
        connections); ``credits`` is paid for holders' passed audits (without it the
        evidence is dropped); ``relay_only`` names the peers reachable only through a
        relay, which get no shares from this node (without it: none is)."""
        self.ctx = ctx
        self.host = ctx.host
        self.credits = credits
        cfg = ctx.config
        self.quota = cfg.storage_quota
        self.lease_s = cfg.storage_lease
        self.interval = cfg.storage_interval
        self.root = ctx.data_dir / "storage"
        self.store: ShareStore | None = None
        self.server: ShareServer | None = None
        self.transport: Libp2pShareTransport | None = None
        self.files = FileRegistry(self.root / "files")
        self.health: dict[bytes, FileHealth] = {}
        self.last_upkeep: UpkeepReport | None = None
        self.recent_errors: collections.deque[dict[str, Any]] = collections.deque(maxlen=20)
        self.recent_ops: collections.deque[dict[str, Any]] = collections.deque(maxlen=20)
        self._stats: StoreStatistics | None = None
        self._grants: GrantStatistics | None = None
        self.leases_asked: dict[bytes, int] = {}  # file id -> capped expiry holders were asked for
        self._cpu_limiter = trio.CapacityLimiter(max(1, os.cpu_count() or 1))
        self._io_limiter = trio.CapacityLimiter(8)
        self._upkeep_lock = trio.Lock()
        self.scrub_cursor = b""
        self.rng = random.Random()
        self._nursery: trio.Nursery | None = None
        self.clock: Callable[[], float] = time.time  # stamps audits for credits
        # departed peers are kept in the reading ring for two upkeep passes
        self.rings = RingSource(self.host, overlay, ctx.book,
                                departed_s=2 * self.interval, relay_only=relay_only)
        self.ledger = AuditLedger(self.rings.me)
        self.raid_config = RAID
        self.credit_claims = 0
        self.gets_running = 0

    # ------------------------------------------------------------------ lifecycle
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        memory.tune_allocator()  # share-sized buffers reuse warm heap memory; the heap stays bounded
        for scratch in ("uploads", "downloads"):  # leftovers of a crash (downloads: older versions)
            await self.offload_io(shutil.rmtree, self.root / scratch, True)
        await self.offload_io(lambda p: p.mkdir(parents=True, exist_ok=True), self.root / "uploads")
        loaded = await self.offload_io(self.files.load)
        self.ledger = await self.offload_io(load_audit_ledger, self.root / AUDITS_FILE, self.rings.me)
        self.quota = await self.offload_io(load_quota, self.root / QUOTA_FILE, self.quota,
                                           max(self.quota, MAP_CEILING))
        # The LMDB map is sized for MAP_CEILING (address space, not disk) so that set_quota
        # can raise the quota later without reopening; the quota itself is the attribute.
        self.store = await self.offload_io(
            lambda: ShareStore(self.ctx.data_dir / "shares", quota_bytes=max(self.quota, MAP_CEILING),
                               grant_policy=GRANTS)
        )
        self.store.quota_bytes = self.quota
        try:
            self.server = ShareServer(self.store, config=ServerConfig(max_lease_s=GRANTS.max_lease_s),
                                      offload=self.offload_io)
            self.transport = Libp2pShareTransport(self.host, local=self.server,
                                                  addresses=self.rings.addresses,
                                                  dial_failed=self.rings.mark_unreachable)
            server = self.server
            self.host.set_handler(PROTOCOL, lambda stream: server.handle(stream, stream.peer_id))
            await self.refresh_statistics()
            log.info("storage: %d shares held, %d files looked after", self._stats.shares, loaded)
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self.transport.run)
                nursery.start_soon(self._upkeep_loop)
                nursery.start_soon(self._statistics_loop)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            with trio.CancelScope(shield=True):
                await self.offload_io(self.store.close)

    def spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` in this service's nursery (API jobs that outlive one await)."""
        assert self._nursery is not None, "storage service is not running"
        self._nursery.start_soon(fn, *args)

    async def offload_io(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._io_limiter)

    async def offload_cpu(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._cpu_limiter)

    def scratch_path(self, kind: str) -> Path:
        """A fresh file name under ``storage/<kind>`` (``uploads``: bodies of API puts)."""
        return self.root / kind / f"{secrets.token_hex(8)}.part"

    # ------------------------------------------------------------------ the ring
    def ring_view(self) -> Ring:
        """The ring as known now, without asking anybody (see the module doc)."""
        return self.rings.view()

    async def ring(self, *, fresh: bool = False) -> Ring:
        """The ring placement uses: overlay members completed by a ring walk (cached for a
        few seconds unless ``fresh``, which also dials members not connected and leaves out
        those that do not answer)."""
        return await self.rings.refresh(force=fresh, verify=fresh)

    async def reading_ring(self) -> Ring:
        """The ring reads use: :meth:`ring` plus the peers that left it lately, marked absent
        (where shares were put; see ``RingSource.reading_view``)."""
        await self.rings.refresh()
        return self.rings.reading_view()

    # ------------------------------------------------------------------ operations
    async def put(
        self, path: Path, *, params: ErasureParams, pin: bool = False,
        progress: PhaseProgress | None = None, name: str = "",
    ) -> PutOutcome:
        """Put a local file into the mesh; raises QuotaRefused, PutFailed, OSError. ``name``
        says what it is on the status page (a file put again keeps the name it had)."""
        assert self.transport is not None
        now = int(time.time())
        lease = now + self.lease_s
        clock = [time.perf_counter()]
        m = await raid.build_manifest(path, params, progress=_phase(progress, "hash"),
                                      offload=self.offload_cpu)
        clock.append(time.perf_counter())
        file_id = m.file_id()
        counting = _CountingTransport(self.transport)
        ring = await self.ring()
        try:
            try:
                result = await raid.put_file(
                    path, counting, ring, lease_expiry=now + min(self.lease_s, PENDING_LEASE),
                    manifest=m, config=RAID, progress=_phase(progress, "store"),
                    offload=self.offload_cpu)
            except PutFailed:
                # A holder that left is still an overlay member until the overlay notices (a
                # few probe periods): in a small ring its shares had nowhere else to go. Once
                # more on the ring of members that answer now; shares already placed stay.
                fresh = await self.ring(fresh=True)
                if fresh.peers == ring.peers or counting.refusals["quota"] + counting.refusals["grant"]:
                    raise
                ring = fresh
                result = await raid.put_file(
                    path, counting, ring, lease_expiry=now + min(self.lease_s, PENDING_LEASE),
                    manifest=m, config=RAID, progress=_phase(progress, "store"),
                    offload=self.offload_cpu)
        except PutFailed as exc:
            self._record("put", file_id, exc)
            await self.offload_io(memory.trim)
            full = counting.refusals["quota"] + counting.refusals["grant"]
            if full:
                raise QuotaRefused(
                    f"{exc}; holders refused {full} shares: their storage quota is full "
                    "or what they grant this node is used up"
                ) from None
            raise
        clock.append(time.perf_counter())
        known = self.files.get(file_id)
        if known is not None:
            pin, lease = pin or known.pinned, max(lease, known.lease_expiry)
            name = known.name or name
        await self.offload_io(self.files.put, FileEntry(file_id, m, pin, lease, now, name))
        if progress:
            progress("renew", 0, 1)
        renewed = await upkeep.renew_file(self.transport, ring, m, lease,
                                          manifest_copies=RAID.manifest_copies)
        self.leases_asked[file_id] = min(lease, now + GRANTS.max_lease_s)
        if pin:
            await self.offload_io(self._pin_local, m, True)
        clock.append(time.perf_counter())
        await self.offload_io(memory.trim)
        self._timed("put", file_id, m.size, hash=clock[1] - clock[0], store=clock[2] - clock[1],
                    renew=clock[3] - clock[2])
        await self.refresh_statistics()
        return PutOutcome(file_id, m, result.shares_stored, result.shares_present, result.shares_failed,
                          result.manifest_copies, renewed, pin, lease, len(counting.holders))

    async def open_manifest(self, file_id: bytes) -> Manifest:
        """The manifest of ``file_id``: ours if we look after it, else fetched and verified.

        Raises NotEnoughShares when no holder has it, ManifestError when it is malformed.
        """
        assert self.transport is not None
        entry = self.files.get(file_id)
        if entry is not None:
            return entry.manifest
        return await raid.fetch_manifest(file_id, self.transport, await self.reading_ring(), config=RAID,
                                         offload=self.offload_cpu)

    async def get(
        self, file_id: bytes, out_path: Path, *, manifest: Manifest | None = None,
        progress: PhaseProgress | None = None, resume: bool = False, from_offset: int = 0,
    ) -> Manifest:
        """Fetch a file into ``out_path`` (verified); raises NotEnoughShares, ManifestError, OSError.

        ``resume``: keep the verified prefix of an existing ``out_path`` and fetch the rest.
        ``from_offset``: fetch only the segments from the one holding that byte on (the
        bytes before it in ``out_path`` are left unwritten: a reader resumes there).
        """
        async def run(m: Manifest, ring: Ring, first: int, tally: raid.ReadTally) -> None:
            await raid.get_file(file_id, out_path, self.transport, ring, config=RAID, manifest=m,
                                resume=resume, progress=_phase(progress, "get"),
                                offload=self.offload_cpu, first_segment=first, tally=tally)

        return await self._reading(file_id, manifest, from_offset, run)

    async def stream(
        self, file_id: bytes, sink: raid.Sink, *, manifest: Manifest | None = None,
        progress: PhaseProgress | None = None, from_offset: int = 0,
    ) -> Manifest:
        """Hand a file's verified segments to ``sink`` in order, from the one holding byte
        ``from_offset`` on, without touching the disk; raises NotEnoughShares, ManifestError
        and what ``sink`` raises."""
        async def run(m: Manifest, ring: Ring, first: int, tally: raid.ReadTally) -> None:
            await raid.stream_file(file_id, self.transport, ring, sink, config=RAID, manifest=m,
                                   progress=_phase(progress, "get"), offload=self.offload_cpu,
                                   first_segment=first, tally=tally)

        return await self._reading(file_id, manifest, from_offset, run)

    async def _reading(
        self, file_id: bytes, manifest: Manifest | None, from_offset: int,
        run: Callable[[Manifest, Ring, int, raid.ReadTally], Awaitable[None]],
    ) -> Manifest:
        """Run one get (timed and recorded as the op ``get``, with how many of its segments
        zfec rebuilt) from the segment holding ``from_offset``."""
        assert self.transport is not None
        m = manifest or await self.open_manifest(file_id)
        start = time.perf_counter()
        first = min(from_offset // m.segment_size, m.segment_count) if m.segment_count else 0
        self.gets_running += 1
        tally = raid.ReadTally()
        try:
            await run(m, await self.reading_ring(), first, tally)
        except NotEnoughShares as exc:
            self._record("get", file_id, exc)
            raise
        finally:
            self.gets_running -= 1
            with trio.CancelScope(shield=True):
                await self.offload_io(memory.trim)
        self._timed("get", file_id, max(0, m.size - first * m.segment_size), get=time.perf_counter() - start,
                    counts={"segments": tally.segments, "segments_decoded": tally.decoded})
        return m

    async def stat(self, file_id: bytes, *, verify: bool = False) -> FileHealth:
        """Each segment's holders (and with ``verify``, proofs from every holder)."""
        assert self.transport is not None
        m = await self.open_manifest(file_id)
        # The present peers' ring, not the reading ring: after a repair a share is found at
        # its current holder first, not at a peer that also kept another share of the segment.
        ring = await self.ring()
        limiter = trio.CapacityLimiter(RAID.max_transfers)
        found = await upkeep.locate(self.transport, ring, m, limiter=limiter)
        checks = [
            upkeep.SegmentCheck(seg, tuple(found.get((seg, i)) for i in range(m.n)), (None,) * m.n)
            for seg in range(m.segment_count)
        ]
        if verify:
            window = trio.CapacityLimiter(RAID.segments_in_flight)

            async def check(seg: int) -> None:
                async with window:
                    checks[seg] = await upkeep.verify_segment(
                        self.transport, m, seg, checks[seg].holders, rng=self.rng,
                        offload=self.offload_cpu, limiter=limiter,
                    )

            async with trio.open_nursery() as nursery:
                for seg in range(m.segment_count):
                    nursery.start_soon(check, seg)
        health = FileHealth(file_id, m, tuple(checks), verify, time.time())
        if self.files.get(file_id) is not None:
            self.health[file_id] = health
        return health

    async def pin(self, file_id: bytes) -> FileEntry:
        """Keep a file: look after it, renew its leases, pin the shares held here."""
        assert self.transport is not None
        now = int(time.time())
        entry = self.files.get(file_id)
        m = entry.manifest if entry else await self.open_manifest(file_id)
        lease = max(entry.lease_expiry if entry else 0, now + self.lease_s)
        entry = FileEntry(file_id, m, True, lease, entry.added if entry else now,
                          entry.name if entry else "")
        await self.offload_io(self.files.put, entry)
        await upkeep.renew_file(self.transport, await self.reading_ring(), m, lease,
                                manifest_copies=RAID.manifest_copies)
        self.leases_asked[file_id] = min(lease, now + GRANTS.max_lease_s)
        await self.offload_io(self._pin_local, m, True)
        return entry

    async def unpin(self, file_id: bytes) -> FileEntry:
        """Stop renewing a file's leases; it expires at its current lease. KeyError if not ours."""
        entry = self.files.get(file_id)
        if entry is None:
            raise KeyError(file_id)
        entry = dataclasses.replace(entry, pinned=False)
        await self.offload_io(self.files.put, entry)
        await self.offload_io(self._pin_local, entry.manifest, False)
        return entry

    async def set_quota(self, quota_bytes: int) -> None:
        """Change the share quota now and across restarts (see the module doc).

        Lowering it deletes nothing: new shares are refused until use falls below it.
        Raises ValueError outside 1 MiB .. the store's map ceiling, OSError if it cannot
        be saved (the quota is then unchanged).
        """
        assert self.store is not None
        ceiling = max(self.ctx.config.storage_quota, MAP_CEILING)
        if not 1 << 20 <= quota_bytes <= ceiling:
            raise ValueError(f"quota must be between 1 MiB and {ceiling} bytes without a restart")
        await self.offload_io(save_quota, self.root / QUOTA_FILE, quota_bytes,
                              self.ctx.config.storage_quota)
        self.quota = self.store.quota_bytes = quota_bytes
        log.info("storage quota set to %d bytes", quota_bytes)
        await self.refresh_statistics()

    def _pin_local(self, m: Manifest, pinned: bool) -> None:
        assert self.store is not None
        ids = [m.file_id()] + [m.share_id(s, i) for s in range(m.segment_count) for i in range(m.n)]
        for share_id in ids:
            try:
                (self.store.pin if pinned else self.store.unpin)(share_id)
            except ShareNotFound:
                pass

    # ------------------------------------------------------------------ upkeep
    async def upkeep(self) -> UpkeepReport:
        """One pass: gc, scrub a slice, repair and spot-audit every looked-after file, and
        report finished epochs' audits for credits (see :mod:`poolai.node.files.upkeep`)."""
        async with self._upkeep_lock:
            report = await storage_upkeep.upkeep_pass(self)
            await self.offload_io(save_audit_ledger, self.root / AUDITS_FILE, self.ledger)
        self.last_upkeep = report
        await self.refresh_statistics()
        return report

    async def _upkeep_loop(self) -> None:
        while True:
            await trio.sleep(self.interval)
            try:
                await self.upkeep()
            except (StorageError, OSError) as exc:  # a full disk, say: try again next time
                log.warning("storage upkeep pass failed: %s", exc)

    # ------------------------------------------------------------------ status
    async def refresh_statistics(self) -> StoreStatistics:
        assert self.store is not None
        self._stats = await self.offload_io(self.store.statistics)
        self._grants = await self.offload_io(self.store.grant_statistics, TOP_ACCOUNTS)
        return self._stats

    async def _statistics_loop(self) -> None:
        while True:
            await trio.sleep(2)
            await self.refresh_statistics()
            self.rings.view()  # notes who is on the ring, so reads know who has left since

    def _record(self, op: str, file_id: bytes, exc: Exception) -> None:
        self.recent_errors.append({"at": round(time.time(), 3), "op": op,
                                   "file_id": integrity.to_hex(file_id), "error": str(exc)})

    def _timed(
        self, op: str, file_id: bytes, size: int, *, counts: dict[str, int] | None = None,
        **phases: float,
    ) -> None:
        seconds = sum(phases.values())
        self.recent_ops.append({"at": round(time.time(), 3), "op": op, "file_id": integrity.to_hex(file_id),
                                "bytes": size, "seconds": round(seconds, 3),
                                "MBps": round(size / max(seconds, 1e-9) / 1e6, 1),
                                "phases_s": {k: round(v, 3) for k, v in phases.items()},
                                **(counts or {})})

    def status(self) -> dict[str, Any]:
        """This service's section of ``/api/status`` (counters as of the last refresh)."""
        stats = self._stats
        out: dict[str, Any] = {
            "quota_bytes": self.quota,
            "used_bytes": stats.bytes if stats else 0,
            "shares": stats.shares if stats else 0,
            "hash_failures": stats.hash_failures if stats else 0,
            "files": len(self.files),
            "ring_peers": len(self.ring_view()),
            "credit_claims": self.credit_claims,
            "gets_running": self.gets_running,
            "pinned": sum(e.pinned for e in self.files.entries()),
            "upkeep": dataclasses.asdict(self.last_upkeep) if self.last_upkeep else None,
            "recent_errors": list(self.recent_errors),
            "recent_ops": list(self.recent_ops),
        }
        if self._grants is not None:
            out["grants"] = _grants_status(self._grants)
        if self.server is not None and self.transport is not None:
            out["server"] = dataclasses.asdict(self.server.statistics())
            out["transport"] = dataclasses.asdict(self.transport.statistics())
        return out



def _grants_status(g: GrantStatistics) -> dict[str, Any]:
    return {
        "policy": {"ratio": GRANTS.ratio, "newcomer_share": GRANTS.newcomer_share,
                   "pool_share": GRANTS.pool_share, "peer_share": GRANTS.peer_share,
                   "max_accounts": GRANTS.max_accounts, "max_lease_s": GRANTS.max_lease_s},
        "accounts": g.accounts,
        "pool_used_bytes": g.pool_used,
        "pool_bytes": g.pool_bytes,
        "evicted": g.evicted,
        "top": [{"peer": peer, "used_bytes": a.used, "shares": a.shares, "credit_bytes": a.credit,
                 "grant_bytes": grant} for peer, a, grant in g.top],
    }


def _phase(progress: PhaseProgress | None, phase: str) -> raid.Progress | None:
    if progress is None:
        return None
    return lambda done, total: progress(phase, done, total)
