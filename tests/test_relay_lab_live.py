"""Relays and hole punching in the NAT lab (scripts/natlib), with real node processes.

Every pair of nodes connects: directly where the NATs allow a hole punch, through a
relay where they do not (a port-randomising NAT against another NAT). And a private
node whose relay is killed is reachable through another relay within 10 s.

Needs root, ``ip`` and ``iptables``; skips otherwise.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from natlib import netns, topology  # noqa: E402
from natlib.classify import Snapshot, classify  # noqa: E402
from natlib.lab import open_lab  # noqa: E402
from natlib.topology import pairs  # noqa: E402

pytestmark = [pytest.mark.live, pytest.mark.timeout(400),
              pytest.mark.skipif(netns.missing_tools() is not None,
                                 reason=f"NAT lab: {netns.missing_tools()}")]


def test_every_pair_connects_directly_where_nats_allow_else_through_a_relay(tmp_path):
    topo = topology.build(netns.new_prefix(), ["eim", "adpm", "cgnat"], public=2)
    everyone = pairs(topo.nodes)

    def expected(a, b) -> str:
        randomising = "adpm" in (a.kind, b.kind) and "public" not in (a.kind, b.kind)
        return "relayed" if randomising else "direct-tcp"

    def settled(snap: Snapshot) -> bool:
        return all(classify(topo, snap, a, b).how == expected(a, b) for a, b in everyone)

    with open_lab(topo, tmp_path) as lab:
        lab.watch(150, until=settled)
        snap = lab.snapshot()
        found = {(a.name, b.name): classify(topo, snap, a, b) for a, b in everyone}
        assert all(p.connected for p in found.values()), [p for p in found.values() if not p.connected]
        wrong = [(p, expected(topo.node(p.a), topo.node(p.b))) for p in found.values()
                 if p.how != expected(topo.node(p.a), topo.node(p.b))]
        assert not wrong, wrong


def test_a_private_node_whose_relay_dies_is_reachable_through_another_within_10_s(tmp_path):
    topo = topology.build(netns.new_prefix(), ["eim", "eim"], public=3)
    d, x = topo.node("eim1"), topo.node("eim2")
    no_punch = {"POOLAI_HOLE_PUNCH": "0"}  # keep the pair on a relay
    with open_lab(topo, tmp_path, {d.name: no_punch, x.name: no_punch}) as lab:
        d_id = lab.peer_id(d.name)

        def held(name: str) -> list[str]:
            relays = (lab.status(name).get("relay") or {}).get("client", {}).get("relays", [])
            return [r["relay"] for r in relays]

        def via(name: str, peer: str) -> str | None:
            """The relay ``name``'s connection to ``peer`` runs through, or None."""
            for p in lab.status(name)["peers"]:
                if p["peer_id"] == peer and p.get("relayed"):
                    return p.get("relay")
            return None

        def relayed_pair(snap: Snapshot) -> bool:
            return len(held(d.name)) == 2 and classify(topo, snap, d, x).how == "relayed"

        lab.watch(120, until=relayed_pair)
        assert len(held(d.name)) == 2, lab.nodes[d.name].log(30)
        relay = via(x.name, d_id) or via(d.name, lab.peer_id(x.name))
        assert relay is not None, lab.status(x.name)["peers"]
        victim = next(n for n, p in lab.nodes.items() if p.peer_id == relay)
        assert victim.startswith("pub"), victim  # a relay, not one of the pair

        lab.nodes[victim].kill()
        killed = time.monotonic()
        back = None
        while time.monotonic() - killed < 20:
            now_via = via(x.name, d_id) or via(d.name, lab.peer_id(x.name))
            if now_via is not None and now_via != relay and len(held(d.name)) == 2:
                back = time.monotonic() - killed
                break
            time.sleep(0.25)
        assert back is not None, (held(d.name), lab.nodes[d.name].log(30), lab.nodes[x.name].log(30))
        print(f"relay killed: reachable through another relay after {back:.1f} s")
        assert back <= 10.0, back
        assert relay not in held(d.name)
