"""The NAT lab's pure parts (scripts/natlib): the network it plans, and how it tells the
way two nodes are connected. No namespaces, no root (tests/test_nat_lab_live.py builds one)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from natlib import topology  # noqa: E402
from natlib.classify import Snapshot, Socket, classify, parse_ss, summarise  # noqa: E402


def rules(topo: topology.Topology, namespace: str) -> list[str]:
    return [" ".join(cmd) for cmd in topology.plan(topo) if namespace in cmd and "iptables" in cmd]


def test_every_namespace_and_address_is_distinct_and_prefixed():
    topo = topology.build("natlab-1-abcd-", topology.HOME_KINDS * 2, public=2)
    assert len(set(topo.namespaces)) == len(topo.namespaces)
    assert all(ns.startswith("natlab-1-abcd-") for ns in topo.namespaces)
    assert len({n.address for n in topo.nodes}) == len(topo.nodes)
    assert {n.public_address for n in topo.nodes if n.kind == "lan"} == {"198.51.100.15", "198.51.100.20"}


def test_each_router_does_what_its_kind_says():
    topo = topology.build("t-", ["eim", "adpm", "firewall", "cgnat"])
    by_kind = {home.kind: home for home in topo.homes}
    eim, adpm = rules(topo, by_kind["eim"].router), rules(topo, by_kind["adpm"].router)
    assert any(r.endswith("MASQUERADE") for r in eim) and not any("--random-fully" in r for r in eim)
    assert any(r.endswith("MASQUERADE --random-fully") for r in adpm)
    assert not any("MASQUERADE" in r for r in rules(topo, by_kind["firewall"].router))
    cgnat = by_kind["cgnat"]
    assert cgnat.carrier and any("MASQUERADE" in r for r in rules(topo, cgnat.carrier))
    for home in topo.homes:  # every router drops what its inside did not start
        for ns in filter(None, (home.router, home.carrier)):
            assert any(r.endswith("-P FORWARD DROP") for r in rules(topo, ns)), ns


def test_an_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown home kind"):
        topology.build("t-", ["symmetric"])


def test_ss_lines_parse_and_loopback_is_dropped():
    text = ("0 0 192.168.1.10:4001 203.0.113.10:51234\n"
            "0 0 127.0.0.1:8740 127.0.0.1:40000\n"
            "0 0 [::1]:1 [::1]:2\n")
    assert parse_ss(text) == [Socket(("192.168.1.10", 4001), ("203.0.113.10", 51234))]


def test_two_nodes_behind_one_nat_are_told_apart_from_their_own_side():
    topo = topology.build("t-", ["lan"])
    pub, a, b = topo.nodes
    ids = {"pub0": "P", "lan1a": "A", "lan1b": "B"}
    # pub lists both; only lan1a holds a socket to pub: from pub's side the two look alike.
    snap = Snapshot(ids, {"pub0": {"A": [], "B": []}, "lan1a": {"P": []}, "lan1b": {"P": []}},
                    {"pub0": [Socket(("203.0.113.10", 4001), ("198.51.100.11", 40000))],
                     "lan1a": [Socket(("192.168.1.10", 40000), ("203.0.113.10", 4001))]})
    assert classify(topo, snap, pub, a).how == "direct-tcp"
    assert classify(topo, snap, pub, b).how == "unknown"
    assert classify(topo, snap, a, b).how == "none"


def test_lan_relayed_and_summary():
    topo = topology.build("t-", ["lan", "eim"])
    pub, a, b, e = topo.nodes
    ids = {"pub0": "P", "lan1a": "A", "lan1b": "B", "eim2": "E"}
    circuit = "/ip4/203.0.113.10/tcp/4001/p2p/P/p2p-circuit"
    snap = Snapshot(ids, {"lan1a": {"B": []}, "eim2": {"A": [circuit]}},
                    {"lan1a": [Socket(("192.168.1.10", 4001), ("192.168.1.11", 40000))]})
    lan = classify(topo, snap, a, b, 0.5)
    assert (lan.how, lan.first_connected_s, lan.nat_pair) == ("lan", 0.5, "lan-lan")
    assert classify(topo, snap, a, e).how == "relayed"
    summary = summarise([lan, classify(topo, snap, a, e), classify(topo, snap, pub, e)])
    assert summary["connected"] == 2
    assert summary["by_nat_pair"]["eim-public"] == {"pairs": 1, "connected": 0, "none": 1}


def test_a_pair_a_node_says_is_relayed_is_relayed_unless_a_socket_shows_a_direct_path():
    topo = topology.build("t-", ["eim", "cgnat"])
    pub, e, c = topo.nodes
    ids = {"pub0": "P", "eim1": "E", "cgnat2": "C"}
    # eim1 reaches cgnat2 through pub0: its only socket is to the relay.
    snap = Snapshot(ids, {"eim1": {"C": [], "P": []}}, {"eim1": [Socket(("192.168.1.10", 40000),
                                                                      ("203.0.113.10", 4001))]},
                    {"eim1": frozenset({"C"})})
    assert classify(topo, snap, e, c).how == "relayed"
    assert classify(topo, snap, pub, e).how == "direct-tcp"
    punched = Snapshot(ids, snap.peers, {"eim1": [Socket(("192.168.1.10", 4001), ("198.51.100.12", 4001))]},
                       snap.relayed)  # the relayed connection lingers a minute after the punch
    assert classify(topo, punched, e, c).how == "direct-tcp"


def test_percentiles():
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    import nat_lab

    assert nat_lab.percentile([], 50) is None
    assert nat_lab.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert nat_lab.percentile([float(i) for i in range(1, 101)], 99) == 99.0
    assert nat_lab.timings([1.0, 5.0]) == {"n": 2, "p50_s": 1.0, "p99_s": 5.0}
