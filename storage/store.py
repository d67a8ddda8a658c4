"""The share store: content-addressed shares in LMDB, with a byte quota, leases, pins and grants.

Synchronous on purpose: LMDB calls block (page faults, fsync), so async
callers run every method through ``trio.to_thread.run_sync``. The object is
safe to use from several threads at once (LMDB serialises writers and gives
each reader a snapshot; the counters have their own lock).

On-disk layout (schema 2; schema 1 was the same with sha256 share ids): one
LMDB environment in ``path`` with five named databases::

    "shares"   key share_id (32 bytes) -> the share bytes
    "records"  key share_id (32 bytes) -> record, 42 bytes, big-endian:
                 u8 record version (1) | u64 lease expiry (unix seconds)
                 | u8 pinned (0/1) | 32 bytes file id
    "owners"   key share_id (32 bytes) -> the peer charged for it (peer id text, utf-8);
                 no entry: this node's own share (or one stored before grants)
    "peers"    key peer id text (utf-8, <= 64 bytes) -> 24 bytes, big-endian:
                 u64 bytes charged | u64 shares charged | u64 credit (see grants.py)
    "info"     b"schema" -> u32 schema version (2)
               b"bytes"  -> u64 total share bytes,  b"shares" -> u64 share count
               b"unearned" -> u64 unearned bytes of all peers together (grants.py)

"owners" and "peers" came with grants; the previous release opens such a store
and ignores them (records are unchanged), though shares it deletes then stay
charged to their peers.

Crash safety: a share, its record, its owner, the owner's account and the
totals change in one write transaction. LMDB commits by a single meta-page write after the data pages,
so a process killed at any instant leaves the previous or the next
committed state, never a half-written share. With ``durable=True`` (the
default) each commit is fsynced, so it also survives power loss.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any

import lmdb

from poolai.mesh.short_ids import short_hex
from poolai.storage import erasure, grants, integrity, manifest, memory
from poolai.storage.errors import (
    GrantExceeded,
    QuotaExceeded,
    ShareCorrupted,
    ShareHashMismatch,
    ShareNotFound,
    StoreError,
    StoreWriteFailed,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
RECORD_VERSION = 1
MAX_VALUE_SIZE = max(erasure.MAX_SEGMENT_SIZE, manifest.MAX_MANIFEST_SIZE)
MAX_LEASE = (1 << 64) - 1
_RECORD = struct.Struct(">BQB32s")
_U64 = struct.Struct(">Q")
_ACCOUNT = struct.Struct(">QQQ")
MAX_OWNER = 64  # bytes of a peer id's text
_MAP_SLACK = 64 << 20


@dataclass(frozen=True, slots=True)
class ShareRecord:
    """What the store knows about one share besides its bytes."""

    file_id: bytes
    lease_expiry: int
    pinned: bool
    size: int
    owner: str = ""  # the peer charged for it ("": this node's own)


@dataclass(frozen=True, slots=True)
class StoreStatistics:
    """A snapshot of the store's counters (shares/bytes persist; the rest count since open)."""

    shares: int
    bytes: int
    quota_bytes: int
    reads: int
    writes: int
    hash_failures: int


@dataclass(frozen=True, slots=True)
class GrantStatistics:
    """The per-peer table: how many rows, the newcomers' pool, the busiest peers."""

    accounts: int
    pool_used: int
    pool_bytes: int
    top: tuple[tuple[str, grants.Account, int], ...]  # (peer, account, its grant now)
    evicted: int  # shares evicted to make room since open


@dataclass(frozen=True, slots=True)
class GcResult:
    """What one ``gc`` pass removed."""

    shares: int
    bytes: int


def map_size_for(quota_bytes: int) -> int:
    """LMDB map size for a quota: twice the quota plus 64 MiB, page-aligned.

    The quota counts share bytes; LMDB also needs B-tree pages, whole
    overflow pages per large value and copy-on-write free pages, so the map
    is sized with headroom. It is address space, not disk: the file grows as
    it fills.
    """
    raw = 2 * quota_bytes + _MAP_SLACK
    return -(-raw // 4096) * 4096


class ShareStore:
    """An LMDB-backed, content-addressed, quota-bounded share store in ``path``.

    ``quota_bytes`` bounds the sum of stored share sizes. ``durable=False``
    skips fsync: still safe against a killed process, not against power loss.
    ``grant_policy`` bounds what each peer may keep (:mod:`poolai.storage.grants`);
    without one every share is still charged to its peer, and only the quota bounds.
    Open one ShareStore per directory per process (an LMDB rule).
    Raises StoreError if the directory holds a store of another schema.
    """

    def __init__(self, path: str | os.PathLike[str], *, quota_bytes: int, durable: bool = True,
                 grant_policy: grants.GrantPolicy | None = None):
        if type(quota_bytes) is not int or quota_bytes <= 0:
            raise ValueError("quota_bytes must be a positive int")
        self.path = Path(path)
        self.quota_bytes = quota_bytes
        self.grant_policy = grant_policy
        self.path.mkdir(parents=True, exist_ok=True)
        self._env = lmdb.open(
            str(self.path),
            map_size=map_size_for(quota_bytes),
            max_dbs=5,
            sync=durable,
            metasync=durable,
            readahead=False,
        )
        self._env.reader_check()  # clear reader slots left by killed processes
        self._info = self._env.open_db(b"info")
        with self._env.begin(write=True, db=self._info) as txn:
            raw = txn.get(b"schema")
            if raw is None:
                txn.put(b"schema", struct.pack(">I", SCHEMA_VERSION))
        if raw is not None and (schema := struct.unpack(">I", raw)[0]) != SCHEMA_VERSION:
            self._env.close()
            if schema == 1:
                raise StoreError(f"{path} holds a share store from an older release (schema 1, "
                                 "sha256 share ids); move it away to start an empty store")
            raise StoreError(f"{path}: unsupported store schema {schema}")
        self._shares = self._env.open_db(b"shares")
        self._records = self._env.open_db(b"records")
        self._owners = self._env.open_db(b"owners")
        self._peers = self._env.open_db(b"peers")
        self._lock = threading.Lock()
        # After an eviction scan found nothing to free: (no scan before this unix time,
        # quota, credits generation) - a full store refuses at once until one changes.
        self._no_victims: tuple[int, int, int] | None = None
        self._credits_generation = 0
        self._evicted = 0
        self._reads = 0
        self._writes = 0
        self._hash_failures = 0

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Close the environment; further calls fail."""
        self._env.close()

    def __enter__(self) -> ShareStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ writes

    def put(
        self,
        share_id: bytes,
        data: bytes,
        *,
        file_id: bytes,
        lease_expiry: int,
        pinned: bool = False,
        owner: str | None = None,
        now: int | None = None,
    ) -> bool:
        """Store a share under its content id; return True if new bytes were written.

        Storing a share already held extends its lease to the later expiry and
        pins it if asked (the bytes are identical by construction); the peer that
        stored it first stays charged. ``owner`` is the peer storing it (None: this
        node itself, charged to nobody). With ``now`` (unix seconds), a put that does
        not fit the quota first evicts expired shares, then shares of peers over their
        grant (:func:`grants.eviction_order`), in the same transaction.
        Raises ShareHashMismatch if ``data`` does not hash to ``share_id``,
        GrantExceeded if ``owner`` is over its grant, QuotaExceeded if the new bytes
        do not fit, StoreWriteFailed if the disk fails the write; in each case nothing
        changes.
        """
        integrity.check_id(share_id, "share_id")
        integrity.check_id(file_id, "file_id")
        if len(data) > MAX_VALUE_SIZE:
            raise ValueError(f"share of {len(data)} bytes exceeds {MAX_VALUE_SIZE}")
        if not 0 <= lease_expiry <= MAX_LEASE:
            raise ValueError("lease_expiry out of range")
        key = _owner_key(owner)
        if not integrity.matches(share_id, data):
            raise ShareHashMismatch(f"share does not hash to {short_hex(share_id)}")
        healed = False
        try:
            with self._writing() as txn:
                old = txn.get(share_id, db=self._shares)
                if old is not None and integrity.matches(share_id, old):
                    rec = _unpack(bytes(txn.get(share_id, db=self._records)), len(old))
                    merged = _RECORD.pack(
                        RECORD_VERSION,
                        max(rec.lease_expiry, lease_expiry),
                        rec.pinned or pinned,
                        rec.file_id,
                    )
                    txn.put(share_id, merged, db=self._records)
                    return False
                if old is not None:  # rotted copy: replace it with the good bytes
                    healed = True
                    self._delete_in(txn, share_id)
                self._check_grant(txn, key, len(data))
                total, count = self._totals(txn)
                if total + len(data) > self.quota_bytes and now is not None:
                    self._evict(txn, total + len(data) - self.quota_bytes, now)
                    total, count = self._totals(txn)
                if total + len(data) > self.quota_bytes:
                    raise QuotaExceeded(
                        f"share of {len(data)} bytes refused: {total} of "
                        f"{self.quota_bytes} quota bytes used"
                    )
                txn.put(share_id, data, db=self._shares)
                txn.put(share_id, _RECORD.pack(RECORD_VERSION, lease_expiry, pinned, file_id),
                        db=self._records)
                if key:
                    txn.put(share_id, key, db=self._owners)
                    self._charge(txn, key, len(data), 1)
                self._set_totals(txn, total + len(data), count + 1)
                memo = self._no_victims
                if memo is not None and not pinned and lease_expiry < memo[0]:
                    self._no_victims = (lease_expiry, *memo[1:])  # this one may be evicted sooner
        except lmdb.MapFullError:
            raise QuotaExceeded("share store map is full") from None
        with self._lock:
            self._writes += 1
            if healed:
                self._hash_failures += 1
        return True

    def admit(self, share_id: bytes, size: int, *, owner: str | None = None,
              now: int | None = None) -> None:
        """Check, before its bytes arrive, that a share of ``size`` from ``owner`` may be
        stored (as :meth:`put` would decide, without evicting anything).

        A share already held is always admitted (storing it again only extends its
        lease). A full store admits only while an eviction might make room (see ``put``).
        Raises GrantExceeded or QuotaExceeded.
        """
        key = _owner_key(owner)
        with self._env.begin(buffers=True) as txn:
            if txn.get(share_id, db=self._records) is not None:
                return
            self._check_grant(txn, key, size)
            total, _ = self._totals(txn)
            need = total + size - self.quota_bytes
            if need > 0 and (now is None or sum(h.size for h in self._victims(txn, need, now)) < need):
                raise QuotaExceeded(
                    f"share of {size} bytes refused: {total} of {self.quota_bytes} quota bytes used"
                )

    def set_credits(self, credits: dict[str, int]) -> None:
        """Record each peer's credit (bytes of this node's shares it keeps; see grants.py),
        replacing all earlier credits, in one transaction. Peers left out get none; only
        the ``credited_accounts`` largest are kept, and no row is added to a full table."""
        policy = self.grant_policy or grants.GrantPolicy()
        kept = {_owner_key(p): c for p, c in grants.kept_credits(policy, credits).items()}
        with self._writing() as txn:
            rows = {bytes(k): _ACCOUNT.unpack(v) for k, v in txn.cursor(db=self._peers)}
            for key, (used, shares, _) in rows.items():
                if used == 0 and key not in kept:
                    txn.delete(key, db=self._peers)
                else:
                    txn.put(key, _ACCOUNT.pack(used, shares, kept.get(key, 0)), db=self._peers)
            room = policy.max_accounts - txn.stat(self._peers)["entries"]
            for key, credit in kept.items():
                if key not in rows and room > 0:
                    txn.put(key, _ACCOUNT.pack(0, 0, credit), db=self._peers)
                    room -= 1
            unearned = sum(policy.unearned(_account(v)) for _, v in txn.cursor(db=self._peers))
            txn.put(b"unearned", _U64.pack(unearned), db=self._info)
        with self._lock:
            self._credits_generation += 1

    def accounts(self) -> dict[str, grants.Account]:
        """Every row of the per-peer table (at most ``max_accounts``)."""
        with self._env.begin(db=self._peers, buffers=True) as txn:
            return {bytes(k).decode(): _account(v) for k, v in txn.cursor()}

    def grant_statistics(self, top: int = 10) -> GrantStatistics:
        """The per-peer table's size, the newcomers' pool and the ``top`` busiest peers."""
        policy = self.grant_policy or grants.GrantPolicy()
        with self._env.begin(buffers=True) as txn:
            unearned = txn.get(b"unearned", db=self._info)
            pool_used = _U64.unpack(unearned)[0] if unearned is not None else 0
        rows = self.accounts()
        busiest = tuple((p, a, policy.grant(self.quota_bytes, a)) for p, a in grants.top_accounts(rows, top))
        with self._lock:
            evicted = self._evicted
        return GrantStatistics(len(rows), pool_used, policy.pool(self.quota_bytes), busiest, evicted)

    def delete(self, share_id: bytes) -> bool:
        """Remove a share and its record; return False if it was not there."""
        with self._writing() as txn:
            return self._delete_in(txn, share_id)

    def pin(self, share_id: bytes) -> None:
        """Exempt a share from garbage collection. Raises ShareNotFound."""
        self._update_record(share_id, pinned=True)

    def unpin(self, share_id: bytes) -> None:
        """Make a share collectable again once its lease expires. Raises ShareNotFound."""
        self._update_record(share_id, pinned=False)

    def renew(self, share_id: bytes, lease_expiry: int) -> None:
        """Extend a share's lease to ``lease_expiry`` (never shortens). Raises ShareNotFound."""
        self._update_record(share_id, lease_expiry=lease_expiry)

    def gc(self, now: int) -> GcResult:
        """Delete every unpinned share whose lease expired at or before ``now`` (unix seconds)."""
        freed = count = 0
        with self._writing() as txn:
            expired = []
            for key, raw in txn.cursor(db=self._records):
                version, expiry, pinned, _ = _RECORD.unpack(raw)
                if not pinned and expiry <= now:
                    expired.append(bytes(key))
            for share_id in expired:
                size = len(txn.get(share_id, db=self._shares) or b"")
                if self._delete_in(txn, share_id):
                    freed += size
                    count += 1
        if count:
            log.info("gc removed %d expired shares (%d bytes)", count, freed)
        return GcResult(shares=count, bytes=freed)

    # ------------------------------------------------------------------ reads

    def get(
        self, share_id: bytes, offset: int = 0, length: int | None = None, *, verify: bool = True
    ) -> bytes:
        """Return ``length`` bytes of a share from ``offset`` (all of it by default).

        With ``verify`` the whole share is hashed first, so a value that rotted
        on disk is never returned: it is deleted, counted and reported. Without
        it the bytes are returned as stored, for a reader that checks them
        itself (a peer fetching a share hashes it against its manifest and
        reports a mismatch, see :meth:`check`).
        Raises ShareNotFound, ShareCorrupted, or ValueError for a range past the end.
        """
        got = self.read(share_id, offset, length, verify=verify)
        assert got is not None
        return got[1]

    def read(
        self, share_id: bytes, offset: int = 0, length: int | None = None, *, verify: bool = True,
        cached_only: bool = False,
    ) -> tuple[int, bytes] | None:
        """``(size of the whole share, bytes of the range)``, as :meth:`get` reads them.

        With ``cached_only`` it returns None, reading nothing, unless every page
        of the share is in the page cache: then the copy cannot wait for the
        disk and an event loop may make it itself.
        """
        with self._env.begin(db=self._shares, buffers=True) as txn:
            view = txn.get(share_id)
            if view is None:
                raise ShareNotFound(share_id.hex())
            if cached_only and not memory.in_page_cache(view):
                return None
            ok = not verify or integrity.matches(share_id, view)
            if ok:
                out = bytes(view[_range(len(view), offset, length)])
            size = len(view)
            memory.release_view(view)  # the pages stay cached, not resident here (memory.py)
        if not ok:
            self._quarantine(share_id)
            raise ShareCorrupted(f"share {short_hex(share_id)} failed its hash check; deleted")
        with self._lock:
            self._reads += 1
        return size, out

    def check(self, share_id: bytes) -> bool:
        """Hash a held share; True if it is whole. A rotted one is deleted, counted and
        reported, and False returned. Raises ShareNotFound."""
        with self._env.begin(db=self._shares, buffers=True) as txn:
            view = txn.get(share_id)
            if view is None:
                raise ShareNotFound(share_id.hex())
            ok = integrity.matches(share_id, view)
            memory.release_view(view)
        if not ok:
            self._quarantine(share_id)
        return ok

    def audit(self, share_id: bytes, offset: int, length: int, nonce: bytes) -> bytes:
        """Proof of possession of a share range for a challenger's nonce (see integrity).

        Raises like ``get``.
        """
        return integrity.audit_digest(nonce, self.get(share_id, offset, length))

    def has(self, share_ids: Sequence[bytes]) -> list[bool]:
        """For each id, whether a share is held (without reading or hashing it)."""
        with self._env.begin(db=self._records, buffers=True) as txn:
            return [txn.get(s) is not None for s in share_ids]

    def record(self, share_id: bytes) -> ShareRecord | None:
        """The record of a held share, or None."""
        with self._env.begin(buffers=True) as txn:
            raw = txn.get(share_id, db=self._records)
            if raw is None:
                return None
            rec = _unpack(bytes(raw), len(txn.get(share_id, db=self._shares) or b""))
            owner = txn.get(share_id, db=self._owners)
            return rec if owner is None else replace(rec, owner=bytes(owner).decode())

    def share_ids(self) -> list[bytes]:
        """Ids of every held share (a snapshot)."""
        with self._env.begin(db=self._records) as txn:
            return list(txn.cursor().iternext(keys=True, values=False))

    def scrub(self) -> int:
        """Hash every held share, delete those that fail; return how many failed."""
        bad = 0
        for share_id in self.share_ids():
            try:
                bad += not self.check(share_id)
            except ShareNotFound:
                pass  # deleted meanwhile
        return bad

    def statistics(self) -> StoreStatistics:
        """A snapshot of the counters."""
        with self._env.begin() as txn:
            total, count = self._totals(txn)
        with self._lock:
            return StoreStatistics(
                shares=count,
                bytes=total,
                quota_bytes=self.quota_bytes,
                reads=self._reads,
                writes=self._writes,
                hash_failures=self._hash_failures,
            )

    # ------------------------------------------------------------------ internals

    @contextlib.contextmanager
    def _writing(self, db: Any = None, buffers: bool = True) -> Iterator[lmdb.Transaction]:
        """A write transaction (committed when the block ends). A disk that fails the
        write raises StoreWriteFailed, so a full disk refuses a share or ends an upkeep
        pass instead of the node; MapFullError (the map, not the disk) passes through."""
        try:
            with self._env.begin(db=db, write=True, buffers=buffers) as txn:
                yield txn
        except lmdb.MapFullError:
            raise
        except lmdb.Error as exc:
            raise StoreWriteFailed(f"share store write failed: {exc}") from None

    def _totals(self, txn: lmdb.Transaction) -> tuple[int, int]:
        total = txn.get(b"bytes", db=self._info)
        count = txn.get(b"shares", db=self._info)
        return (
            _U64.unpack(total)[0] if total is not None else 0,
            _U64.unpack(count)[0] if count is not None else 0,
        )

    def _set_totals(self, txn: lmdb.Transaction, total: int, count: int) -> None:
        txn.put(b"bytes", _U64.pack(total), db=self._info)
        txn.put(b"shares", _U64.pack(count), db=self._info)

    def _delete_in(self, txn: lmdb.Transaction, share_id: bytes) -> bool:
        old = txn.get(share_id, db=self._shares)
        owner = txn.get(share_id, db=self._owners)
        if owner is not None:
            owner = bytes(owner)
            txn.delete(share_id, db=self._owners)
        if old is None:
            txn.delete(share_id, db=self._records)
            return False
        size = len(old)
        txn.delete(share_id, db=self._shares)
        txn.delete(share_id, db=self._records)
        if owner:
            self._charge(txn, owner, -size, -1)
        total, count = self._totals(txn)
        self._set_totals(txn, total - size, count - 1)
        return True

    def _row(self, txn: lmdb.Transaction, key: bytes) -> grants.Account | None:
        raw = txn.get(key, db=self._peers)
        return None if raw is None else _account(raw)

    def _pool_used(self, txn: lmdb.Transaction) -> int:
        raw = txn.get(b"unearned", db=self._info)
        return _U64.unpack(raw)[0] if raw is not None else 0

    def _check_grant(self, txn: lmdb.Transaction, key: bytes, size: int) -> None:
        if not key or self.grant_policy is None:
            return
        refusal = grants.admit(self.grant_policy, self.quota_bytes, self._row(txn, key),
                               txn.stat(self._peers)["entries"], self._pool_used(txn), size)
        if refusal is not None:
            raise GrantExceeded(refusal)

    def _charge(self, txn: lmdb.Transaction, key: bytes, size: int, shares: int) -> None:
        """Add ``size`` bytes and ``shares`` to ``key``'s row (negative: take them off),
        keeping the unearned total in step; a row with nothing left is removed."""
        policy = self.grant_policy or grants.GrantPolicy()
        before = self._row(txn, key) or grants.Account()
        after = grants.Account(max(0, before.used + size), max(0, before.shares + shares), before.credit)
        if after.used == 0 and after.credit == 0:
            txn.delete(key, db=self._peers)
        else:
            txn.put(key, _ACCOUNT.pack(after.used, after.shares, after.credit), db=self._peers)
        unearned = self._pool_used(txn) + policy.unearned(after) - policy.unearned(before)
        txn.put(b"unearned", _U64.pack(max(0, unearned)), db=self._info)

    def _nothing_to_evict(self, now: int) -> bool:
        memo = self._no_victims
        with self._lock:
            generation = self._credits_generation
        return memo is not None and now < memo[0] and memo[1:] == (self.quota_bytes, generation)

    def _evict(self, txn: lmdb.Transaction, need: int, now: int) -> None:
        """Free ``need`` bytes if expired or over-grant shares allow (see grants.py)."""
        victims = self._victims(txn, need, now)
        for h in victims:
            self._delete_in(txn, h.share_id)
        if victims:
            log.info("evicted %d shares (%d bytes) to make room", len(victims), sum(h.size for h in victims))
            with self._lock:
                self._evicted += len(victims)

    def _victims(self, txn: lmdb.Transaction, need: int, now: int) -> list[grants.Holding]:
        """What to evict to free ``need`` bytes: expired shares, then over-grant ones.

        It reads every record, so a store that found nothing at all to free skips the
        scan until the earliest lease runs out, the quota changes or credits are set again.
        """
        if self._nothing_to_evict(now):
            return []
        with self._lock:
            generation = self._credits_generation
        policy = self.grant_policy or grants.GrantPolicy()
        accounts = {bytes(k).decode(): _account(v) for k, v in txn.cursor(db=self._peers)}
        over = set()
        if self.grant_policy is not None:  # without a policy no peer is over a grant
            over = {p for p, a in accounts.items() if policy.over_grant(self.quota_bytes, a)}
        holdings, next_expiry = [], MAX_LEASE
        for key, raw in txn.cursor(db=self._records):
            _, expiry, pinned, _ = _RECORD.unpack(raw)
            if pinned:
                continue
            owner = txn.get(key, db=self._owners)
            owner_text = bytes(owner).decode() if owner is not None else ""
            if expiry <= now or owner_text in over:
                size = len(txn.get(key, db=self._shares) or b"")
                holdings.append(grants.Holding(bytes(key), owner_text, size, expiry))
            else:
                next_expiry = min(next_expiry, expiry)
        victims = grants.eviction_order(policy, self.quota_bytes, holdings, accounts, now, need)
        self._no_victims = None if holdings else (next_expiry, self.quota_bytes, generation)
        return victims

    def _quarantine(self, share_id: bytes) -> None:
        with self._writing() as txn:
            view = txn.get(share_id, db=self._shares)
            # Re-check under the write lock: a concurrent put may have healed it.
            if view is None or integrity.matches(share_id, view):
                return
            self._delete_in(txn, share_id)
        with self._lock:
            self._hash_failures += 1
        log.warning("share %s failed its hash check on disk; deleted", short_hex(share_id))

    def _update_record(
        self, share_id: bytes, *, pinned: bool | None = None, lease_expiry: int | None = None
    ) -> None:
        with self._writing(db=self._records, buffers=False) as txn:
            raw = txn.get(share_id)
            if raw is None:
                raise ShareNotFound(share_id.hex())
            version, expiry, was_pinned, fid = _RECORD.unpack(raw)
            if lease_expiry is not None:
                if not 0 <= lease_expiry <= MAX_LEASE:
                    raise ValueError("lease_expiry out of range")
                expiry = max(expiry, lease_expiry)
            txn.put(
                share_id,
                _RECORD.pack(RECORD_VERSION, expiry, was_pinned if pinned is None else pinned, fid),
            )


def _owner_key(owner: str | None) -> bytes:
    key = (owner or "").encode()
    if len(key) > MAX_OWNER:
        raise ValueError(f"owner of {len(key)} bytes exceeds {MAX_OWNER}")
    return key


def _account(raw: bytes) -> grants.Account:
    used, shares, credit = _ACCOUNT.unpack(raw)
    return grants.Account(used, shares, credit)


def _unpack(raw: bytes, size: int) -> ShareRecord:
    if len(raw) != _RECORD.size or raw[0] != RECORD_VERSION:
        raise StoreError(f"unsupported share record (version byte {raw[:1].hex()})")
    _, expiry, pinned, fid = _RECORD.unpack(raw)
    return ShareRecord(file_id=fid, lease_expiry=expiry, pinned=bool(pinned), size=size)


def _range(size: int, offset: int, length: int | None) -> slice:
    if length is None:
        length = size - offset
    if offset < 0 or length < 0 or offset + length > size:
        raise ValueError(f"range [{offset}, +{length}) outside a share of {size} bytes")
    return slice(offset, offset + length)
