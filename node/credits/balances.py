"""Balances from evidence: every peer's earned and spent credits, from a set of receipts.

Each receipt is checked (both signatures, distinct parties: :func:`credits.check_receipt`)
and each claim is paid once: among receipts with one claim key the smallest
(credit, receipt id) counts, and a receipt id seen again is a replay that adds
nothing. Sums are integer millicredits, so the result depends only on the *set* of
receipts, never on the order they arrived in: every node holding the same receipts
computes the same balances for every peer. Pure code: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from poolai.node.credits.receipts import Checked, ReceiptRejected, check_receipt


@dataclass(frozen=True, slots=True)
class Account:
    """One peer's totals in millicredits."""

    earned: int = 0
    spent: int = 0
    receipts: int = 0

    @property
    def balance(self) -> int:
        return self.earned - self.spent


@dataclass(frozen=True, slots=True)
class Balances:
    """Every peer's account as the given receipts prove it, and what did not count."""

    accounts: dict[str, Account]
    counted: tuple[Checked, ...]  # the receipts that count, in receipt id order
    rejected: dict[str, int]  # reason -> receipts that failed a check
    replays: int  # envelopes seen again (same receipt id)
    superseded: int  # receipts for a claim another receipt already pays

    def account(self, peer: str) -> Account:
        return self.accounts.get(peer, Account())


class Tally:
    """Balances kept up to date one receipt at a time (what :func:`compute_balances` folds).

    Only complete receipts that passed :func:`check_receipt` go in, so adding never
    re-verifies a signature. For each claim key the smallest (credit, receipt id) wins.
    """

    def __init__(self) -> None:
        self._seen: set[bytes] = set()
        self._best: dict[bytes, Checked] = {}
        self._accounts: dict[str, Account] = {}
        self.replays = 0
        self.superseded = 0

    def __len__(self) -> int:
        return len(self._best)

    def add(self, checked: Checked) -> bool:
        """Count ``checked``; False when it changes nothing (a replay, or a claim already paid)."""
        if not checked.complete:
            raise ValueError("only receipts signed by both parties count")
        if checked.receipt_id in self._seen:
            self.replays += 1
            return False
        self._seen.add(checked.receipt_id)
        held = self._best.get(checked.claim_key)
        if held is not None:
            self.superseded += 1
            if (held.credit, held.receipt_id) <= (checked.credit, checked.receipt_id):
                return False
            self._post(held, -1)
        self._best[checked.claim_key] = checked
        self._post(checked, 1)
        return True

    def discard(self, receipt_id: bytes, claim_key: bytes) -> None:
        """Forget a receipt the ledger evicted: it no longer counts, and may be added again."""
        self._seen.discard(receipt_id)
        held = self._best.get(claim_key)
        if held is not None and held.receipt_id == receipt_id:
            del self._best[claim_key]
            self._post(held, -1)

    def seen(self, receipt_id: bytes) -> bool:
        """Whether this receipt was added before (counted or not)."""
        return receipt_id in self._seen

    def counted(self, claim_key: bytes) -> Checked | None:
        """The receipt that pays ``claim_key``, if any."""
        return self._best.get(claim_key)

    def account(self, peer: str) -> Account:
        return self._accounts.get(peer, Account())

    def accounts(self) -> dict[str, Account]:
        return dict(self._accounts)

    def receipts_of(self, peer: str) -> list[Checked]:
        """The counted receipts ``peer`` is a party to."""
        return [c for c in self._best.values() if peer in (c.earner, c.payer)]

    def balances(self, rejected: dict[str, int] | None = None) -> Balances:
        counted = tuple(sorted(self._best.values(), key=lambda c: c.receipt_id))
        return Balances(dict(self._accounts), counted, dict(rejected or {}), self.replays,
                        self.superseded)

    def _post(self, c: Checked, sign: int) -> None:
        e = self.account(c.earner)
        self._set(c.earner, Account(e.earned + sign * c.credit, e.spent, e.receipts + sign))
        p = self.account(c.payer)
        self._set(c.payer, Account(p.earned, p.spent + sign * c.credit, p.receipts + sign))

    def _set(self, peer: str, account: Account) -> None:
        if account.receipts:
            self._accounts[peer] = account
        else:  # no receipt left: no account (so evicted peers leave nothing behind)
            self._accounts.pop(peer, None)


def check_all(receipts: Sequence[bytes], *, complete: bool = True
              ) -> tuple[list[Checked], dict[str, int]]:
    """The receipts that pass :func:`check_receipt`, and how many failed, by reason."""
    good, rejected = [], {}
    for data in receipts:
        try:
            good.append(check_receipt(data, complete=complete))
        except ReceiptRejected as exc:
            rejected[exc.reason] = rejected.get(exc.reason, 0) + 1
    return good, rejected


def compute_balances(receipts: Iterable[bytes | Checked]) -> Balances:
    """Balances from evidence: check every receipt, count each claim once, sum exactly.

    The result depends only on the *set* of receipts given, never on their order.
    """
    rejected: dict[str, int] = {}
    tally = Tally()
    for item in receipts:
        if isinstance(item, Checked):
            if not item.complete:
                rejected["unsigned"] = rejected.get("unsigned", 0) + 1
                continue
            tally.add(item)
            continue
        try:
            tally.add(check_receipt(item))
        except ReceiptRejected as exc:
            rejected[exc.reason] = rejected.get(exc.reason, 0) + 1
    return tally.balances(rejected)
