"""What a holder lets each peer keep: grants, the newcomers' pool, the lease cap, eviction.

Pure rules (no I/O, time passed in). The share store applies them inside the
write transaction of every put (:mod:`poolai.storage.store`); the node tells
the store each peer's *credit* after every upkeep pass. NETWORK.md section 5
("Grants") states the rule for peer implementers; docs/storage.md says why.

For a holder with quota ``Q`` and a peer ``p`` that has ``used(p)`` bytes of
shares charged to it here (the first peer to store a share pays for it)::

    credit(p)   = bytes of this node's own shares p was found keeping at the last upkeep
                  pass (0 once p failed an audit)
    earned(p)   = ratio x credit(p)
    grant(p)    = min(peer_share x Q, newcomer_share x Q + earned(p))
    unearned(p) = max(0, used(p) - earned(p))          (at most the newcomer allowance)

A put of ``s`` new bytes by ``p`` is admitted when ``used(p) + s <= grant(p)``,
when the unearned bytes of all peers together stay within ``pool_share x Q``
(so a crowd of fresh identities cannot fill the holder either), and when ``p``
has an account or the account table has room; then it must fit the quota,
after evicting (:func:`eviction_order`) expired shares and then shares of
peers over their grant (a grant shrinks when a peer stops keeping our shares).
Shares this node stores for itself are charged to nobody and bounded by the
quota alone. Every lease a peer asks for is capped at ``max_lease_s`` from now
(:func:`cap_lease`); the owner renews (:func:`renewal_due`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

DAY = 86400
MAX_LEASE_S = 31 * DAY  # longest lease a holder grants from now; owners renew at half


@dataclasses.dataclass(frozen=True, slots=True)
class Account:
    """One peer's row in the holder's table: bytes and shares charged to it, its credit."""

    used: int = 0
    shares: int = 0
    credit: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class Holding:
    """An unpinned share as eviction sees it."""

    share_id: bytes
    owner: str  # "" for this node's own (or unattributed) shares
    size: int
    lease_expiry: int


@dataclasses.dataclass(frozen=True, slots=True)
class GrantPolicy:
    """A holder's grant parameters (see the module doc). Raises ValueError on nonsense.

    Defaults for a 10 GiB quota: a newcomer may keep 640 MiB, all newcomers together
    5 GiB, one peer at most 5 GiB; a peer keeping 1 GiB of ours may keep 2.6 GiB here.
    """

    ratio: int = 2  # bytes granted per byte of ours a peer keeps
    newcomer_share: float = 1 / 16  # of the quota, for every peer, credit or none
    pool_share: float = 1 / 2  # of the quota: all peers' unearned bytes together
    peer_share: float = 1 / 2  # of the quota: the most one peer may keep
    max_accounts: int = 4096  # rows in the per-peer table
    credited_accounts: int = 1024  # rows kept for peers with credit (newcomers get the rest)
    max_lease_s: int = MAX_LEASE_S

    def __post_init__(self) -> None:
        if self.ratio < 0 or self.max_lease_s < DAY:
            raise ValueError("ratio must be >= 0 and max_lease_s at least a day")
        if not 0 <= self.newcomer_share <= self.peer_share <= 1 or not 0 <= self.pool_share <= 1:
            raise ValueError("need 0 <= newcomer_share <= peer_share <= 1 and 0 <= pool_share <= 1")
        if not 0 < self.credited_accounts < self.max_accounts:
            raise ValueError("need 0 < credited_accounts < max_accounts")

    def earned(self, account: Account) -> int:
        return self.ratio * account.credit

    def grant(self, quota: int, account: Account) -> int:
        """Bytes ``account``'s peer may keep on a holder with ``quota``."""
        return min(int(quota * self.peer_share), int(quota * self.newcomer_share) + self.earned(account))

    def unearned(self, account: Account) -> int:
        return max(0, account.used - self.earned(account))

    def pool(self, quota: int) -> int:
        return int(quota * self.pool_share)

    def over_grant(self, quota: int, account: Account) -> int:
        """Bytes the peer keeps beyond its grant (evicted first when space is needed)."""
        return max(0, account.used - self.grant(quota, account))


def admit(
    policy: GrantPolicy, quota: int, account: Account | None, accounts: int, pool_used: int, size: int,
) -> str | None:
    """Why ``size`` new bytes from a peer are refused, or None if its grant allows them.

    ``account`` is the peer's row (None: it has none yet), ``accounts`` the rows in the
    table, ``pool_used`` the unearned bytes of all peers together.
    """
    if account is None:
        if accounts >= policy.max_accounts - policy.credited_accounts:
            return f"the holder's table of {accounts} peers is full; try another holder"
        account = Account()
    grant = policy.grant(quota, account)
    if account.used + size > grant:
        return (f"share of {size} bytes refused: this peer keeps {account.used} of the "
                f"{grant} bytes this holder grants it")
    after = dataclasses.replace(account, used=account.used + size)
    growth = policy.unearned(after) - policy.unearned(account)
    if growth and pool_used + growth > policy.pool(quota):
        return (f"share of {size} bytes refused: newcomers keep {pool_used} of the "
                f"{policy.pool(quota)} bytes this holder grants without credit")
    return None


def eviction_order(
    policy: GrantPolicy, quota: int, holdings: Iterable[Holding], accounts: Mapping[str, Account],
    now: int, need: int,
) -> list[Holding]:
    """Which unpinned shares to delete to free ``need`` bytes, in order; may free less.

    Expired shares go first (earliest expiry first), then shares of peers over their
    grant, earliest expiry first, never more of a peer's than its excess. Shares within
    a peer's grant (and this node's own) are never evicted for another's put.
    """
    expired, over = [], []
    for h in holdings:
        if h.lease_expiry <= now:
            expired.append(h)
        elif h.owner and h.owner in accounts and policy.over_grant(quota, accounts[h.owner]):
            over.append(h)
    chosen: list[Holding] = []
    freed = 0
    for h in sorted(expired, key=lambda h: (h.lease_expiry, h.share_id)):
        if freed >= need:
            return chosen
        chosen.append(h)
        freed += h.size
    excess = {owner: policy.over_grant(quota, a) for owner, a in accounts.items()}
    for h in sorted(over, key=lambda h: (h.lease_expiry, h.share_id)):
        if freed >= need:
            break
        if excess[h.owner] > 0:
            chosen.append(h)
            freed += h.size
            excess[h.owner] -= h.size
    return chosen


def cap_lease(lease_expiry: int, now: int, policy: GrantPolicy) -> int:
    """The lease a holder keeps: what was asked, at most ``max_lease_s`` from ``now``."""
    return min(lease_expiry, now + policy.max_lease_s)


def renewal_due(asked_until: int, lease_expiry: int, now: int, max_lease_s: int = MAX_LEASE_S) -> bool:
    """Whether an owner should renew a file's shares now.

    Holders keep them until ``min(asked_until, lease_expiry)`` (``asked_until``: the
    capped expiry they were last asked for). Renew while that is short of the file's
    own lease and less than half the longest lease a holder grants is left.
    """
    held = min(asked_until, lease_expiry)
    return now < lease_expiry and held < lease_expiry and held - now < max_lease_s // 2


def top_accounts(accounts: Mapping[str, Account], limit: int) -> list[tuple[str, Account]]:
    """The ``limit`` accounts keeping the most bytes (ties by credit, then name)."""
    return sorted(accounts.items(), key=lambda kv: (-kv[1].used, -kv[1].credit, kv[0]))[:limit]


def kept_credits(policy: GrantPolicy, credits: Mapping[str, int]) -> dict[str, int]:
    """The credits a holder records: positive ones, the ``credited_accounts`` largest."""
    best = sorted(((c, p) for p, c in credits.items() if c > 0), key=lambda cp: (-cp[0], cp[1]))
    return {p: c for c, p in best[: policy.credited_accounts]}
