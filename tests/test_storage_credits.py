"""The audit ledger (pure): which holders earned storage credit for which epoch."""

from __future__ import annotations

import pytest

from poolai.node.credits.receipts import EPOCH_S, MAX_AUDITS
from poolai.node.files.audits import AuditLedger
from poolai.storage.upkeep import AuditProof

ME, A, B = b"me", b"holder-a", b"holder-b"
E = 400_000  # an epoch (unix hour)


def proof(holder: bytes, at: float, passed: bool = True, nonce: int = 0, share: bytes = b"s" * 32):
    return AuditProof(0, holder, share, 1000, 0, 100, nonce.to_bytes(32, "big"), b"d" * 32, passed, at)


def sample_ledger(t: float) -> AuditLedger:
    """A passed one holder's audit, failed another's in the epoch starting at ``t``."""
    ledger = AuditLedger(ME)
    ledger.audited(proof(A, t + 1, nonce=1))
    ledger.audited(proof(B, t + 2, nonce=2))
    ledger.audited(proof(B, t + 3, passed=False, nonce=3))
    ledger.audited(proof(ME, t + 4, nonce=4))  # our own shares earn nothing
    ledger.held(A, b"x" * 32, 500, t + 5)
    return ledger


def test_claims_come_once_after_the_epoch_and_only_for_holders_that_never_failed():
    t = E * EPOCH_S
    ledger = sample_ledger(t)
    assert ledger.due(t + EPOCH_S - 1) == []  # the epoch is not over
    claims = ledger.due(t + EPOCH_S)
    assert [(c.holder, c.epoch, c.shares, c.bytes_held) for c in claims] == [(A, E, 2, 1500)]
    assert [a.nonce for a in claims[0].audits] == [(1).to_bytes(32, "big")]
    assert ledger.due(t + 10 * EPOCH_S) == [] and len(ledger) == 0  # reported once


def test_evidence_is_capped_spread_over_the_epoch_and_has_distinct_nonces():
    ledger = AuditLedger(ME)
    t = E * EPOCH_S
    for i in range(100):
        ledger.audited(proof(A, t + i * 30, nonce=i))
    ledger.audited(proof(A, t + 3000, nonce=5))  # a repeated nonce counts once
    (claim,) = ledger.due((E + 1) * EPOCH_S)
    times = [a.at for a in claim.audits]
    assert len(times) == MAX_AUDITS and times == sorted(times)
    assert times[0] == t and times[-1] == t + 99 * 30
    assert len({a.nonce for a in claim.audits}) == MAX_AUDITS
    assert all(E * EPOCH_S <= a.at < (E + 1) * EPOCH_S for a in claim.audits)


def test_a_runaway_clock_keeps_the_ledger_bounded():
    ledger = AuditLedger(ME, max_epochs=3)
    for e in range(10):
        ledger.audited(proof(A, (E + e) * EPOCH_S, nonce=e))
    assert len(ledger) == 3
    assert [c.epoch for c in ledger.due((E + 20) * EPOCH_S)] == [E + 7, E + 8, E + 9]


def test_a_saved_ledger_gives_the_same_claims_and_junk_is_refused():
    t = E * EPOCH_S
    ledger = sample_ledger(t)
    restored = AuditLedger.from_bytes(ME, ledger.to_bytes())
    assert len(restored) == len(ledger) == 2
    assert restored.due(t + EPOCH_S) == ledger.due(t + EPOCH_S) != []
    good = AuditLedger(ME)
    good.audited(proof(A, t + 1))
    data = good.to_bytes()
    for junk in (b"", b"\xc1", data[:-3], data.replace(b"\xa1v\x01", b"\xa1v\x02")):
        with pytest.raises(ValueError):
            AuditLedger.from_bytes(ME, junk)
