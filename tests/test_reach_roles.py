"""Roles by reachability: the verdict in adverts, no shares over a relay, fewer incoming
links behind NAT, and the status line. Pure rules and fakes; no network."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from poolai.mesh import adverts
from poolai.mesh import links as mesh_links
from poolai.mesh.overlay import OverlayTable
from poolai.mesh.peer_ids import peer_id_bytes
from poolai.mesh.routing import PeerInfo
from poolai.node.capacity import rules as capacity
from poolai.node.capacity.inventory import Inventory
from poolai.node.files.ring import RingSource
from poolai.node.reach import roles

GOLDEN = json.loads((Path(__file__).parent / "golden_wire.json").read_text())
INVENTORY = Inventory(gpus=(), cpu_cores=4, ram_total=8 << 30, ram_free=4 << 30,
                      storage_free=1 << 30, simulated=True)
STATE = capacity.LocalState(peer_id="me", software="poolai/0.1.0", job_slots=1)


def peer(i: int) -> str:
    return str(ID.from_pubkey(create_new_key_pair(i.to_bytes(32, "big")).public_key))


# ----------------------------------------------------------------------------- the verdict in adverts


def test_the_verdict_rides_in_software_and_unknown_leaves_it_as_it_was():
    assert adverts.software_with_reach("poolai/0.1.0", "unknown") == "poolai/0.1.0"
    for state in ("public", "private"):
        software = adverts.software_with_reach("poolai/0.1.0", state)
        assert software == f"poolai/0.1.0 (reach {state})"
        assert adverts.reach_of_software(software) == state
        # a new verdict replaces the old comment, never stacks on it
        assert adverts.reach_of_software(adverts.software_with_reach(software, "unknown")) == "unknown"
    long = adverts.software_with_reach("poolai/" + "9" * 80, "private")
    assert len(long) == 64 and adverts.reach_of_software(long) == "private"
    with pytest.raises(ValueError):
        adverts.software_with_reach("poolai/0.1.0", "maybe")


@pytest.mark.parametrize("software", ["poolai/0.1.0", "poolai/0.1.0 (linux)", "x (reach maybe)",
                                      "(reach public", ""])
def test_software_of_older_or_other_nodes_reads_unknown(software):
    assert adverts.reach_of_software(software) == "unknown"


def test_an_advert_with_a_verdict_has_only_the_fields_older_nodes_know():
    """Older nodes decode strictly (an unknown field is refused and penalised): the
    verdict adds no key, and its advert verifies as any other."""
    key = Ed25519PrivateKey.from_private_bytes(bytes([7]) * 32)
    public = key.public_key().public_bytes_raw()
    state = dataclasses.replace(STATE, peer_id=adverts.peer_id_from_public_key(public), reach="private")
    ad = capacity.make_advert(INVENTORY, state, seq=5, now=1000.0, ttl=30.0)
    assert ad.reach == "private" and ad.software == "poolai/0.1.0 (reach private)"
    signed = adverts.sign(ad, key.sign, public)
    assert adverts.verify(signed, now=1000.5).reach == "private"
    old_keys = set(msgpack.unpackb(bytes.fromhex(GOLDEN["messages"]["capacity.advert"]["full"])))
    body = msgpack.unpackb(msgpack.unpackb(signed)["body"])
    assert set(body) <= old_keys


def test_a_new_verdict_is_a_significant_change():
    def ad(reach: str) -> adverts.Advert:
        return capacity.make_advert(INVENTORY, dataclasses.replace(STATE, reach=reach), seq=1, now=0.0,
                                    ttl=30.0)

    assert capacity.significant_change(ad("unknown"), ad("private"))
    assert not capacity.significant_change(ad("private"), ad("private"))


# ----------------------------------------------------------------------------- shares only over a direct path


def test_relay_only_is_private_without_a_direct_connection():
    assert roles.relay_only("private", direct=False)
    assert not roles.relay_only("private", direct=True)  # it dialled us, or a punch made a path
    assert not roles.relay_only("public", direct=False)
    assert not roles.relay_only("unknown", direct=False)  # older nodes, and before any round
    states = {"a": "private", "b": "private", "c": "public", "d": "unknown"}
    assert roles.write_exclusions(states, states.__getitem__, lambda p: p == "b") == {"a"}


class MembersHost:
    def __init__(self, me: str, members: list[str]) -> None:
        self.peer_id, self.members = me, members

    def member_peers(self) -> list[str]:
        return list(self.members)

    def peer_addrs(self, peer: str) -> list[str]:
        return []


def test_the_write_ring_leaves_relay_only_peers_out_and_the_read_ring_keeps_them_absent():
    me, a, b, c = (peer(i) for i in range(1, 5))
    relayed = {b}
    source = RingSource(MembersHost(me, [a, b, c]), None, None,  # type: ignore[arg-type]
                        relay_only=relayed.__contains__)
    raw = {p: peer_id_bytes(p) for p in (me, a, b, c)}
    assert set(source.view().peers) == {raw[me], raw[a], raw[c]}
    reading = source.reading_view()
    assert set(reading.peers) == {raw[me], raw[a], raw[b], raw[c]} and reading.absent == {raw[b]}
    relayed.clear()  # a hole punch made a direct path: b takes shares again
    assert raw[b] in source.view().peers


def test_without_the_rule_every_member_takes_shares():
    me, a = peer(1), peer(2)
    source = RingSource(MembersHost(me, [a]), None, None)  # type: ignore[arg-type]
    assert len(source.view()) == 2 and not source.reading_view().absent


# ----------------------------------------------------------------------------- fewer incoming links


def test_a_private_node_keeps_a_quarter_of_its_incoming_links():
    assert roles.incoming_cap(32, "public") == 32
    assert roles.incoming_cap(32, "unknown") == 32
    assert roles.incoming_cap(32, "private") == 8
    assert roles.incoming_cap(8, "private") == roles.MIN_PRIVATE_INCOMING
    assert roles.incoming_cap(2, "private") == 2  # never more than configured


def test_the_overlay_table_drops_the_least_recently_heard_links_beyond_the_cap():
    ring = sorted((PeerInfo.of(b"peer-%d" % i) for i in range(12)), key=lambda p: p.position)
    table = OverlayTable(ring[0].peer_id, mesh_links.OverlayConfig(max_incoming=8))
    for t, p in enumerate(ring[1:9]):
        assert table.add_incoming(p, float(t))
    table.limit_incoming(roles.incoming_cap(8, "private"))
    kept = {p.peer_id for p in table.links().incoming}
    assert kept == {p.peer_id for p in ring[5:9]}  # the four heard last
    assert not table.add_incoming(ring[10], 20.0)
    table.limit_incoming(roles.incoming_cap(8, "public"))
    assert table.incoming_cap == 8 and table.add_incoming(ring[10], 21.0)


def test_only_a_public_node_serves_as_a_relay():
    assert roles.may_relay("public")
    assert not roles.may_relay("private") and not roles.may_relay("unknown")


# ----------------------------------------------------------------------------- what the owner is told


def test_the_status_line():
    def line(state: str, relays: tuple[str, ...] = (), public: str | None = None) -> str:
        return roles.summary(state, public_addr=public, relay_addrs=relays,
                             detail="behind NAT (port-preserving mapping), not reachable directly",
                             answers=2)

    assert line("public", public="/ip4/203.0.113.10/tcp/4001") == \
        "reachable from the internet at /ip4/203.0.113.10/tcp/4001"
    relay = "/ip4/203.0.113.10/tcp/4001/p2p/12D3KooWrelay/p2p-circuit"
    assert line("private", (relay,)) == f"behind NAT, reachable through relays {relay}"
    assert line("private", (relay,) * 5).endswith("(+2)")
    assert line("private") == ("LAN only: behind NAT (port-preserving mapping), not reachable "
                               "directly, and no relay")
    assert line("unknown") == "reachability unknown (2 answers)"
