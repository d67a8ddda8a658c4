"""ShareStore on real LMDB: content addressing, quota, leases, rot detection, SIGKILL safety."""

from __future__ import annotations

import hashlib
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import lmdb
import pytest
from fulldisk import small_disk

from poolai.storage import integrity
from poolai.storage.errors import (
    QuotaExceeded,
    ShareCorrupted,
    ShareHashMismatch,
    ShareNotFound,
    StoreError,
    StoreWriteFailed,
)
from poolai.storage.store import ShareStore, map_size_for

FILE = hashlib.sha256(b"file").digest()


def share(seed: int, size: int = 1000) -> tuple[bytes, bytes]:
    data = random.Random(seed).randbytes(size)
    return integrity.share_id(data), data


@pytest.fixture
def store(tmp_path):
    with ShareStore(tmp_path / "db", quota_bytes=10_000) as s:
        yield s


def test_put_get_and_ranges(store):
    sid, data = share(1)
    assert store.put(sid, data, file_id=FILE, lease_expiry=100) is True
    assert store.get(sid) == data
    assert store.get(sid, 10, 5) == data[10:15]
    assert store.get(sid, 1000, 0) == b""
    assert store.get(sid, 990) == data[990:]
    with pytest.raises(ValueError):
        store.get(sid, 995, 10)
    with pytest.raises(ValueError):
        store.get(sid, -1, 1)
    assert store.has([sid, b"\x00" * 32]) == [True, False]
    rec = store.record(sid)
    assert (rec.file_id, rec.lease_expiry, rec.pinned, rec.size) == (FILE, 100, False, 1000)


def test_missing_share_raises_not_found(store):
    with pytest.raises(ShareNotFound):
        store.get(b"\x01" * 32)
    assert store.record(b"\x01" * 32) is None
    assert store.delete(b"\x01" * 32) is False


def test_share_that_does_not_hash_to_its_id_is_refused(store):
    sid, data = share(2)
    with pytest.raises(ShareHashMismatch):
        store.put(sid, data + b"!", file_id=FILE, lease_expiry=0)
    assert store.has([sid]) == [False]
    assert store.statistics().shares == 0


def test_duplicate_put_extends_lease_and_writes_nothing(store):
    sid, data = share(3)
    store.put(sid, data, file_id=FILE, lease_expiry=100)
    assert store.put(sid, data, file_id=FILE, lease_expiry=50, pinned=True) is False
    assert store.put(sid, data, file_id=FILE, lease_expiry=200) is False
    rec = store.record(sid)
    assert (rec.lease_expiry, rec.pinned) == (200, True)
    stats = store.statistics()
    assert (stats.shares, stats.bytes, stats.writes) == (1, 1000, 1)


def test_quota_refusal_writes_nothing(store):
    ids = []
    for seed in range(10):
        sid, data = share(seed)
        store.put(sid, data, file_id=FILE, lease_expiry=0)
        ids.append(sid)
    assert store.statistics().bytes == 10_000
    sid, data = share(99, 1)
    with pytest.raises(QuotaExceeded):
        store.put(sid, data, file_id=FILE, lease_expiry=0)
    assert store.has([sid]) == [False]
    assert store.statistics().bytes == 10_000
    store.delete(ids[0])
    assert store.put(sid, data, file_id=FILE, lease_expiry=0) is True
    assert store.statistics().bytes == 9_001


def test_gc_removes_expired_unpinned_only(store):
    expired, pinned, live = share(1), share(2), share(3)
    store.put(*expired, file_id=FILE, lease_expiry=100)
    store.put(*pinned, file_id=FILE, lease_expiry=100)
    store.put(*live, file_id=FILE, lease_expiry=500)
    store.pin(pinned[0])
    result = store.gc(now=100)
    assert (result.shares, result.bytes) == (1, 1000)
    assert store.has([expired[0], pinned[0], live[0]]) == [False, True, True]
    store.unpin(pinned[0])
    store.renew(live[0], 1000)
    assert store.gc(now=600).shares == 1
    assert store.has([pinned[0], live[0]]) == [False, True]
    assert store.statistics().bytes == 1000
    with pytest.raises(ShareNotFound):
        store.pin(expired[0])


def test_counters(store):
    sid, data = share(4)
    store.put(sid, data, file_id=FILE, lease_expiry=0)
    store.get(sid)
    store.get(sid, 0, 10)
    stats = store.statistics()
    assert (stats.shares, stats.bytes, stats.reads, stats.writes) == (1, 1000, 2, 1)
    assert (stats.hash_failures, stats.quota_bytes) == (0, 10_000)


def test_audit_digest_matches_the_range(store):
    sid, data = share(5)
    store.put(sid, data, file_id=FILE, lease_expiry=0)
    nonce = bytes(range(32))
    assert store.audit(sid, 100, 50, nonce) == integrity.audit_digest(nonce, data[100:150])


def test_contents_survive_reopen(tmp_path):
    sid, data = share(6)
    with ShareStore(tmp_path / "db", quota_bytes=10_000) as s:
        s.put(sid, data, file_id=FILE, lease_expiry=7)
    with ShareStore(tmp_path / "db", quota_bytes=20_000) as s:
        assert s.get(sid) == data
        assert s.statistics().bytes == 1000


def rot_on_disk(db: Path, data: bytes, at: int, flip: int = 0xFF) -> None:
    """Flip bits of a stored value in the closed store's data file, as disk rot would."""
    path = db / "data.mdb"
    raw = bytearray(path.read_bytes())
    raw[raw.index(data[at : at + 64]) + 10] ^= flip
    path.write_bytes(bytes(raw))


def stored_pair(db: Path, seeds: tuple[int, int]) -> tuple[bytes, bytes, bytes, bytes]:
    """A 20,000-byte and a 3,000-byte share put into a new store at ``db`` (then closed)."""
    sid, data = share(seeds[0], 20_000)
    other_id, other = share(seeds[1], 3000)
    with ShareStore(db, quota_bytes=100_000) as s:
        s.put(sid, data, file_id=FILE, lease_expiry=0)
        s.put(other_id, other, file_id=FILE, lease_expiry=0)
    return sid, data, other_id, other


def test_read_gives_the_share_size_and_reads_cached_shares_only_when_asked(tmp_path):
    sid, data, other_id, other = stored_pair(tmp_path / "db", (12, 13))
    with ShareStore(tmp_path / "db", quota_bytes=100_000) as s:
        assert s.read(sid, 100, 50) == (len(data), data[100:150])
        # Just written, so in the page cache: the copy needs no disk (memory.in_page_cache).
        assert s.read(other_id, cached_only=True, verify=False) == (len(other), other)
        with pytest.raises(ShareNotFound):
            s.read(FILE, cached_only=True)


def test_rotted_value_on_disk_is_detected_counted_and_deleted(tmp_path):
    sid, data, other_id, _ = stored_pair(tmp_path / "db", (7, 8))
    rot_on_disk(tmp_path / "db", data, 5000)
    with ShareStore(tmp_path / "db", quota_bytes=100_000) as s:
        with pytest.raises(ShareCorrupted):
            s.get(sid, 0, 10)
        assert s.has([sid, other_id]) == [False, True]
        stats = s.statistics()
        assert (stats.shares, stats.bytes, stats.hash_failures) == (1, 3000, 1)
        assert s.scrub() == 0
        # The holder can take a good copy again.
        assert s.put(sid, data, file_id=FILE, lease_expiry=0) is True
        assert s.get(sid) == data


def test_unverified_reads_return_bytes_as_stored_and_check_drops_rot(tmp_path):
    sid, data, other_id, _ = stored_pair(tmp_path / "db", (10, 11))
    rot_on_disk(tmp_path / "db", data, 5000)
    with ShareStore(tmp_path / "db", quota_bytes=100_000) as s:
        rotten = s.get(sid, 5000, 64, verify=False)
        assert rotten != data[5000:5064] and len(rotten) == 64
        assert s.check(other_id) is True
        assert s.check(sid) is False
        assert s.has([sid, other_id]) == [False, True]
        assert s.statistics().hash_failures == 1
        with pytest.raises(ShareNotFound):
            s.check(sid)


def test_scrub_finds_rot_and_put_heals_a_rotted_copy(tmp_path):
    sid, data = share(9, 20_000)
    with ShareStore(tmp_path / "db", quota_bytes=100_000) as s:
        s.put(sid, data, file_id=FILE, lease_expiry=0)
    rot_on_disk(tmp_path / "db", data, 100, flip=1)
    with ShareStore(tmp_path / "db", quota_bytes=100_000) as s:
        assert s.put(sid, data, file_id=FILE, lease_expiry=0) is True  # replaced, not merged
        assert s.get(sid) == data
        assert s.statistics().hash_failures == 1
        assert s.scrub() == 0


def _write_schema(path, schema: int, shares: dict[bytes, bytes] | None = None) -> None:
    env = lmdb.open(str(path), max_dbs=3)
    with env.begin(write=True, db=env.open_db(b"info")) as txn:
        txn.put(b"schema", schema.to_bytes(4, "big"))
    with env.begin(write=True, db=env.open_db(b"shares")) as txn:
        for key, value in (shares or {}).items():
            txn.put(key, value)
    env.close()


def _read_raw(path, name: bytes) -> dict[bytes, bytes]:
    env = lmdb.open(str(path), max_dbs=3)
    with env.begin(db=env.open_db(name)) as txn:
        items = dict(txn.cursor())
    env.close()
    return items


def test_other_schema_is_refused(tmp_path):
    _write_schema(tmp_path / "db", 3)
    with pytest.raises(StoreError, match="unsupported store schema 3"):
        ShareStore(tmp_path / "db", quota_bytes=1000)


def test_sha256_era_store_is_refused_by_name_and_keeps_its_shares(tmp_path):
    old = {hashlib.sha256(b"old share").digest(): b"old share"}
    _write_schema(tmp_path / "db", 1, old)
    with pytest.raises(StoreError, match=r"older release \(schema 1, sha256 share ids\); move it away"):
        ShareStore(tmp_path / "db", quota_bytes=1000)
    assert _read_raw(tmp_path / "db", b"shares") == old
    assert _read_raw(tmp_path / "db", b"info") == {b"schema": (1).to_bytes(4, "big")}


def test_map_size_leaves_room_beyond_quota():
    assert map_size_for(1 << 30) >= 2 << 30
    assert map_size_for(1) % 4096 == 0


_WRITER = textwrap.dedent(
    """
    import hashlib, random, sys
    from poolai.storage import integrity
    from poolai.storage.store import ShareStore
    path, seed = sys.argv[1], int(sys.argv[2])
    rng = random.Random(seed)
    fid = hashlib.sha256(b"file").digest()
    store = ShareStore(path, quota_bytes=1 << 30)
    held = []
    n = 0
    while True:
        n += 1
        if held and n % 5 == 0:
            sid = held.pop(rng.randrange(len(held)))
            print("deleting", sid.hex(), flush=True)  # before: the delete may commit unseen
            store.delete(sid)
            continue
        data = rng.randbytes(rng.randrange(1, 300_000))
        sid = integrity.share_id(data)
        store.put(sid, data, file_id=fid, lease_expiry=rng.randrange(100))
        held.append(sid)
        print("put", sid.hex(), flush=True)
    """
)


def test_sigkill_at_random_moments_leaves_only_whole_shares(tmp_path):
    path = tmp_path / "db"
    rng = random.Random(1234)
    acknowledged: set[bytes] = set()

    def account(line: str) -> None:
        op, hexid = line.split()
        if op == "put":
            acknowledged.add(bytes.fromhex(hexid))
        else:
            acknowledged.discard(bytes.fromhex(hexid))

    for round_ in range(5):
        child = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path), str(round_)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            # Kill after a random number of acknowledged operations: the child is
            # then somewhere inside a later one (copying, committing or fsyncing).
            for _ in range(rng.randrange(3, 25)):
                account(child.stdout.readline())
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
            for line in child.stdout:  # what it acknowledged before dying
                account(line)
        finally:
            child.kill()
            child.wait(timeout=30)
            child.stdout.close()
        with ShareStore(path, quota_bytes=1 << 30) as s:
            ids = s.share_ids()
            assert acknowledged <= set(ids)  # every committed put survived
            sizes = 0
            for sid in ids:
                value = s.get(sid)  # hash-checked: a torn value would raise ShareCorrupted
                assert s.record(sid).size == len(value)
                sizes += len(value)
            stats = s.statistics()
            assert (stats.shares, stats.bytes, stats.hash_failures) == (len(ids), sizes, 0)
            acknowledged.clear()
            acknowledged.update(ids)


def test_a_full_disk_refuses_the_share_with_a_store_error(tmp_path):
    """A disk that fills under the store (the quota is larger than the disk) refuses the
    share with StoreWriteFailed, keeps what it held, and stores again once there is room.
    Before, LMDB's commit error (EIO on a full tmpfs) escaped the store and an upkeep
    repair placing a share locally took the whole node down."""
    with small_disk(tmp_path, "2m") as disk:
        (disk / "ballast").write_bytes(bytes(512 << 10))
        store = ShareStore(disk / "shares", quota_bytes=64 << 20)
        kept = []
        with pytest.raises(StoreWriteFailed):
            for i in range(64):
                share_id, data = share(i, 100_000)
                store.put(share_id, data, file_id=FILE, lease_expiry=2**40)
                kept.append((share_id, data))
        assert 0 < len(kept) < 64
        for share_id, data in kept:
            assert store.get(share_id) == data
        (disk / "ballast").unlink()
        share_id, data = share(1000, 100_000)
        store.put(share_id, data, file_id=FILE, lease_expiry=2**40)
        assert store.get(share_id) == data
        store.close()
