"""A small NAT lab (scripts/natlib) with real node processes: what holds today and must
keep holding as relays and hole punching arrive.

One public bootstrap node, and one node behind each of: a port-preserving NAT, a
firewall that drops new inbound connections (no NAT), and a NAT with two nodes on its
LAN. Every node reaches the bootstrap; the LAN pair connects over the LAN; a plain TCP
connect from the internet to a NATed or firewalled node fails while the same connect
from inside its home succeeds (so the router's rules, not a dead listener or a missing
route, keep it out); and the lab leaves no namespace behind, also when it fails.

Needs root, ``ip`` and ``iptables`` (scripts/test.sh installs iptables as root on
Debian); skips otherwise.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from natlib import netns, topology  # noqa: E402
from natlib.classify import Snapshot, classify  # noqa: E402
from natlib.lab import open_lab  # noqa: E402

pytestmark = [pytest.mark.live, pytest.mark.timeout(300),
              pytest.mark.skipif(netns.missing_tools() is not None,
                                 reason=f"NAT lab: {netns.missing_tools()}")]


def left_behind(prefix: str) -> list[str]:
    return [name for name in netns.namespaces() if name.startswith(prefix)]


def test_nodes_behind_nat_and_firewall_reach_the_internet_and_not_the_reverse(tmp_path):
    topo = topology.build(netns.new_prefix(), ["eim", "firewall", "lan"], public=1)
    boot = topo.bootstrap
    eim, fw = topo.node("eim1"), topo.node("fw2")
    lan_a, lan_b = topo.node("lan3a"), topo.node("lan3b")
    others = [n for n in topo.nodes if n is not boot]

    def settled(snap: Snapshot) -> bool:
        return (all(snap.lists(n, boot) or snap.lists(boot, n) for n in others)
                and classify(topo, snap, lan_a, lan_b).how == "lan")

    with open_lab(topo, tmp_path) as lab:
        lab.watch(90, until=settled)
        snap = lab.snapshot()
        for node in others:
            found = classify(topo, snap, boot, node)
            assert found.how == "direct-tcp", (found, lab.nodes[node.name].log(20))
        found = classify(topo, snap, lan_a, lan_b)
        assert found.how == "lan", found
        assert found.evidence and "192.168.3." in found.evidence.split("<->")[1]

        for node, home in ((eim, topo.homes[0]), (fw, topo.homes[1])):
            from_inside = netns.tcp_connect(home.router, node.address, topology.PORT)
            assert from_inside == "connected", (node.name, from_inside)
            from_internet = netns.tcp_connect(boot.namespace, node.address, topology.PORT)
            assert from_internet != "connected", node.name
        # The NAT's own public address forwards nothing either.
        assert netns.tcp_connect(boot.namespace, eim.public_address, topology.PORT) != "connected"
        assert netns.tcp_connect(lan_b.namespace, lan_a.address, topology.PORT) == "connected"
        assert netns.tcp_connect(boot.namespace, lan_a.address, topology.PORT) != "connected"
    assert left_behind(topo.prefix) == []


def test_a_lab_that_fails_half_built_removes_its_namespaces():
    topo = topology.build(netns.new_prefix(), ["cgnat"], public=1)
    with pytest.raises(RuntimeError, match="half built"), netns.open_network(topo):
        assert len(left_behind(topo.prefix)) == len(topo.namespaces)
        raise RuntimeError("half built")
    assert left_behind(topo.prefix) == []


def test_namespaces_of_a_killed_lab_are_removed_by_the_next():
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid no longer runs
    stale = f"{netns.NAME_ROOT}{dead.pid}-beef-r1"
    netns.sh(["ip", "netns", "add", stale])
    try:
        assert stale in netns.remove_stale()
        assert stale not in netns.namespaces()
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True)
