"""Messages of the overlay protocol ``/poolai/overlay/1.0.0`` and their conversion to the core's types.

Peer ids travel as raw multihash bytes; a peer's ring position is never read
off the wire but derived from its id on receipt. Coordinates are checked for
range and dimension and dropped (not trusted) when invalid.
"""

from __future__ import annotations

from poolai.mesh import wire
from poolai.mesh.coords import MAX_DIMENSIONS, Coord
from poolai.mesh.links import MAX_LIST, MAX_LONG, MAX_PROXIMITY, LinkSet
from poolai.mesh.lookup import StepRequest
from poolai.mesh.ring import RING_MASK
from poolai.mesh.routing import PeerInfo, Step

PROTOCOL = "/poolai/overlay/1.0.0"
MAX_FRAME = 64 * 1024
MAX_ID = 64
MAX_ADDRS = 4
MAX_EXCLUDE = 32
MAX_OWNERS = 8
MAX_HOPS = 16
MAX_NEAR = 8


@wire.message("overlay.coord")
class WireCoord:
    vec: tuple[float, ...] = wire.field(max_len=MAX_DIMENSIONS, min=-1e6, max=1e6)
    height: float = wire.field(min=0.0, max=60_000.0)
    error: float = wire.field(min=0.0, max=100.0)


@wire.message("overlay.peer")
class WirePeer:
    id: bytes = wire.field(max_len=MAX_ID)
    addrs: tuple[str, ...] = wire.field(max_len=MAX_ADDRS)
    coord: WireCoord | None = None


@wire.message("overlay.probe")
class ProbeRequest:
    sender: WirePeer
    link: bool  # the sender keeps an outgoing link to us


@wire.message("overlay.pong")
class Pong:
    responder: WirePeer


@wire.message("overlay.links_request")
class LinksRequest:
    sender: WirePeer


@wire.message("overlay.links")
class WireLinks:
    node: WirePeer
    successors: tuple[WirePeer, ...] = wire.field(max_len=MAX_LIST)
    predecessors: tuple[WirePeer, ...] = wire.field(max_len=MAX_LIST)
    long: tuple[WirePeer, ...] = wire.field(max_len=MAX_LONG)
    proximity: tuple[WirePeer, ...] = wire.field(max_len=MAX_PROXIMITY)
    size_estimate: float = wire.field(min=1.0, max=1e12)
    version: int = wire.field(min=0, max=2**63 - 1)


@wire.message("overlay.step_request")
class StepQuery:
    sender: WirePeer
    key: int = wire.field(min=0, max=RING_MASK)
    exclude: tuple[bytes, ...] = wire.field(max_len=MAX_EXCLUDE)
    origin: WireCoord | None = None


@wire.message("overlay.step")
class StepAnswer:
    responder: WirePeer
    owners: tuple[WirePeer, ...] = wire.field(max_len=MAX_OWNERS)
    next_hops: tuple[WirePeer, ...] = wire.field(max_len=MAX_HOPS)


@wire.message("overlay.near_request")
class NearQuery:
    sender: WirePeer
    coord: WireCoord


@wire.message("overlay.near")
class NearAnswer:
    peers: tuple[WirePeer, ...] = wire.field(max_len=MAX_NEAR)


REQUESTS = (ProbeRequest, LinksRequest, StepQuery, NearQuery)


def coord_to_wire(coord: Coord | None) -> WireCoord | None:
    if coord is None:
        return None
    return WireCoord(vec=tuple(coord.vec), height=coord.height, error=coord.error)


def coord_from_wire(coord: WireCoord | None, dimensions: int) -> Coord | None:
    if coord is None:
        return None
    value = Coord(tuple(coord.vec), coord.height, coord.error)
    return value if value.is_valid(dimensions) else None


def peer_from_wire(peer: WirePeer, dimensions: int) -> PeerInfo:
    return PeerInfo.of(peer.id, coord_from_wire(peer.coord, dimensions))


def links_from_wire(links: WireLinks, dimensions: int) -> LinkSet:
    def group(peers: tuple[WirePeer, ...]) -> tuple[PeerInfo, ...]:
        return tuple(peer_from_wire(p, dimensions) for p in peers)

    return LinkSet(
        node=peer_from_wire(links.node, dimensions),
        successors=group(links.successors),
        predecessors=group(links.predecessors),
        long=group(links.long),
        proximity=group(links.proximity),
        size_estimate=links.size_estimate,
        version=links.version,
    )


def step_from_wire(answer: StepAnswer, dimensions: int) -> Step:
    return Step(
        responder=peer_from_wire(answer.responder, dimensions),
        owners=tuple(peer_from_wire(p, dimensions) for p in answer.owners),
        next_hops=tuple(peer_from_wire(p, dimensions) for p in answer.next_hops),
    )


def step_request_from_wire(query: StepQuery, dimensions: int) -> StepRequest:
    return StepRequest(query.key, tuple(query.exclude), coord_from_wire(query.origin, dimensions))
