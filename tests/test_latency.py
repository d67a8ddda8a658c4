"""The emulated-latency table (a test facility): read from the environment, checked strictly.

How a host applies it to streams and pings is tested with real hosts in test_host.py.
"""

from __future__ import annotations

import json

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from poolai.mesh.latency import LATENCY_ENV, EmulatedLatency


def pid_of(keys) -> str:  # type: ignore[no-untyped-def]
    return ID.from_pubkey(keys.public_key).to_base58()


def test_emulated_latency_table_is_read_from_the_environment(tmp_path):
    peer = pid_of(create_new_key_pair())
    assert EmulatedLatency.from_env({}) is None
    assert EmulatedLatency.from_env({LATENCY_ENV: ""}) is None
    path = tmp_path / "latency.json"
    path.write_text(json.dumps({"version": 1, "one_way_ms": {peer: 25}}))
    table = EmulatedLatency.from_env({LATENCY_ENV: str(path)})
    assert table is not None and table.delay(peer) == 0.025 and table.delay("other") == 0.0
    for bad, message in [({"version": 2, "one_way_ms": {}}, "expected"),
                         ({"version": 1, "one_way_ms": {peer: -1}}, "is not in"),
                         ({"version": 1, "one_way_ms": {peer: True}}, "is not in"),
                         ({"version": 1, "one_way_ms": {"nope": 5}}, "peer id")]:
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=message):
            EmulatedLatency.load(path)
    with pytest.raises(ValueError, match="latency table"):
        EmulatedLatency.load(tmp_path / "missing.json")


class SlowToOpenHost:
    """A host whose streams take ``open_s`` to open (protocol negotiation, a busy peer) and
    whose answers then come at once."""

    def __init__(self, peer_id: str, pong, open_s: float) -> None:  # type: ignore[no-untyped-def]
        self.peer_id, self.pong, self.open_s = peer_id, pong, open_s

    def transport_addrs(self) -> list[str]:
        return []

    def add_addrs(self, peer_id: str, addrs: list[str]) -> None:
        pass

    async def request(self, peer_id, protocol, request, reply_types,  # type: ignore[no-untyped-def]
                      *, timeout, max_frame, on_stream=None):  # noqa: ASYNC109 - MeshHost's signature
        await trio.sleep(self.open_s)
        if on_stream is not None:
            on_stream(None)
        return self.pong


async def test_an_overlay_probe_times_the_round_trip_not_the_stream_opening():
    from poolai.mesh import overlay_wire as ow
    from poolai.mesh.coords import origin
    from poolai.mesh.overlay_net import OverlayNode
    from poolai.mesh.peer_ids import peer_id_bytes
    from poolai.mesh.peers import PeerBook

    me, other = pid_of(create_new_key_pair()), pid_of(create_new_key_pair())
    pong = ow.Pong(responder=ow.WirePeer(id=peer_id_bytes(other), addrs=(),
                                         coord=ow.coord_to_wire(origin())))
    node = OverlayNode(SlowToOpenHost(me, pong, open_s=0.3), PeerBook(me))  # type: ignore[arg-type]
    with trio.fail_after(10):
        await node._probe(peer_id_bytes(other), link=False)
    measured = node.table.measured_rtt(peer_id_bytes(other))
    assert measured is not None and measured < 100  # ms; the 300 ms of opening left out
