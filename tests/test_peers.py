"""The peer book: backoff, ordering, eviction and persistence."""

from __future__ import annotations

from poolai.mesh.peers import BACKOFF_MAX, PeerBook


def test_backoff_doubles_and_caps():
    book = PeerBook("me")
    book.add("p", ["/ip4/127.0.0.1/tcp/1"])
    delays = [book.mark_failed("p", 100.0) for _ in range(10)]
    assert delays[:4] == [1.0, 2.0, 4.0, 8.0]
    assert max(delays) == BACKOFF_MAX
    assert book.due(100.0, set(), 10) == []
    assert [e.peer_id for e in book.due(100.0 + BACKOFF_MAX, set(), 10)] == ["p"]
    book.mark_connected("p", 200.0)
    assert book.get("p").failures == 0


def test_bootstrap_first_then_recent():
    book = PeerBook("me")
    book.add("old", ["/a"])
    book.add("new", ["/b"])
    book.add("boot", ["/c"], bootstrap=True)
    book.mark_connected("old", 10.0)
    book.mark_connected("new", 20.0)
    assert [e.peer_id for e in book.due(30.0, set(), 3)] == ["boot", "new", "old"]
    assert [e.peer_id for e in book.due(30.0, {"boot"}, 1)] == ["new"]


def test_self_is_ignored_and_capacity_evicts_oldest():
    book = PeerBook("me", capacity=2)
    book.add("me", ["/x"])
    assert len(book) == 0
    book.add("a", ["/a"])
    book.add("b", ["/b"])
    book.mark_connected("b", 5.0)
    book.add("c", ["/c"])
    assert "a" not in book and {"b", "c"} <= {e.peer_id for e in book.entries()}


def test_snapshot_round_trip_skips_garbage():
    book = PeerBook("me")
    book.add("a", ["/ip4/127.0.0.1/tcp/1"])
    book.mark_connected("a", 42.0)
    book.add("never", ["/x"])  # never contacted: not worth persisting
    snap = book.snapshot()
    snap["peers"].append({"peer_id": 5, "addrs": "nope"})
    other = PeerBook("me")
    assert other.restore(snap) == 1
    assert other.get("a").addrs == ["/ip4/127.0.0.1/tcp/1"] and other.get("a").last_seen == 42.0
    assert other.restore({"version": 99}) == 0
    assert other.restore("junk") == 0


def test_a_new_address_ends_the_backoff():
    book = PeerBook("me")
    book.add("p", ["/ip4/192.168.1.10/tcp/4001"])
    book.mark_failed("p", 100.0)
    book.mark_failed("p", 101.0)
    assert book.due(101.0, set(), 10) == []
    book.add("p", ["/ip4/192.168.1.10/tcp/4001"])  # nothing new
    assert book.due(101.0, set(), 10) == []
    book.add("p", ["/ip4/203.0.113.10/tcp/4001/p2p/R/p2p-circuit"])
    assert [e.peer_id for e in book.due(101.0, set(), 10)] == ["p"]


def test_wildcard_addresses_learned_from_peers_are_dropped():
    book = PeerBook("me")
    book.add("a", ["/ip4/0.0.0.0/tcp/4003", "/ip4/127.0.0.1/tcp/4003", "/ip6/::/tcp/4003"])
    assert book.get("a").addrs == ["/ip4/127.0.0.1/tcp/4003"]
    book.add("b", ["/ip4/0.0.0.0/tcp/4004"], bootstrap=True)  # what the owner typed is kept
    assert book.get("b").addrs == ["/ip4/0.0.0.0/tcp/4004"]
