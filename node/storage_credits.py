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
"""

from __future__ import annotations

import dataclasses

from poolai.node.credits import EPOCH_S, MAX_AUDITS, AuditEvidence
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
