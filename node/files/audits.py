"""Which holders earned storage credit: passed audits, grouped by holder and epoch.

Pure code (no I/O, time passed in). The storage upkeep feeds every audit it
ran into an :class:`AuditLedger`; once an epoch (a unix hour,
``credits.EPOCH_S``) is over, :meth:`AuditLedger.due` hands back one
:class:`EarnedClaim` per holder that was audited in that epoch and passed
every audit, and forgets the epoch. A holder that failed any audit in an
epoch earns nothing for it. The claim carries the evidence the credits
service needs (``credits.AuditEvidence``): share id, range, nonce, the
holder's digest and when it answered; at most ``credits.MAX_AUDITS`` of
them, spread over the epoch (the first and last are always kept).

``bytes_held`` and ``shares`` count the distinct shares of ours the holder
was found holding (by ``has`` or by an audit) during the epoch.

:meth:`AuditLedger.to_bytes` / :meth:`AuditLedger.from_bytes` turn the ledger into
msgpack and back, so that the upkeep can keep it on disk and a restart in the
middle of an hour loses none of its audits.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack

from poolai.node.credits.receipts import EPOCH_S, MAX_AUDITS, AuditEvidence
from poolai.storage.upkeep import AuditProof


@dataclasses.dataclass(frozen=True, slots=True)
class EarnedClaim:
    holder: bytes
    epoch: int
    bytes_held: int
    shares: int
    audits: tuple[AuditEvidence, ...]


@dataclasses.dataclass(slots=True)
class _Epoch:
    held: dict[bytes, int] = dataclasses.field(default_factory=dict)  # share id -> size
    passed: list[AuditProof] = dataclasses.field(default_factory=list)
    failed: bool = False


def epoch_of(at: float) -> int:
    return int(at // EPOCH_S)


def _spread(proofs: list[AuditProof], limit: int) -> list[AuditProof]:
    """At most ``limit`` proofs, evenly spaced in time, distinct nonces."""
    unique: list[AuditProof] = []
    seen: set[bytes] = set()
    for p in sorted(proofs, key=lambda p: p.at):
        if p.nonce not in seen:
            seen.add(p.nonce)
            unique.append(p)
    if len(unique) <= limit:
        return unique
    step = (len(unique) - 1) / (limit - 1)
    return [unique[round(j * step)] for j in range(limit)]


class AuditLedger:
    """Audit outcomes by (holder, epoch); see the module doc."""

    def __init__(self, me: bytes, *, max_epochs: int = 48) -> None:
        self.me = me
        self.max_epochs = max_epochs
        self._book: dict[tuple[bytes, int], _Epoch] = {}

    def __len__(self) -> int:
        return len(self._book)

    def held(self, holder: bytes, share_id: bytes, size: int, at: float) -> None:
        """``holder`` was found holding one of our shares at ``at``."""
        if holder != self.me:
            self._entry(holder, at).held[share_id] = size

    def audited(self, proof: AuditProof) -> None:
        """Record one audit's outcome (own shares are not credited)."""
        if proof.holder == self.me:
            return
        entry = self._entry(proof.holder, proof.at)
        if proof.passed:
            entry.passed.append(proof)
            entry.held[proof.share_id] = proof.share_size
        else:
            entry.failed = True

    def due(self, now: float) -> list[EarnedClaim]:
        """Claims for every epoch that ended before ``now``; those epochs are forgotten."""
        current = epoch_of(now)
        out = []
        for key in sorted(k for k in self._book if k[1] < current):
            entry = self._book.pop(key)
            if entry.failed or not entry.passed:
                continue
            audits = tuple(
                AuditEvidence(share_id=p.share_id, offset=p.offset, length=p.length, nonce=p.nonce,
                              digest=p.digest, at=p.at)
                for p in _spread(entry.passed, MAX_AUDITS)
            )
            out.append(EarnedClaim(key[0], key[1], sum(entry.held.values()), len(entry.held), audits))
        return out

    def to_bytes(self) -> bytes:
        """The ledger as msgpack (see :meth:`from_bytes`)."""
        epochs = [[holder, epoch, [[k, v] for k, v in e.held.items()],
                   [dataclasses.astuple(p) for p in e.passed], e.failed]
                  for (holder, epoch), e in self._book.items()]
        return msgpack.packb({"v": 1, "epochs": epochs}, use_bin_type=True)

    @classmethod
    def from_bytes(cls, me: bytes, data: bytes, *, max_epochs: int = 48) -> AuditLedger:
        """A ledger saved by :meth:`to_bytes`; ValueError when ``data`` is not one."""
        ledger = cls(me, max_epochs=max_epochs)
        try:
            doc = msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=len(data))
            if not isinstance(doc, dict) or doc.get("v") != 1:
                raise ValueError("not an audit ledger, version 1")
            for holder, epoch, held, passed, failed in doc["epochs"]:
                entry = _Epoch({_bytes(k): _int(v) for k, v in held},
                               [_proof(p) for p in passed], bool(failed))
                ledger._book[(_bytes(holder), _int(epoch))] = entry
        except (KeyError, TypeError, ValueError, msgpack.UnpackException) as exc:
            raise ValueError(f"audit ledger: {exc}") from None
        return ledger

    def _entry(self, holder: bytes, at: float) -> _Epoch:
        key = (holder, epoch_of(at))
        entry = self._book.get(key)
        if entry is None:
            if len({e for _, e in self._book}) >= self.max_epochs:  # a clock gone wild: stay bounded
                oldest = min(e for _, e in self._book)
                for k in [k for k in self._book if k[1] == oldest]:
                    del self._book[k]
            entry = self._book[key] = _Epoch()
        return entry


def _bytes(value: Any) -> bytes:
    if not isinstance(value, bytes) or len(value) > 64:
        raise ValueError("expected a short byte string")
    return value


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError("expected a non-negative integer")
    return value


def _proof(fields: Any) -> AuditProof:
    index, holder, share_id, size, offset, length, nonce, digest, passed, at = fields
    if not isinstance(at, float | int) or not isinstance(passed, bool):
        raise ValueError("malformed audit")
    return AuditProof(_int(index), _bytes(holder), _bytes(share_id), _int(size), _int(offset),
                      _int(length), _bytes(nonce), _bytes(digest), passed, float(at))
