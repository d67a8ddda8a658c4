"""The ledger: the verified receipts this node keeps, in LMDB; and the messages of
``/poolai/ledger/1.0.0``, over which nodes fetch each other's receipts and ask each
other to countersign.

Synchronous on purpose, like the share store: async callers go through
``trio.to_thread.run_sync``. Only :class:`~poolai.node.credits.receipts.Checked` receipts
signed by both parties get in, so the file never holds evidence that would not count.
Which receipts are kept, and which are evicted, is decided by
:mod:`poolai.node.credits.retention`; this module only carries it out.

On-disk layout (schema 2), one LMDB environment in ``path``::

    "receipts"  receipt id (32 bytes) -> envelope            never overwritten; deleted only when evicted
    "seqs"      receipt id -> seq (u64 BE)                   where its log and party entries are
    "log"       seq (u64 BE) -> receipt id                   arrival order; cursors of ledger.fetch
    "party"     peer id (utf-8) 0x00 seq (u64 BE) -> receipt id   receipts each party signed
    "pending"   claim key (32 bytes) -> envelope with our signature only   until the other party signs
    "standing"  peer id (utf-8) -> 4 x u32 BE (verified, agreed, mismatched, failed)
    "info"      b"schema" -> u32 (2),  b"seq" -> u64 next sequence number

Schema 1 (no "seqs") is upgraded in place at open. Receipts added, receipts evicted
for them, their log, seq and party entries and the next sequence number change in one
write transaction; LMDB commits with a single meta-page write, so a process killed at
any instant leaves the ledger as it was before or after the whole change. A sequence
number is never reused, so a peer's cursor stays valid across evictions. With
``durable=True`` each commit is also fsynced (power loss).
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

import lmdb

from poolai.mesh.wire import field, message
from poolai.node.credits.policy import Standing
from poolai.node.credits.receipts import MAX_PEER_ID, MAX_RECEIPT, Checked
from poolai.node.credits.retention import Held

SCHEMA_VERSION = 2
DEFAULT_MAP_SIZE = 1 << 30  # address space, not disk: ~1.5 million receipts
_U64 = struct.Struct(">Q")
_STANDING = struct.Struct(">IIII")

# ----------------------------------------------------------------------------- protocol messages

PROTOCOL = "/poolai/ledger/1.0.0"
MAX_PAGE = 256  # receipts per page
MAX_PAGE_BYTES = 512 * 1024  # receipt bytes per page (the server stops before this)
MAX_FRAME = MAX_PAGE_BYTES + 64 * 1024
MAX_CURSOR = (1 << 63) - 1


@message("ledger.fetch")
class Fetch:
    """Receipts the server logged at ``since`` or later; only those ``party`` signed, unless ""."""

    party: str = field(max_len=MAX_PEER_ID, default="")
    since: int = field(min=0, max=MAX_CURSOR, default=0)
    limit: int = field(min=1, max=MAX_PAGE, default=MAX_PAGE)


@message("ledger.page")
class Page:
    """``next`` is the cursor to ask for the rest with; ``more`` says whether there is a rest."""

    receipts: tuple[bytes, ...] = field(max_len=MAX_PAGE)
    next: int = field(min=0, max=MAX_CURSOR)
    more: bool = field()


@message("ledger.sign")
class SignRequest:
    """Please add your signature to this envelope (which carries the sender's)."""

    receipt: bytes = field(max_len=MAX_RECEIPT)


@message("ledger.signed")
class Signed:
    """The envelope with both signatures."""

    receipt: bytes = field(max_len=MAX_RECEIPT)


# ----------------------------------------------------------------------------- store


class LedgerError(Exception):
    """The ledger file is unusable or full, or its disk failed a write (nothing was written)."""


class Ledger:
    """The LMDB receipt store in ``path``. One instance per directory per process."""

    def __init__(self, path: str | os.PathLike[str], *, map_size: int = DEFAULT_MAP_SIZE,
                 durable: bool = True) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            self._env = lmdb.open(str(self.path), map_size=map_size, max_dbs=7, sync=durable,
                                  metasync=durable, readahead=False)
        except lmdb.Error as exc:
            raise LedgerError(f"cannot open the ledger in {self.path}: {exc}") from None
        self._env.reader_check()  # reader slots left by a killed process
        self._receipts = self._env.open_db(b"receipts")
        self._seqs = self._env.open_db(b"seqs")
        self._log = self._env.open_db(b"log")
        self._party = self._env.open_db(b"party")
        self._pending = self._env.open_db(b"pending")
        self._standing = self._env.open_db(b"standing")
        self._info = self._env.open_db(b"info")
        with self._env.begin(write=True, db=self._info) as txn:
            raw = txn.get(b"schema")
            if raw is None:
                txn.put(b"seq", _U64.pack(0))
            elif struct.unpack(">I", raw)[0] == 1:  # schema 1 had no "seqs": index the log
                for key, rid in txn.cursor(db=self._log):
                    txn.put(rid, key, db=self._seqs)
            elif struct.unpack(">I", raw)[0] != SCHEMA_VERSION:
                raise LedgerError(f"{self.path}: unsupported ledger schema {raw.hex()}")
            txn.put(b"schema", struct.pack(">I", SCHEMA_VERSION))

    def close(self) -> None:
        self._env.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------------ receipts
    def add(self, checked: Checked) -> bool:
        """Append a receipt signed by both parties; False if this receipt id is already held."""
        return self.add_many([checked]) == 1

    def add_many(self, receipts: Sequence[Checked], evict: Sequence[Held] = ()) -> int:
        """Append several receipts and delete the ``evict`` ones, in one transaction;
        returns how many receipts were new."""
        for checked in receipts:
            if not checked.complete:
                raise ValueError("the ledger holds only receipts signed by both parties")
        added = 0
        with self._writing() as txn:
            seq = _U64.unpack(txn.get(b"seq", db=self._info))[0]
            for checked in receipts:
                rid = checked.receipt_id
                if not txn.put(rid, checked.raw, overwrite=False, db=self._receipts):
                    continue
                key = _U64.pack(seq)
                txn.put(key, rid, db=self._log)
                txn.put(rid, key, db=self._seqs)
                for peer in {checked.earner, checked.payer}:
                    txn.put(peer.encode() + b"\x00" + key, rid, db=self._party)
                txn.delete(checked.claim_key, db=self._pending)
                seq += 1
                added += 1
            txn.put(b"seq", _U64.pack(seq), db=self._info)
            for held in evict:
                self._delete(txn, held)
        return added

    def evict(self, receipts: Sequence[Held]) -> None:
        """Delete these receipts and their index entries, in one transaction."""
        self.add_many([], receipts)

    @contextlib.contextmanager
    def _writing(self, db: object = None) -> Iterator[lmdb.Transaction]:
        """A write transaction; a full map or a disk that fails the commit (a full disk
        reads as EIO or ENOSPC) raises LedgerError, and nothing is written."""
        try:
            with self._env.begin(db=db, write=True) as txn:
                yield txn
        except lmdb.MapFullError:
            raise LedgerError(f"the ledger in {self.path} is full") from None
        except lmdb.Error as exc:
            raise LedgerError(f"the ledger in {self.path} could not be written: {exc}") from None

    def _delete(self, txn: lmdb.Transaction, held: Held) -> None:
        key = txn.pop(held.receipt_id, db=self._seqs)
        if key is None:
            return  # not held (deleted before)
        txn.delete(held.receipt_id, db=self._receipts)
        txn.delete(key, db=self._log)
        for peer in set(held.parties):
            txn.delete(peer.encode() + b"\x00" + key, db=self._party)

    def get(self, receipt_id: bytes) -> bytes | None:
        with self._env.begin(db=self._receipts) as txn:
            return txn.get(receipt_id)

    def __contains__(self, receipt_id: bytes) -> bool:
        return self.get(receipt_id) is not None

    def __len__(self) -> int:
        with self._env.begin() as txn:
            return txn.stat(self._receipts)["entries"]

    @property
    def next_seq(self) -> int:
        """The sequence number the next new receipt gets (= receipts ever added)."""
        with self._env.begin(db=self._info) as txn:
            return _U64.unpack(txn.get(b"seq"))[0]

    def receipts(self) -> list[bytes]:
        """Every receipt held, in arrival order."""
        return self.page(0, limit=MAX_CURSOR, max_bytes=MAX_CURSOR)[0]

    def page(self, since: int, *, party: str = "", limit: int = MAX_PAGE,
             max_bytes: int = MAX_PAGE_BYTES) -> tuple[list[bytes], int, bool]:
        """(receipts logged at ``since`` or later, next cursor, more left) within the bounds.

        With ``party`` only receipts that peer signed. At least one receipt is returned
        when any is left, however large, so paging always advances.
        """
        out: list[bytes] = []
        size = 0
        prefix = party.encode() + b"\x00" if party else b""
        db = self._party if party else self._log
        next_cursor = since
        with self._env.begin() as txn:
            cursor = txn.cursor(db=db)
            if not cursor.set_range(prefix + _U64.pack(min(since, MAX_CURSOR))):
                return out, next_cursor, False
            for key, rid in cursor.iternext():
                if not key.startswith(prefix) or len(key) != len(prefix) + 8:
                    break
                raw = txn.get(rid, db=self._receipts)
                if len(out) >= limit or (out and size + len(raw) > max_bytes):
                    return out, next_cursor, True
                out.append(raw)
                size += len(raw)
                next_cursor = _U64.unpack(key[len(prefix):])[0] + 1
        return out, next_cursor, False

    # ------------------------------------------------------------------ claims awaiting a signature
    def put_pending(self, checked: Checked) -> None:
        """Keep a receipt that carries only our signature until the other party signs it."""
        with self._writing(self._pending) as txn:
            txn.put(checked.claim_key, checked.raw)

    def drop_pending(self, claim_key: bytes) -> None:
        with self._writing(self._pending) as txn:
            txn.delete(claim_key)

    def pending(self) -> list[bytes]:
        with self._env.begin(db=self._pending) as txn:
            return [bytes(v) for _, v in txn.cursor()]

    # ------------------------------------------------------------------ reputation
    def standing(self, peer: str) -> Standing:
        with self._env.begin(db=self._standing) as txn:
            raw = txn.get(peer.encode())
        return Standing(*_STANDING.unpack(raw)) if raw else Standing()

    def put_standings(self, standings: dict[str, Standing]) -> None:
        """Replace the standings of the peers given (counts saturate at 2^32 - 1)."""
        if not standings:
            return
        with self._writing(self._standing) as txn:
            for peer, s in standings.items():
                counts = [min(v, 0xFFFFFFFF) for v in (s.verified, s.agreed, s.mismatched, s.failed)]
                txn.put(peer.encode(), _STANDING.pack(*counts))

    def standings(self) -> dict[str, Standing]:
        with self._env.begin(db=self._standing) as txn:
            return {bytes(k).decode(): Standing(*_STANDING.unpack(v)) for k, v in txn.cursor()}
