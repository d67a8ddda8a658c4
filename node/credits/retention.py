"""What the ledger keeps, the pure rule: a node's own receipts always, other peers'
receipts only for the peers it tracks, within a per-peer and a total bound.

Why a node holds receipts at all: its **own** (it is earner or payer) are its statement
and its balance, and the evidence it countersigned; a **third-party** receipt (between two
other peers) serves only to estimate a peer's balance, which this node uses to order the
jobs that peer offers it (:func:`~poolai.node.credits.policy.priority_for`) and shows on
``/api/credits/balances``. Reputation is this node's own observation and needs none.

The rule (:class:`Retention`, stepped by the credits service):

1. **Own receipts** are always kept and never evicted. No peer can add to them: each
   carries this node's signature, which it gives once per claim.
2. A third-party receipt is stored only when one of its parties is **tracked**: a peer
   this node holds a receipt with, or one it is connected to (the peers that can offer
   it jobs). Receipts between two strangers are not stored, so they are not served on.
3. Of the third-party receipts naming one peer, at most :attr:`Bounds.per_peer` are
   kept, the newest: a new one evicts that peer's oldest. A receipt names two peers and
   counts against both.
4. All third-party receipts together stay within :attr:`Bounds.max_receipts` and
   :attr:`Bounds.max_bytes` (envelope bytes). Past either, the oldest receipt of the peer
   named by the most receipts goes first, so a peer flooding with throwaway partners
   (each flood receipt names it) loses its own receipts before a peer with a few.
5. A third-party receipt that another receipt for the same claim supersedes does not
   count, so it is not kept (the service decides that from the tally).

Everything here is in memory and bounded by the same numbers: one entry per kept
third-party receipt, one counter per peer those receipts name.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

DISK_BOUND = 32 << 20  # what the default bounds cost on disk at most, own receipts aside


@dataclass(frozen=True, slots=True)
class Bounds:
    """How much of other peers' evidence a node keeps (rule 3 and 4)."""

    # A node re-checks every receipt's signatures when it starts (~0.2 ms a receipt here):
    # 8,192 receipts keep that load to about 2 s, and their LMDB file, with the pages
    # evictions free and LMDB reuses, under DISK_BOUND (measured: 20.5 MiB, flat from the
    # 100th to the 400th round of a flood churning a full ledger, 256 receipts a round).
    per_peer: int = 1024  # third-party receipts naming one peer
    max_receipts: int = 8192  # third-party receipts in all
    max_bytes: int = 8 << 20  # their envelopes' bytes (a job receipt is ~550 bytes)

    def __post_init__(self) -> None:
        if not 1 <= self.per_peer <= self.max_receipts or self.max_bytes < 4096:
            raise ValueError("need 1 <= per_peer <= max_receipts and max_bytes >= 4096")


@dataclass(frozen=True, slots=True)
class Held:
    """What the rule knows of one kept third-party receipt."""

    receipt_id: bytes
    parties: tuple[str, str]  # earner, payer
    size: int  # envelope bytes
    claim_key: bytes = b""


@dataclass(frozen=True, slots=True)
class Admission:
    """The rule's answer for one receipt: store it or not, and what to evict for it."""

    store: bool
    own: bool = False
    reason: str = ""  # why not stored: "untracked", "held"
    evict: tuple[Held, ...] = field(default=())


def wanted(parties: tuple[str, str], me: str, tracked: Callable[[str], bool]) -> bool:
    """Whether a receipt between ``parties`` is worth checking and storing at all (rules 1-2)."""
    return me in parties or any(tracked(p) for p in parties)


class Retention:
    """The third-party receipts a ledger keeps, and the rule that keeps them bounded.

    :meth:`admit` decides for one receipt and updates the state as if the decision
    were carried out; the caller stores the receipt and deletes ``evict`` in one
    transaction. :meth:`remove` forgets one receipt the caller dropped for another reason.
    """

    def __init__(self, me: str, bounds: Bounds = Bounds()) -> None:
        self.me = me
        self.bounds = bounds
        self._held: OrderedDict[bytes, Held] = OrderedDict()  # arrival order, oldest first
        self._by_peer: dict[str, OrderedDict[bytes, None]] = {}
        self._count_peers: dict[int, dict[str, None]] = {}  # count -> peers named that often
        self._top = 0  # the largest count
        self.bytes = 0
        self.evicted = 0
        self.refused: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, receipt_id: bytes) -> bool:
        return receipt_id in self._held

    def count(self, peer: str) -> int:
        """Third-party receipts kept that name ``peer``."""
        held = self._by_peer.get(peer)
        return 0 if held is None else len(held)

    def peers(self) -> int:
        """How many peers the kept third-party receipts name."""
        return len(self._by_peer)

    def admit(self, held: Held, tracked: Callable[[str], bool]) -> Admission:
        """Whether to store this complete, checked receipt, and what to evict for it."""
        receipt_id, parties = held.receipt_id, held.parties
        if self.me in parties:
            return Admission(store=True, own=True)
        if receipt_id in self._held:
            return self._refuse("held")
        if not wanted(parties, self.me, tracked):
            return self._refuse("untracked")
        self._add(held)
        evict: list[Held] = []
        for peer in dict.fromkeys(parties):
            while self.count(peer) > self.bounds.per_peer:
                evict.append(self._remove_oldest(peer))
        while len(self._held) > self.bounds.max_receipts or self.bytes > self.bounds.max_bytes:
            evict.append(self._remove_oldest(self._fullest()))
        self.evicted += len(evict)
        stored = receipt_id in self._held
        if not stored:  # it was the oldest of a full peer: nothing to evict for it
            evict = [h for h in evict if h.receipt_id != receipt_id]
        return Admission(store=stored, evict=tuple(evict), reason="" if stored else "full")

    def load(self, receipts: Iterable[Held]) -> list[Held]:
        """Rebuild the state from a ledger's receipts in arrival order (every peer counts
        as tracked: who is connected is not known yet); returns those the bounds no longer
        admit, which the caller deletes."""
        evict: list[Held] = []
        for held in receipts:
            admission = self.admit(held, tracked=lambda _: True)
            evict.extend(admission.evict)
            if not admission.store:
                evict.append(held)
        return evict

    def remove(self, receipt_id: bytes) -> Held | None:
        """Forget one kept receipt (superseded by another for the same claim)."""
        held = self._held.pop(receipt_id, None)
        if held is not None:
            self._forget(held)
        return held

    def _refuse(self, reason: str) -> Admission:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        return Admission(store=False, reason=reason)

    def _add(self, held: Held) -> None:
        self._held[held.receipt_id] = held
        self.bytes += held.size
        for peer in dict.fromkeys(held.parties):
            mine = self._by_peer.setdefault(peer, OrderedDict())
            self._move(peer, len(mine), len(mine) + 1)
            mine[held.receipt_id] = None

    def _forget(self, held: Held) -> None:
        self.bytes -= held.size
        for peer in dict.fromkeys(held.parties):
            mine = self._by_peer[peer]
            del mine[held.receipt_id]
            self._move(peer, len(mine) + 1, len(mine))
            if not mine:
                del self._by_peer[peer]

    def _remove_oldest(self, peer: str) -> Held:
        receipt_id = next(iter(self._by_peer[peer]))
        held = self._held.pop(receipt_id)
        self._forget(held)
        return held

    def _fullest(self) -> str:
        return next(iter(self._count_peers[self._top]))

    def _move(self, peer: str, old: int, new: int) -> None:
        if old:
            bucket = self._count_peers[old]
            del bucket[peer]
            if not bucket:
                del self._count_peers[old]
        if new:
            self._count_peers.setdefault(new, {})[peer] = None
        if new > self._top:
            self._top = new
        while self._top and self._top not in self._count_peers:
            self._top -= 1
