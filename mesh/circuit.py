"""Circuit relay v2, the client's half: reserve a slot on a relay, dial a peer through one.

Messages are py-libp2p's protobufs (``HopMessage``, ``StopMessage``), one exchange per
stream, each a uvarint-prefixed message of at most :data:`MAX_MESSAGE` bytes. py-libp2p's
``CircuitV2Transport`` is not used: with the default roles its ``dial`` also reserves a
slot on the relay, its renewal loop spins when a relay grants a short TTL, and it dials
stored circuit addresses before the relay it was given (NETWORK.md, "Circuit relay").

These functions take the py-libp2p host (``MeshHost.libp2p``) and raise
:class:`~poolai.mesh.errors.PeerUnreachable` for every failure; the caller sets the
deadline around each call. The destination's side (the ``stop`` protocol: accept a
relayed connection and upgrade it) is py-libp2p's ``CircuitV2Protocol``, run by
:class:`poolai.mesh.relay.RelayService`.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import multiaddr
import trio
from libp2p.connection_types import ConnectionType
from libp2p.custom_types import TProtocol
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage
from libp2p.relay.circuit_v2.pb.circuit_pb2 import PeerId as CircuitPeerId
from libp2p.relay.circuit_v2.protocol_buffer import StatusCode
from libp2p.utils.varint import encode_varint_prefixed, read_varint_prefixed_bytes_limited

from poolai.mesh.errors import PeerUnreachable

HOP = TProtocol("/libp2p/circuit/relay/0.2.0/hop")
STOP = TProtocol("/libp2p/circuit/relay/0.2.0/stop")
MAX_MESSAGE = 4096  # a relay message is a status, a peer id, a limit and a few addresses
MAX_RELAY_ADDRS = 4  # addresses of a relay taken from its reservation answer
CIRCUIT = "/p2p-circuit"


@dataclasses.dataclass(frozen=True, slots=True)
class Granted:
    """A reservation a relay gave us: until ``expires`` (wall clock, as the relay sent it),
    with the circuit addresses (``<relay addr>/p2p/<relay>/p2p-circuit``) we may advertise."""

    relay: str
    expires: float
    circuit_addrs: tuple[str, ...]
    limit_seconds: int
    limit_bytes: int


def is_circuit(addr: str) -> bool:
    return CIRCUIT in addr


def relay_of(addr: str) -> str | None:
    """The relay's peer id in ``.../p2p/<relay>/p2p-circuit[/p2p/<dest>]``, or None."""
    head, sep, _ = addr.partition(CIRCUIT)
    if not sep or "/p2p/" not in head:
        return None
    return head.rsplit("/p2p/", 1)[1].strip("/") or None


def relay_transport(addr: str) -> str:
    """The relay's own transport address in a circuit address (``/ip4/../tcp/..``)."""
    return addr.partition(CIRCUIT)[0].rsplit("/p2p/", 1)[0]


async def write_msg(stream: Any, msg: Any) -> None:
    await stream.write(encode_varint_prefixed(msg.SerializeToString()))


async def read_msg(stream: Any, cls: type) -> Any:
    data = await read_varint_prefixed_bytes_limited(stream, MAX_MESSAGE)
    msg = cls()
    try:
        msg.ParseFromString(data)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise PeerUnreachable(f"malformed relay message: {exc}") from None
    return msg


async def _hop_stream(host: Any, relay: ID) -> Any:
    try:
        return await host.new_stream(relay, [HOP])
    except Exception as exc:  # py-libp2p raises many unrelated types for a failed stream
        raise PeerUnreachable(f"relay {str(relay)[-8:]} unreachable: {exc}") from None


async def reserve(host: Any, relay: str) -> Granted:
    """Ask ``relay`` (connected) for a slot; PeerUnreachable if it says no or fails."""
    relay_id = ID.from_base58(relay)
    stream = await _hop_stream(host, relay_id)
    try:
        await write_msg(stream, HopMessage(type=HopMessage.RESERVE))
        resp = await read_msg(stream, HopMessage)
    except BaseException as exc:  # failed or cancelled: free the relay's handler
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            await reset_quietly(stream)
        if isinstance(exc, PeerUnreachable) or not isinstance(exc, Exception):
            raise
        raise PeerUnreachable(f"reservation on {relay[-8:]} failed: {exc}") from None
    await close_quietly(stream)
    status = resp.status if resp.HasField("status") else 0
    if resp.type != HopMessage.STATUS or status != StatusCode.OK or not resp.HasField("reservation"):
        raise PeerUnreachable(f"relay {relay[-8:]} refused a reservation (status {status})")
    addrs = []
    for raw in list(resp.reservation.addrs)[:MAX_RELAY_ADDRS]:
        try:
            text = str(multiaddr.Multiaddr(raw))
        except Exception:  # multiaddr raises several unrelated types for bad bytes
            continue
        if text.endswith(f"/p2p/{relay}") and CIRCUIT not in text:
            addrs.append(text + CIRCUIT)
    limit = resp.limit if resp.HasField("limit") else None
    return Granted(relay, float(resp.reservation.expire), tuple(addrs),
                   int(limit.duration) if limit else 0, int(limit.data) if limit else 0)


async def dial_via(host: Any, relay: str, dest: str) -> None:
    """Open a relayed connection to ``dest`` through ``relay`` (connected), upgraded with
    Noise and yamux like any other connection and added to the swarm."""
    relay_id, dest_id = ID.from_base58(relay), ID.from_base58(dest)
    stream = await _hop_stream(host, relay_id)
    done = False
    try:
        try:
            await write_msg(stream, HopMessage(type=HopMessage.CONNECT,
                                               peer=CircuitPeerId(id=dest_id.to_bytes())))
            resp = await read_msg(stream, HopMessage)
        except PeerUnreachable:
            raise
        except Exception as exc:
            raise PeerUnreachable(f"circuit to {dest[-8:]} via {relay[-8:]} failed: {exc}") from None
        status = resp.status if resp.HasField("status") else 0
        if resp.type != HopMessage.STATUS or status != StatusCode.OK:
            name = StatusCode(status).name if status in StatusCode._value2member_map_ else status
            raise PeerUnreachable(f"relay {relay[-8:]} would not connect us to {dest[-8:]}: {name}")
        circuit = multiaddr.Multiaddr(f"/p2p/{relay}{CIRCUIT}/p2p/{dest}")
        raw = RawConnection(stream=stream, initiator=True, connection_type=ConnectionType.RELAYED,
                            addresses=[circuit])
        try:
            conn = await host.upgrade_outbound_connection(raw, dest_id)
        except Exception as exc:
            raise PeerUnreachable(f"circuit to {dest[-8:]} via {relay[-8:]}: upgrade failed: {exc}") from None
        conn.set_transport_info([circuit], ConnectionType.RELAYED)
        done = True
    finally:
        if not done:  # failed or cancelled: the relay must not hold the circuit open
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await reset_quietly(stream)


def is_relayed(conn: Any) -> bool:
    """Whether a py-libp2p connection runs through a relay (both ends tag it so: the
    dialler in :func:`dial_via`, the destination in py-libp2p's stop handler)."""
    try:
        return bool(conn.get_connection_type() == ConnectionType.RELAYED)
    except Exception:  # None, or a connection closing under us
        return False


def remaining(granted: Granted, now_wall: float | None = None) -> float:
    """Seconds left on a reservation by the relay's clock."""
    return granted.expires - (time.time() if now_wall is None else now_wall)


async def reset_quietly(stream: Any) -> None:
    try:
        await stream.reset()
    except Exception:  # already gone
        pass


async def close_quietly(stream: Any) -> None:
    try:
        await stream.close()
    except Exception:  # already gone
        pass
