"""The share store: content-addressed shares in LMDB, with a byte quota, leases and pins.

Synchronous on purpose: LMDB calls block (page faults, fsync), so async
callers run every method through ``trio.to_thread.run_sync``. The object is
safe to use from several threads at once (LMDB serialises writers and gives
each reader a snapshot; the counters have their own lock).

On-disk layout (schema 2; schema 1 was the same with sha256 share ids): one
LMDB environment in ``path`` with three named databases::

    "shares"   key share_id (32 bytes) -> the share bytes
    "records"  key share_id (32 bytes) -> record, 42 bytes, big-endian:
                 u8 record version (1) | u64 lease expiry (unix seconds)
                 | u8 pinned (0/1) | 32 bytes file id
    "info"     b"schema" -> u32 schema version (2)
               b"bytes"  -> u64 total share bytes,  b"shares" -> u64 share count

Crash safety: a share, its record and the totals change in one write
transaction. LMDB commits by a single meta-page write after the data pages,
so a process killed at any instant leaves the previous or the next
committed state, never a half-written share. With ``durable=True`` (the
default) each commit is fsynced, so it also survives power loss.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import lmdb

from poolai.storage import erasure, integrity, manifest, memory
from poolai.storage.errors import (
    QuotaExceeded,
    ShareCorrupted,
    ShareHashMismatch,
    ShareNotFound,
    StoreError,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
RECORD_VERSION = 1
MAX_VALUE_SIZE = max(erasure.MAX_SEGMENT_SIZE, manifest.MAX_MANIFEST_SIZE)
MAX_LEASE = (1 << 64) - 1
_RECORD = struct.Struct(">BQB32s")
_U64 = struct.Struct(">Q")
_MAP_SLACK = 64 << 20


@dataclass(frozen=True, slots=True)
class ShareRecord:
    """What the store knows about one share besides its bytes."""

    file_id: bytes
    lease_expiry: int
    pinned: bool
    size: int


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
    Open one ShareStore per directory per process (an LMDB rule).
    Raises StoreError if the directory holds a store of another schema.
    """

    def __init__(self, path: str | os.PathLike[str], *, quota_bytes: int, durable: bool = True):
        if type(quota_bytes) is not int or quota_bytes <= 0:
            raise ValueError("quota_bytes must be a positive int")
        self.path = Path(path)
        self.quota_bytes = quota_bytes
        self.path.mkdir(parents=True, exist_ok=True)
        self._env = lmdb.open(
            str(self.path),
            map_size=map_size_for(quota_bytes),
            max_dbs=3,
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
        self._lock = threading.Lock()
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
    ) -> bool:
        """Store a share under its content id; return True if new bytes were written.

        Storing a share already held extends its lease to the later expiry and
        pins it if asked (the bytes are identical by construction).
        Raises ShareHashMismatch if ``data`` does not hash to ``share_id`` and
        QuotaExceeded if the new bytes do not fit; in both cases nothing changes.
        """
        integrity.check_id(share_id, "share_id")
        integrity.check_id(file_id, "file_id")
        if len(data) > MAX_VALUE_SIZE:
            raise ValueError(f"share of {len(data)} bytes exceeds {MAX_VALUE_SIZE}")
        if not 0 <= lease_expiry <= MAX_LEASE:
            raise ValueError("lease_expiry out of range")
        if not integrity.matches(share_id, data):
            raise ShareHashMismatch(f"share does not hash to {share_id.hex()[:16]}")
        healed = False
        try:
            with self._env.begin(write=True, buffers=True) as txn:
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
                total, count = self._totals(txn)
                if old is not None:  # rotted copy: replace it with the good bytes
                    healed = True
                    total, count = total - len(old), count - 1
                if total + len(data) > self.quota_bytes:
                    raise QuotaExceeded(
                        f"share of {len(data)} bytes refused: {total} of "
                        f"{self.quota_bytes} quota bytes used"
                    )
                txn.put(share_id, data, db=self._shares)
                txn.put(share_id, _RECORD.pack(RECORD_VERSION, lease_expiry, pinned, file_id),
                        db=self._records)
                self._set_totals(txn, total + len(data), count + 1)
        except lmdb.MapFullError:
            raise QuotaExceeded("share store map is full") from None
        with self._lock:
            self._writes += 1
            if healed:
                self._hash_failures += 1
        return True

    def delete(self, share_id: bytes) -> bool:
        """Remove a share and its record; return False if it was not there."""
        with self._env.begin(write=True, buffers=True) as txn:
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
        with self._env.begin(write=True, buffers=True) as txn:
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
            raise ShareCorrupted(f"share {share_id.hex()[:16]} failed its hash check; deleted")
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
            return _unpack(bytes(raw), len(txn.get(share_id, db=self._shares) or b""))

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
        if old is None:
            txn.delete(share_id, db=self._records)
            return False
        size = len(old)
        txn.delete(share_id, db=self._shares)
        txn.delete(share_id, db=self._records)
        total, count = self._totals(txn)
        self._set_totals(txn, total - size, count - 1)
        return True

    def _quarantine(self, share_id: bytes) -> None:
        with self._env.begin(write=True, buffers=True) as txn:
            view = txn.get(share_id, db=self._shares)
            # Re-check under the write lock: a concurrent put may have healed it.
            if view is None or integrity.matches(share_id, view):
                return
            self._delete_in(txn, share_id)
        with self._lock:
            self._hash_failures += 1
        log.warning("share %s failed its hash check on disk; deleted", share_id.hex()[:16])

    def _update_record(
        self, share_id: bytes, *, pinned: bool | None = None, lease_expiry: int | None = None
    ) -> None:
        with self._env.begin(write=True, db=self._records) as txn:
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
