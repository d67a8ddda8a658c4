"""The retention rule alone: what a ledger keeps of other peers' receipts, and what it evicts."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poolai.node.credits.retention import Bounds, Held, Retention, wanted

ME = "me"


def held(i: int, a: str, b: str, size: int = 100) -> Held:
    return Held(hashlib.sha256(str(i).encode()).digest(), (a, b), size, b"")


def everyone(_: str) -> bool:
    return True


def test_own_receipts_are_always_stored_and_never_tracked():
    r = Retention(ME, Bounds(per_peer=1, max_receipts=1, max_bytes=4096))
    for i in range(10):
        admission = r.admit(held(i, ME, "x"), tracked=lambda _: False)
        assert admission.store and admission.own and admission.evict == ()
    assert len(r) == 0 and r.bytes == 0


def test_receipts_between_untracked_peers_are_not_stored():
    r = Retention(ME)
    tracked = {"friend"}.__contains__
    assert not r.admit(held(1, "x", "y"), tracked).store
    assert r.admit(held(2, "x", "friend"), tracked).store
    assert r.refused == {"untracked": 1} and len(r) == 1
    assert not r.admit(held(2, "x", "friend"), tracked).store  # held already
    assert wanted(("x", ME), ME, lambda _: False) and not wanted(("x", "y"), ME, lambda _: False)


def test_a_peer_keeps_its_newest_receipts_within_its_budget():
    r = Retention(ME, Bounds(per_peer=3, max_receipts=100))
    evicted = []
    for i in range(5):
        evicted += r.admit(held(i, "flooder", f"throwaway{i}"), everyone).evict
    assert [h.receipt_id for h in evicted] == [held(i, "", "").receipt_id for i in (0, 1)]
    assert r.count("flooder") == 3 and len(r) == 3
    assert r.count("throwaway0") == 0 and r.peers() == 4  # flooder and three partners


def test_the_global_bound_evicts_from_the_peer_named_most():
    r = Retention(ME, Bounds(per_peer=8, max_receipts=10))
    for i in range(4):  # an honest pair, trading now and then
        assert r.admit(held(i, "alice", "bob"), everyone).evict == ()
    for i in range(100, 200):  # a flood: every receipt names the flooder
        r.admit(held(i, "flooder", f"sybil{i}"), everyone)
    assert len(r) == 10 and r.count("alice") == r.count("bob") == 4
    assert r.count("flooder") == 6  # what the honest pair leaves of the bound


def test_the_byte_bound_holds_too():
    r = Retention(ME, Bounds(per_peer=100, max_receipts=100, max_bytes=5000))
    for i in range(50):
        r.admit(held(i, f"p{i % 7}", f"q{i % 5}", size=1000), everyone)
    assert r.bytes <= 5000 and len(r) == 5


def test_a_receipt_the_bound_has_no_room_for_is_not_stored():
    r = Retention(ME, Bounds(per_peer=1, max_receipts=2))
    assert r.admit(held(1, "a", "b"), everyone).store
    assert r.admit(held(2, "c", "d"), everyone).store
    third = r.admit(held(3, "e", "f"), everyone)  # every peer is named once: the oldest goes
    assert third.store and [h.receipt_id for h in third.evict] == [held(1, "", "").receipt_id]


def test_load_returns_what_smaller_bounds_no_longer_admit():
    receipts = [held(i, "flooder", f"s{i}") for i in range(10)] + [held(99, ME, "x")]
    r = Retention(ME, Bounds(per_peer=4, max_receipts=8))
    evict = r.load(receipts)
    assert {h.receipt_id for h in evict} == {h.receipt_id for h in receipts[:6]}
    assert len(r) == 4


def test_remove_forgets_a_receipt():
    r = Retention(ME, Bounds(per_peer=2, max_receipts=4))
    r.admit(held(1, "a", "b"), everyone)
    assert r.remove(held(1, "", "").receipt_id) is not None
    assert (len(r), r.bytes, r.peers(), r.count("a")) == (0, 0, 0, 0)
    assert r.remove(held(1, "", "").receipt_id) is None


def test_bounds_are_checked():
    with pytest.raises(ValueError):
        Bounds(per_peer=0)
    with pytest.raises(ValueError):
        Bounds(per_peer=10, max_receipts=5)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12), st.integers(50, 3000)), max_size=300),
       st.integers(1, 6), st.integers(6, 30))
def test_every_bound_holds_after_every_step(steps, per_peer, max_receipts):
    bounds = Bounds(per_peer=per_peer, max_receipts=max_receipts, max_bytes=8192)
    r = Retention(ME, bounds)
    kept: dict[bytes, Held] = {}
    for i, (a, b, size) in enumerate(steps):
        if a == b:
            continue
        h = held(i, f"p{a}" if a else ME, f"p{b}", size)
        admission = r.admit(h, everyone)
        for gone in admission.evict:
            del kept[gone.receipt_id]
        if admission.store and not admission.own:
            kept[h.receipt_id] = h
        assert set(kept) == {k for k in kept if k in r} and len(kept) == len(r)
        assert len(r) <= max_receipts and r.bytes <= 8192 == bounds.max_bytes
        assert r.bytes == sum(k.size for k in kept.values())
        for peer in {p for k in kept.values() for p in k.parties}:
            assert r.count(peer) == sum(peer in k.parties for k in kept.values()) <= per_peer
