"""Overlay messages: round trips, bounds, and distrust of positions and coordinates off the wire."""

from __future__ import annotations

import msgpack
import pytest

from poolai.mesh import overlay_wire as ow
from poolai.mesh import wire
from poolai.mesh.errors import SchemaError
from poolai.mesh.ring import node_position

PEER = b"\x00\x24" + bytes(range(36))


def peer(coord=None) -> ow.WirePeer:
    return ow.WirePeer(id=PEER, addrs=("/ip4/127.0.0.1/tcp/1",), coord=coord)


def test_step_query_round_trip():
    query = ow.StepQuery(sender=peer(ow.WireCoord(vec=(1.0, 2.0, 3.0, 4.0), height=1.5, error=0.3)),
                         key=2**64 - 1, exclude=(PEER,), origin=None)
    assert wire.decode(wire.encode(query), *ow.REQUESTS) == query


def test_position_is_derived_not_trusted():
    info = ow.peer_from_wire(peer(), dimensions=4)
    assert info.position == node_position(PEER)


@pytest.mark.parametrize(
    "coord",
    [
        ow.WireCoord(vec=(1.0, 2.0), height=1.0, error=0.1),  # wrong dimension
        ow.WireCoord(vec=(float("inf"),) * 4, height=1.0, error=0.1),  # not finite
    ],
)
def test_bad_coordinates_are_dropped(coord):
    assert ow.peer_from_wire(peer(coord), dimensions=4).coord is None


@pytest.mark.parametrize(
    "mutate",
    [
        lambda m: m.update(key="1"),
        lambda m: m.update(key=-1),
        lambda m: m.update(exclude=[PEER] * 33),
        lambda m: m["sender"].update(id=b"x" * 65),
        lambda m: m["sender"].update(addrs=["/a"] * 5),
        lambda m: m.update(hops=3),
    ],
)
def test_out_of_bounds_queries_are_rejected(mutate):
    raw = wire.to_wire(ow.StepQuery(sender=peer(), key=1, exclude=(), origin=None))
    mutate(raw)
    with pytest.raises(SchemaError):
        wire.decode(msgpack.packb(raw, use_bin_type=True), *ow.REQUESTS)


def test_links_reply_is_bounded():
    raw = wire.to_wire(ow.WireLinks(node=peer(), successors=(), predecessors=(), long=(),
                                    proximity=(), size_estimate=3.0, version=1))
    raw["successors"] = [wire.to_wire(peer())] * 17
    with pytest.raises(SchemaError):
        wire.decode(msgpack.packb(raw, use_bin_type=True), ow.WireLinks)


def test_near_query_round_trip_and_bounds():
    coord = ow.WireCoord(vec=(0.0,) * 8, height=1.0, error=0.5)
    query = ow.NearQuery(sender=peer(coord), coord=coord)
    assert wire.decode(wire.encode(query), *ow.REQUESTS) == query
    raw = wire.to_wire(ow.NearAnswer(peers=()))
    raw["peers"] = [wire.to_wire(peer())] * 9
    with pytest.raises(SchemaError):
        wire.decode(msgpack.packb(raw, use_bin_type=True), ow.NearAnswer)
