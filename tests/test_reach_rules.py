"""The reachability rules, directly: the verdict, the NAT mapping, whom to ask, when to ask
again, and what the dial-back server spends (no network)."""

from __future__ import annotations

import random

import pytest

from poolai.mesh import reach
from poolai.mesh.admission import Rate
from poolai.node.reach.rules import (
    NOT_CHECKED,
    PRIVATE,
    PUBLIC,
    UNKNOWN,
    Answer,
    Candidate,
    ReachConfig,
    Rechecks,
    ServerLimits,
    ServerPolicy,
    Tried,
    choose_servers,
    conclude,
    mapping_of,
    merge,
)

CFG = ReachConfig(servers=4, public_min=2, private_min=3, interval=600, retry=60, min_gap=10,
                  start_grace=30, keep_for=1200)
LISTEN = "/ip4/203.0.113.5/tcp/4001"


def through(server: str, addr: str = LISTEN, *, local=("203.0.113.5", 50000), observed=None) -> Answer:
    return Answer(server, observed or ("203.0.113.5", local[1]), local, True, (Tried(addr, True, True),))


def blocked(server: str, local=("192.168.1.10", 50000), observed=("198.51.100.7", 50000)) -> Answer:
    tried = (Tried(reach.tcp_addr(observed[0], 4001), False, False, "timeout"),
             Tried(reach.tcp_addr(*observed), False, False, "timeout"))
    return Answer(server, observed, local, True, tried)


def test_two_servers_through_on_one_address_is_public():
    v = conclude([through("a"), through("b"), blocked("c")], 3, CFG, 100.0)
    assert (v.state, v.public_addr, v.confirmed, v.answers) == (PUBLIC, LISTEN, 2, 3)
    assert v.line() == f"reachable from the internet at {LISTEN}"


def test_one_server_through_is_not_enough():
    v = conclude([through("a"), blocked("b"), blocked("c")], 3, CFG, 100.0)
    assert v.state == UNKNOWN and v.line() == "reachability unknown (3 answers)"


def test_claims_without_the_nonce_count_for_nothing():
    # A server that answers "ok" over the request's own connection (AutoNAT v1's mistake),
    # or lies: its claim is never confirmed, so even three of them make no public node.
    liars = [Answer(s, ("198.51.100.7", 50000), ("192.168.1.10", 50000), True,
                    (Tried("/ip4/198.51.100.7/tcp/4001", True, False),)) for s in "abc"]
    v = conclude(liars, 3, CFG, 100.0)
    assert v.state == PRIVATE and v.unverified == 3 and v.public_addr is None


def test_enough_answers_none_through_is_private_with_the_mapping():
    v = conclude([blocked("a"), blocked("b", local=("192.168.1.10", 50001), observed=("198.51.100.7", 50001)),
                  blocked("c", local=("192.168.1.10", 50002), observed=("198.51.100.7", 50002))], 4, CFG, 1.0)
    assert v.state == PRIVATE and v.observed_ip == "198.51.100.7"
    assert (v.mapping.nat, v.mapping.port_preserving, v.mapping.address_dependent) == (True, True, False)
    assert v.line() == "behind NAT (port-preserving mapping), not reachable directly"


def test_too_few_answers_is_unknown():
    assert conclude([blocked("a"), blocked("b")], 4, CFG, 1.0).line() == "reachability unknown (2 answers)"
    assert conclude([], 4, CFG, 1.0).line() == "reachability unknown (0 answers)"
    assert NOT_CHECKED.line() == "reachability unknown (0 answers)"
    assert conclude([blocked("a")], 1, CFG, 1.0).line() == "reachability unknown (1 answer)"


def test_mapping_from_observed_ports():
    nat_ip, lan = "198.51.100.7", "192.168.1.10"
    rewritten = [blocked(s, local=(lan, 50000 + i), observed=(nat_ip, 61000 + 7 * i))
                 for i, s in enumerate("abc")]
    m = mapping_of(rewritten)
    assert (m.nat, m.port_preserving, m.address_dependent) == (True, False, None)
    assert m.describe() == "ports rewritten per connection"
    # one local port seen as two ports by two servers: the mapping depends on the destination
    dependent = [blocked("a", local=(lan, 4001), observed=(nat_ip, 4001)),
                 blocked("b", local=(lan, 4001), observed=(nat_ip, 39211))]
    m = mapping_of(dependent)
    assert m.address_dependent is True and m.describe() == "address-dependent mapping"
    # no NAT at all: a firewall
    fw = [blocked(s, local=("198.51.100.7", 50000 + i), observed=("198.51.100.7", 50000 + i))
          for i, s in enumerate("abc")]
    v = conclude(fw, 3, CFG, 1.0)
    assert v.mapping.nat is False and v.line() == "behind a firewall (no NAT), not reachable directly"
    # only inbound connections: their observed port is our listen port, nothing to learn
    inbound = Answer("a", (nat_ip, 4001), (lan, 4001), False, ())
    assert mapping_of([inbound]).port_preserving is None


def test_choose_servers_prefers_other_subnets_and_direct_peers():
    cands = [Candidate("same1", "203.0.113.9"), Candidate("same2", "203.0.113.10"),
             Candidate("far1", "198.51.100.1"), Candidate("far1b", "198.51.100.2"),
             Candidate("far2", "192.0.2.1"), Candidate("relayed", "100.64.0.1", relayed=True)]
    for seed in range(20):
        chosen = choose_servers(cands, ["203.0.113.5"], 3, random.Random(seed))
        assert set(chosen[:2]) <= {"far1", "far1b", "far2"} and "far2" in chosen[:2]
        assert "relayed" not in chosen
    assert choose_servers(cands, [], 10, random.Random(1), skip={"far2"}).count("far2") == 0
    assert len(choose_servers(cands, [], 10, random.Random(1))) == 6


def test_rechecks_first_when_enough_peers_or_after_the_grace():
    r = Rechecks(CFG, started_at=0.0)
    assert r.due(1.0, candidates=0, listen=[LISTEN]) is None
    assert r.due(1.0, candidates=2, listen=[LISTEN]) is None
    assert r.due(1.0, candidates=4, listen=[LISTEN]) == "first check"
    assert r.due(31.0, candidates=2, listen=[LISTEN]) is None
    assert r.due(31.0, candidates=3, listen=[LISTEN]) == "first check"
    assert r.due(121.0, candidates=1, listen=[LISTEN]) == "first check"


def test_rechecks_periodic_retry_and_address_changes():
    r = Rechecks(CFG, started_at=0.0)
    public = conclude([through("a"), through("b")], 2, CFG, 100.0)
    r.round_done(public, [LISTEN])
    assert r.due(105.0, 3, [LISTEN]) is None  # within min_gap
    assert r.due(200.0, 3, [LISTEN]) is None
    assert r.due(700.0, 3, [LISTEN]) == "periodic"
    r.observe("203.0.113.5")  # the same address again: nothing to do
    assert r.due(200.0, 3, [LISTEN]) is None
    r.observe("198.51.100.99")
    assert r.due(105.0, 3, [LISTEN]) is None  # changes wait for min_gap too
    assert r.due(111.0, 3, [LISTEN]) == "seen at a new address 198.51.100.99"
    assert r.due(111.0, 3, ["/ip4/203.0.113.5/tcp/4002"]) == "listen addresses changed"
    unknown = conclude([blocked("a")], 3, CFG, 300.0)
    r.round_done(unknown, [LISTEN])
    assert r.due(330.0, 3, [LISTEN]) is None and r.due(360.0, 3, [LISTEN]) == "retry"


def test_a_conclusive_verdict_outlives_a_routine_inconclusive_round():
    public = conclude([through("a"), through("b")], 2, CFG, 100.0)
    routine = conclude([], 3, CFG, 700.0, reason="periodic")
    assert merge(public, routine, CFG) is public
    assert merge(public, conclude([], 3, CFG, 1400.0, reason="periodic"), CFG).state == UNKNOWN
    moved = conclude([], 3, CFG, 700.0, reason="seen at a new address 198.51.100.99")
    assert merge(public, moved, CFG) is moved


def test_server_dials_only_the_observed_ip():
    targets = ServerPolicy.targets(("198.51.100.7", 61000), [4001, 4001, 4002, 0, 70000, 5, 6, 7])
    assert targets == ["/ip4/198.51.100.7/tcp/4001", "/ip4/198.51.100.7/tcp/4002",
                       "/ip4/198.51.100.7/tcp/5", "/ip4/198.51.100.7/tcp/6", "/ip4/198.51.100.7/tcp/61000"]
    assert all(t.startswith("/ip4/198.51.100.7/") for t in targets)
    assert ServerPolicy.targets(("2001:db8::1", 4001), [4001]) == ["/ip6/2001:db8::1/tcp/4001"]


def test_server_limits_per_peer_per_ip_and_in_total():
    policy = ServerPolicy(ServerLimits(per_peer=Rate(1 / 60, 2), per_ip=Rate(1 / 20, 3), total=Rate(1.0, 5)))
    assert [policy.admit("p", "198.51.100.1", 0.0) for _ in range(3)] == [None, None, "peer_rate"]
    assert policy.admit("q", "198.51.100.1", 0.0) is None
    assert policy.admit("r", "198.51.100.1", 0.0) == "ip_rate"  # three from one IP
    assert policy.admit("s", "192.0.2.1", 0.0) is None
    assert policy.admit("t", "192.0.2.2", 0.0) is None
    assert policy.admit("u", "192.0.2.3", 0.0) == "total_rate"
    assert policy.admit("u", "192.0.2.3", 1.0) is None  # the node's bucket refilled
    assert policy.admit("p", "203.0.113.1", 60.0) is None  # and p's, after a minute
    assert policy.served == 7 and policy.refused == {"peer_rate": 1, "ip_rate": 1, "total_rate": 1}


def test_config_checks_its_thresholds():
    with pytest.raises(ValueError):
        ReachConfig(servers=2, private_min=3)
    fast = ReachConfig.every(20)
    assert (fast.interval, fast.retry, fast.min_gap, fast.start_grace) == (20, 20, 10, 5)


def test_wire_addresses():
    assert reach.parse_tcp_addr("/ip4/198.51.100.7/tcp/4001/p2p/12D3") == ("198.51.100.7", 4001)
    assert reach.parse_tcp_addr("/ip4/198.51.100.7/udp/4001") is None
    assert reach.parse_tcp_addr("/ip4/nonsense/tcp/1") is None
    assert reach.parse_tcp_addr("/ip4/1.2.3.4/tcp/0") is None
    with pytest.raises(ValueError):
        reach.tcp_addr("1.2.3.4", 0)
