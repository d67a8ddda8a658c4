"""Grants: the pure rules (storage/grants.py), then the share store applying them on real LMDB.

What a holder lets each peer keep is bounded per peer (its grant) and for all peers
without credit together (the newcomers' pool); the per-peer table is bounded; expired
and over-grant shares go first when space is needed; the accounts persist with the
shares, in the same transactions, across reopening and SIGKILLs.
"""

from __future__ import annotations

import hashlib
import random
import signal
import subprocess
import sys
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poolai.storage import grants, integrity
from poolai.storage.errors import GrantExceeded, QuotaExceeded
from poolai.storage.grants import Account, GrantPolicy, Holding
from poolai.storage.store import ShareStore

FILE = hashlib.sha256(b"file").digest()
POLICY = GrantPolicy()
QUOTA = 1_600_000  # newcomer 100 kB, pool 800 kB, one peer at most 800 kB


def share(seed: int, size: int = 10_000) -> tuple[bytes, bytes]:
    data = random.Random(seed).randbytes(size)
    return integrity.share_id(data), data


# ------------------------------------------------------------------------------ pure rules

def test_grant_grows_with_credit_up_to_the_peer_cap():
    assert POLICY.grant(QUOTA, Account()) == QUOTA // 16
    assert POLICY.grant(QUOTA, Account(credit=200_000)) == QUOTA // 16 + 400_000
    assert POLICY.grant(QUOTA, Account(credit=10**9)) == QUOTA // 2


accounts = st.builds(Account, used=st.integers(0, 2 * QUOTA), shares=st.integers(0, 100),
                     credit=st.integers(0, QUOTA))


@given(account=accounts, size=st.integers(1, QUOTA), pool_used=st.integers(0, QUOTA),
       rows=st.integers(0, 5000))
def test_an_admitted_put_stays_within_the_grant_and_the_pool(account, size, pool_used, rows):
    refusal = grants.admit(POLICY, QUOTA, account, rows, pool_used, size)
    after = Account(account.used + size, account.shares + 1, account.credit)
    if refusal is None:
        assert after.used <= POLICY.grant(QUOTA, account)
        growth = POLICY.unearned(after) - POLICY.unearned(account)
        assert growth == 0 or pool_used + growth <= POLICY.pool(QUOTA)
    else:
        assert "refused" in refusal


@given(rows=st.integers(0, 5000))
def test_a_newcomer_needs_room_in_the_table(rows):
    refusal = grants.admit(POLICY, QUOTA, None, rows, 0, 1)
    assert (refusal is None) == (rows < POLICY.max_accounts - POLICY.credited_accounts)


holdings = st.lists(st.builds(Holding, share_id=st.binary(min_size=32, max_size=32),
                              owner=st.sampled_from(["", "a", "b", "c"]), size=st.integers(1, 50_000),
                              lease_expiry=st.integers(0, 200)), max_size=40, unique_by=lambda h: h.share_id)


@settings(max_examples=200)
@given(held=holdings, credits=st.dictionaries(st.sampled_from("abc"), st.integers(0, 100_000)),
       now=st.integers(0, 200), need=st.integers(1, 500_000))
def test_eviction_takes_expired_then_over_grant_shares_only(held, credits, now, need):
    table: dict[str, Account] = {}
    for h in held:
        if h.owner:
            a = table.get(h.owner, Account(credit=credits.get(h.owner, 0)))
            table[h.owner] = Account(a.used + h.size, a.shares + 1, a.credit)
    chosen = grants.eviction_order(POLICY, QUOTA, held, table, now, need)
    expired = [h for h in held if h.lease_expiry <= now]
    # expired shares come first, and all of them are taken before anything live
    live_at = next((i for i, h in enumerate(chosen) if h.lease_expiry > now), len(chosen))
    assert all(h.lease_expiry <= now for h in chosen[:live_at])
    if live_at < len(chosen):
        assert live_at == len(expired)
    # a live share is taken only from a peer over its grant, never below its grant
    for owner in {h.owner for h in chosen[live_at:]}:
        assert owner and POLICY.over_grant(QUOTA, table[owner]) > 0
        taken = sum(h.size for h in chosen[live_at:] if h.owner == owner)
        last = [h for h in chosen[live_at:] if h.owner == owner][-1]
        assert taken - last.size < POLICY.over_grant(QUOTA, table[owner])
    # no more than needed: the last share taken is the one that reached ``need``
    assert sum(h.size for h in chosen[:-1]) < need or not chosen


@given(lease=st.integers(0, (1 << 64) - 1), now=st.integers(0, 1 << 40))
def test_leases_are_capped(lease, now):
    capped = grants.cap_lease(lease, now, POLICY)
    assert capped <= now + grants.MAX_LEASE_S and capped == min(lease, now + grants.MAX_LEASE_S)


def test_renewal_is_due_when_half_the_longest_lease_is_gone():
    day, cap = 86400, grants.MAX_LEASE_S
    # a lease within the cap is held whole from the start: never renewed
    assert not grants.renewal_due(7 * day, 7 * day, 0)
    # a year's lease: holders keep 31 days; renewed once less than half of that is left
    assert not grants.renewal_due(cap, 365 * day, 0)
    assert not grants.renewal_due(cap, 365 * day, cap - cap // 2 - 1)
    assert grants.renewal_due(cap, 365 * day, cap - cap // 2 + 1)
    assert not grants.renewal_due(cap, 365 * day, 366 * day)  # the file's lease is over


def test_policy_rejects_nonsense():
    for bad in ({"ratio": -1}, {"newcomer_share": 0.6}, {"credited_accounts": 4096}, {"max_lease_s": 5}):
        with pytest.raises(ValueError):
            GrantPolicy(**bad)


# ------------------------------------------------------------------------------ on real LMDB

@pytest.fixture
def store(tmp_path):
    with ShareStore(tmp_path / "db", quota_bytes=QUOTA, grant_policy=POLICY, durable=False) as s:
        yield s


def fill(store: ShareStore, owner: str, seed: int, *, lease: int = 10**9, size: int = 10_000) -> int:
    """Put shares from ``owner`` until it is refused; returns how many were stored."""
    stored = 0
    while True:
        sid, data = share(seed * 100_000 + stored, size)
        try:
            store.put(sid, data, file_id=FILE, lease_expiry=lease, owner=owner, now=0)
        except GrantExceeded:
            return stored
        stored += 1


def test_a_peer_is_stopped_at_its_grant_and_others_still_store(store):
    assert fill(store, "squatter", 1) == 10  # 100 kB newcomer allowance, 10 kB shares
    sid, data = share(99)
    with pytest.raises(GrantExceeded, match="grants it"):
        store.admit(sid, len(data), owner="squatter", now=0)
    store.admit(sid, len(data), owner="honest", now=0)
    assert store.put(sid, data, file_id=FILE, lease_expiry=10, owner="honest", now=0)
    # storing a share it already holds is no new charge, whoever sends it
    assert not store.put(sid, data, file_id=FILE, lease_expiry=20, owner="squatter", now=0)
    table = store.accounts()
    assert table["squatter"] == Account(100_000, 10, 0) and table["honest"] == Account(10_000, 1, 0)
    assert store.record(sid).owner == "honest" and store.record(sid).lease_expiry == 20
    # this node's own shares are charged to nobody: only the quota bounds them
    own, body = share(98, 300_000)
    assert store.put(own, body, file_id=FILE, lease_expiry=10)
    assert set(store.accounts()) == {"squatter", "honest"}


def test_newcomers_together_stay_within_the_pool(store):
    sybils = [fill(store, f"sybil{i}", i) for i in range(12)]
    stats = store.grant_statistics(top=3)
    assert sum(sybils) * 10_000 <= POLICY.pool(QUOTA) == stats.pool_bytes == stats.pool_used
    assert sybils[-1] == 0 and stats.accounts == 8
    assert [p for p, _, _ in stats.top] == ["sybil0", "sybil1", "sybil2"]
    # a peer that keeps our shares earns room outside the full pool: 2 x 50 kB
    store.set_credits({"friend": 50_000})
    assert store.grant_statistics().pool_used == POLICY.pool(QUOTA)
    assert fill(store, "friend", 50) == 10
    assert store.accounts()["friend"] == Account(100_000, 10, 50_000)


def test_expired_then_over_grant_shares_are_evicted_when_space_is_needed(store):
    store.set_credits({"old": 300_000, "keeper": 400_000})
    assert fill(store, "old", 1, lease=50) == 70  # 100 kB + 600 kB earned
    for seed in range(70):
        sid, body = share(2000 + seed)
        store.put(sid, body, file_id=FILE, lease_expiry=10**9, owner="keeper", now=0)
    assert fill(store, "late", 3, lease=10**9) == 10
    own, body = share(6, 100_000)
    store.put(own, body, file_id=FILE, lease_expiry=10**9, now=0)  # the store is full now
    big, data = share(7, 400_000)
    with pytest.raises(QuotaExceeded):  # now=0: nothing expired, nobody over its grant
        store.put(big, data, file_id=FILE, lease_expiry=10**9, now=0)
    store.set_credits({"keeper": 400_000})  # "old" stopped keeping our shares
    assert store.accounts()["old"] == Account(700_000, 70, 0)
    # "keeper" grows within its grant: room comes from "old" (over its 100 kB grant) only
    sid, body = share(8, 60_000)
    store.admit(sid, len(body), owner="keeper", now=0)
    assert store.put(sid, body, file_id=FILE, lease_expiry=10**9, owner="keeper", now=0)
    assert store.accounts()["old"] == Account(640_000, 64, 0)
    assert store.accounts()["keeper"].used == 760_000 and store.accounts()["late"].used == 100_000
    # once "old"'s leases have run out, all of them may go, before anything else
    assert store.put(big, data, file_id=FILE, lease_expiry=10**9, now=51)
    assert store.accounts()["old"] == Account(240_000, 24, 0)
    assert store.accounts()["keeper"].used == 760_000 and store.accounts()["late"].used == 100_000
    assert store.grant_statistics().evicted == 46
    assert store.statistics().bytes == QUOTA


def test_a_full_store_refuses_before_the_body_and_scans_once(store):
    store.set_credits({"a": 800_000})
    assert fill(store, "a", 1) == 80
    assert fill(store, "b", 2) == 10
    assert fill(store, "c", 3) == 10  # a: 800 kB (its cap), b and c: 100 kB each
    big, data = share(9, 700_000)
    for _ in range(3):
        with pytest.raises(QuotaExceeded):
            store.admit(big, len(data), now=5)  # this node's own: only the quota bounds it
    assert store._no_victims is not None  # nothing to evict until a lease runs out


def test_accounts_persist_and_match_the_shares(tmp_path):
    path = tmp_path / "db"
    with ShareStore(path, quota_bytes=QUOTA, grant_policy=POLICY) as s:
        s.set_credits({"friend": 10_000})
        fill(s, "friend", 1)
        fill(s, "stranger", 2, lease=5)
        before = s.accounts()
        assert s.gc(10).shares == 10
    with ShareStore(path, quota_bytes=QUOTA, grant_policy=POLICY) as s:
        assert s.accounts() == {"friend": before["friend"]}
        assert_accounts_match(s)


def assert_accounts_match(s: ShareStore) -> None:
    used: dict[str, list[int]] = {}
    for sid in s.share_ids():
        rec = s.record(sid)
        if rec.owner:
            used.setdefault(rec.owner, [0, 0])
            used[rec.owner][0] += rec.size
            used[rec.owner][1] += 1
    table = s.accounts()
    assert {p: [a.used, a.shares] for p, a in table.items() if a.used} == used
    pool = sum(POLICY.unearned(a) for a in table.values())
    assert s.grant_statistics().pool_used == pool


_WRITER = textwrap.dedent(
    """
    import hashlib, random, sys
    from poolai.storage import integrity
    from poolai.storage.errors import GrantExceeded, QuotaExceeded
    from poolai.storage.grants import GrantPolicy
    from poolai.storage.store import ShareStore
    path, seed = sys.argv[1], int(sys.argv[2])
    rng = random.Random(seed)
    store = ShareStore(path, quota_bytes=1_600_000, grant_policy=GrantPolicy())
    n = 0
    while True:
        data = rng.randbytes(rng.randrange(1000, 30000))
        owner = rng.choice(["a", "b", "c", "d"])
        try:
            store.put(integrity.share_id(data), data, file_id=b"f" * 32, lease_expiry=rng.randrange(100),
                      owner=owner, now=rng.randrange(100))
        except (GrantExceeded, QuotaExceeded):
            pass
        if rng.random() < 0.2:
            store.set_credits({rng.choice("abcd"): rng.randrange(100_000)})
        if rng.random() < 0.1:
            store.gc(rng.randrange(100))
        n += 1
        print(n, flush=True)
    """
)


@pytest.mark.timeout(120)
def test_sigkill_leaves_accounts_matching_the_shares(tmp_path):
    path = tmp_path / "db"
    for seed in range(3):
        child = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(seed)],
                                 stdout=subprocess.PIPE, text=True)
        for _ in range(random.Random(seed).randrange(20, 200)):  # acknowledged operations
            assert child.stdout.readline()
        child.send_signal(signal.SIGKILL)  # lands inside a later one
        child.wait()
        with ShareStore(path, quota_bytes=1_600_000, grant_policy=POLICY) as s:
            assert_accounts_match(s)
            assert s.statistics().bytes == sum(s.record(i).size for i in s.share_ids())
