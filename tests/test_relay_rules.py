"""The relay's pure bookkeeping: slots, circuits, the byte bucket, choosing relays."""

from __future__ import annotations

import random

import pytest

from poolai.mesh.circuit import relay_of, relay_transport
from poolai.mesh.discovery import strip_p2p
from poolai.mesh.relay_rules import (
    ByteBucket,
    Refusal,
    RelayLimits,
    RelayTable,
    choose_relays,
    is_private_address,
    renew_at,
)
from poolai.node.relay import rules


def table(**kw) -> RelayTable:
    return RelayTable(RelayLimits(**kw))


def test_a_slot_is_freed_when_its_holder_disconnects_not_at_its_ttl():
    t = table(reservations=2)
    connected = {"a", "b", "c"}
    assert t.reserve("a", 0.0, connected.__contains__) == 0.0 + t.limits.reservation_ttl
    assert isinstance(t.reserve("b", 0.0, connected.__contains__), float)
    assert t.reserve("c", 1.0, connected.__contains__) is Refusal.RESOURCE_LIMIT
    connected.discard("a")  # a's connection closed; its TTL has 899 s to go
    assert isinstance(t.reserve("c", 2.0, connected.__contains__), float)
    assert sorted(t.reserved_peers()) == ["b", "c"]
    assert t.statistics().reservations_refused == 1


def test_renewing_keeps_one_slot():
    t = table(reservations=1)
    assert isinstance(t.reserve("a", 0.0, lambda p: True), float)
    assert t.reserve("a", 100.0, lambda p: True) == 100.0 + t.limits.reservation_ttl
    assert t.reserved_peers() == ["a"]


def test_circuits_need_a_reservation_and_respect_total_and_per_peer_limits():
    t = table(circuits=3, circuits_per_peer=2)
    assert t.open_circuit("s", "d", 0.0) is Refusal.NO_RESERVATION
    t.reserve("d", 0.0, lambda p: True)
    t.reserve("e", 0.0, lambda p: True)
    c1 = t.open_circuit("s", "d", 0.0)
    c2 = t.open_circuit("s2", "d", 0.0)
    assert not isinstance(c1, Refusal) and not isinstance(c2, Refusal)
    assert t.open_circuit("s3", "d", 0.0) is Refusal.RESOURCE_LIMIT  # d is an end of 2 already
    c3 = t.open_circuit("s3", "e", 0.0)
    assert not isinstance(c3, Refusal)
    assert t.open_circuit("s4", "e", 0.0) is Refusal.RESOURCE_LIMIT  # 3 circuits in all
    assert t.close_circuit(c1, timed_out=False) == "closed"
    assert not isinstance(t.open_circuit("s4", "e", 0.0), Refusal)


def test_an_expired_reservation_admits_no_circuit():
    t = table()
    t.reserve("d", 0.0, lambda p: True)
    assert t.open_circuit("s", "d", t.limits.reservation_ttl + 1) is Refusal.NO_RESERVATION


def test_a_circuit_ends_at_its_byte_budget_or_its_time():
    t = table(circuit_bytes=100)
    t.reserve("d", 0.0, lambda p: True)
    c = t.open_circuit("s", "d", 0.0)
    assert not isinstance(c, Refusal)
    assert c.charge(60) and not c.charge(60)
    assert t.close_circuit(c, timed_out=False) == "bytes"
    c = t.open_circuit("s", "d", 0.0)
    assert not isinstance(c, Refusal)
    assert t.close_circuit(c, timed_out=True) == "time"
    stats = t.statistics()
    assert (stats.closed_by_bytes, stats.closed_by_time, stats.bytes_relayed) == (1, 1, 60)


def test_the_bucket_holds_the_long_run_rate_to_its_cap():
    rate = 1000
    bucket = ByteBucket(rate)
    now, sent = 0.0, 0
    while now < 10.0:
        now += bucket.take(100, now)  # the caller waits as told, then sends
        sent += 100
    assert sent <= rate * 10 + bucket.burst + 100
    assert sent >= rate * 10 * 0.95
    assert ByteBucket(0).take(10 << 20, 0.0) == 0.0  # no cap


def test_choose_relays_keeps_current_ones_picks_near_then_spread():
    pos = {"me": 0.0, "a": 10.0, "b": 11.0, "c": 30.0, "d": 300.0}  # ms along a line

    def rtt(p, q):
        return abs(pos[p] - pos["me" if q is None else q])

    rng = random.Random(1)
    assert choose_relays([], ["d", "c", "b", "a"], rtt, rng, want=2) == ["a", "c"]  # near, then apart
    assert choose_relays(["d"], ["d", "a", "b"], rtt, rng, want=2) == ["d", "a"]
    assert choose_relays(["gone"], ["a"], rtt, rng, want=3) == ["a"]
    assert len(choose_relays([], list(pos)[1:], lambda p, q: None, rng, want=9)) == 3


def test_renewal_is_never_a_tight_loop():
    assert renew_at(1000.0, 100.0) == 550.0
    assert renew_at(101.0, 100.0) == 105.0


@pytest.mark.parametrize("ip, private", [
    ("192.168.1.10", True), ("10.1.2.3", True), ("172.20.0.1", True), ("100.64.4.2", True),
    ("127.0.0.1", False), ("203.0.113.10", False), ("198.51.100.130", False), ("8.8.8.8", False),
    ("172.32.0.1", False), ("nonsense", False)])
def test_private_addresses(ip, private):
    assert is_private_address(ip) is private


def test_roles():
    ips = rules.listen_ips(["/ip4/192.168.1.10/tcp/4001", "/ip4/203.0.113.10/tcp/4001/p2p/R/p2p-circuit"])
    assert ips == ["192.168.1.10"]
    assert rules.is_private("auto", None, ips) and not rules.is_private("auto", False, ips)
    assert not rules.is_private("auto", None, ["203.0.113.10"])
    assert not rules.is_private("auto", None, ["127.0.0.1"])  # 0.0.0.0 or loopback: the verdict decides
    assert rules.is_private("auto", True, ["127.0.0.1"])
    assert rules.is_private("on", False, ["203.0.113.10"]) and not rules.is_private("off", True, ips)
    assert rules.serves("auto", private=False, public=True)
    assert not rules.serves("auto", private=True, public=True)
    assert not rules.serves("auto", private=False, public=False)  # not known to be public: wait
    assert rules.serves("on", private=True, public=False)
    assert not rules.serves("off", private=False, public=True)
    assert rules.looks_public(None, ["203.0.113.10"]) and not rules.looks_public(None, ["127.0.0.1"])
    assert not rules.looks_public(None, ["192.168.1.10"]) and rules.looks_public(False, ["127.0.0.1"])


def test_circuit_addresses_keep_their_relay():
    relayed = "/ip4/203.0.113.10/tcp/4001/p2p/12D3KooWRelay/p2p-circuit/p2p/12D3KooWDest"
    assert strip_p2p(relayed) == "/ip4/203.0.113.10/tcp/4001/p2p/12D3KooWRelay/p2p-circuit"
    assert strip_p2p("/ip4/1.2.3.4/tcp/1/p2p/12D3KooWDest") == "/ip4/1.2.3.4/tcp/1"
    assert relay_of(relayed) == "12D3KooWRelay"
    assert relay_of("/ip4/1.2.3.4/tcp/1") is None
    assert relay_transport(relayed) == "/ip4/203.0.113.10/tcp/4001"
