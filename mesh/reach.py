"""Reachability dial-backs: the wire side of ``/poolai/reach/1.0.0`` and its proof protocol.

A node that wants to know whether the internet can dial it asks a few peers, over
connections it already has, to dial it back::

    reach.request { nonce: bytes [16..32], ports: [int 1..65535] [≤4] }
    reach.reply   { observed: str [≤128], results: [reach.result] [≤5] }
    reach.result  { addr: str [≤128], ok: bool, error: str [≤160] }

The server dials only the IP the request came from (its observed address of the
requester), at the ports named and at the observed port, from a **fresh** connection made
by a separate, throw-away libp2p identity (never the connection the request came on:
py-libp2p's AutoNAT v1 "dials" over that one and calls a firewalled node public). Over
the fresh connection it proves it got through by handing back the requester's nonce on
the second protocol::

    /poolai/reach-back/1.0.0
    reach.back    { nonce: bytes [16..32] }
    reach.back_ok { }

The requester counts an address as reachable only when the nonce arrived *there*, on an
inbound connection other than the request's, so a server that lies or dials over the
old connection cannot make a node believe it is public. Which requests a server serves,
and what a node concludes, are :mod:`poolai.node.reach.rules`; this module moves bytes.
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from poolai.mesh import rpc
from poolai.mesh.errors import PeerUnreachable
from poolai.mesh.host import Libp2pStream, MeshHost, open_host
from poolai.mesh.members import DIALER_MARK
from poolai.mesh.wire import field, message

PROTOCOL = "/poolai/reach/1.0.0"
BACK_PROTOCOL = "/poolai/reach-back/1.0.0"
MAX_FRAME = 4096  # every message of both protocols fits in well under 1 KiB
NONCE_MIN, NONCE_MAX = 16, 32
MAX_PORTS = 4  # listen ports a requester may name; the observed port makes at most 5 dials
MAX_ADDR = 128


@message("reach.request")
class DialRequest:
    """Dial me back: at my observed IP, on ``ports`` and on the port you see."""

    nonce: bytes = field(max_len=NONCE_MAX)
    ports: tuple[int, ...] = field(max_len=MAX_PORTS)


@message("reach.result")
class DialResult:
    """One dial-back: ``ok`` once the fresh connection delivered the nonce and got its ack."""

    addr: str = field(max_len=MAX_ADDR)
    ok: bool
    error: str = field(max_len=160, default="")


@message("reach.reply")
class DialReply:
    """``observed``: the address the server saw the request come from (``/ip4/../tcp/..``)."""

    observed: str = field(max_len=MAX_ADDR)
    results: tuple[DialResult, ...] = field(max_len=MAX_PORTS + 1)


@message("reach.back")
class DialBack:
    nonce: bytes = field(max_len=NONCE_MAX)


@message("reach.back_ok")
class DialBackAck:
    pass


def tcp_addr(ip: str, port: int) -> str:
    """``/ip4/<ip>/tcp/<port>`` (or ``/ip6/``); ValueError for a bad IP or port."""
    parsed = ipaddress.ip_address(ip)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    return f"/ip{parsed.version}/{parsed}/tcp/{port}"


def parse_tcp_addr(addr: str) -> tuple[str, int] | None:
    """(ip, port) of ``/ip4|ip6/<ip>/tcp/<port>[/...]``, or None for anything else."""
    parts = addr.split("/")
    if len(parts) < 5 or parts[1] not in ("ip4", "ip6") or parts[3] != "tcp":
        return None
    try:
        ip = ipaddress.ip_address(parts[2])
        port = int(parts[4])
    except ValueError:
        return None
    return (str(ip), port) if 0 < port < 65536 else None


@dataclass(frozen=True, slots=True)
class Via:
    """What a handler knows of the stream a message came on (``str()`` is the peer id)."""

    peer_id: str
    remote: tuple[str, int] | None  # the (ip, port) the other end is seen at
    local: tuple[str, int] | None  # our end of the connection
    inbound: bool  # the other end opened the connection
    connection: object  # compare with ``is``

    @classmethod
    def of(cls, stream: Libp2pStream) -> Via:
        return cls(stream.peer_id, stream.remote_addr, stream.local_addr, stream.inbound,
                   stream.connection)

    def __str__(self) -> str:
        return self.peer_id


def serve(host: MeshHost, protocol: str, service: rpc.Service) -> None:
    """Serve ``protocol`` with ``service``, whose handler gets a :class:`Via` as its peer."""

    async def handler(stream: Libp2pStream) -> None:
        await service.handle(stream, Via.of(stream))

    host.set_handler(protocol, handler)


async def ask(host: MeshHost, peer_id: str, request: DialRequest,
              on_stream: Callable[[Via], None], *, timeout: float) -> DialReply:  # noqa: ASYNC109
    """Ask ``peer_id`` for a dial-back over the existing connection. ``on_stream`` learns
    which connection the request goes on before it is sent (the dial-back must come on
    another). Returns the reply; raises MeshError (``RemoteError`` ``busy`` for a server's
    limits, ``RequestTimeout`` past ``timeout``)."""
    reply: DialReply = await host.request(peer_id, PROTOCOL, request, (DialReply,), timeout=timeout,
                                          max_frame=MAX_FRAME,
                                          on_stream=lambda stream: on_stream(Via.of(stream)))
    return reply


@asynccontextmanager
async def open_dialer() -> AsyncIterator[MeshHost]:
    """A host with a fresh identity that listens nowhere: dial-backs leave from it, so each
    is a new TCP connection and a new Noise session, never the requester's own connection.

    It serves :data:`~poolai.mesh.members.DIALER_MARK` (registered before it dials anyone,
    so every identify of it lists the marker): the node it dials sees a connected peer
    that is no member of the mesh (:mod:`poolai.mesh.members`), and keeps it out of its
    overlay, storage ring, peer book and syncs."""
    async with open_host(create_new_key_pair(), []) as dialer:
        dialer.set_handler(DIALER_MARK, _refuse)
        yield dialer


async def _refuse(stream: Libp2pStream) -> None:
    await stream.reset()  # the marker is for identify to list; nothing speaks it


async def dial_back(dialer: MeshHost, peer_id: str, addr: str, nonce: bytes, *, timeout: float) -> None:  # noqa: ASYNC109
    """From ``dialer`` (a host of its own, with no connection to ``peer_id``), open a new
    connection to ``peer_id`` at ``addr`` only and deliver ``nonce``; then hang up.

    The Noise handshake checks that whoever answers at ``addr`` holds ``peer_id``'s key, so
    a dial-back reaches the requester or nobody. Raises :class:`PeerUnreachable` (or
    another :class:`MeshError`) when it does not get through within ``timeout``.
    """
    if dialer.is_connected(peer_id):
        raise PeerUnreachable("the dialer already holds a connection to this peer")
    try:
        with trio.fail_after(timeout):
            await dialer.connect(peer_id, [addr])
            await dialer.request(peer_id, BACK_PROTOCOL, DialBack(nonce=nonce), (DialBackAck,),
                                 timeout=timeout, max_frame=MAX_FRAME)
    except trio.TooSlowError:
        raise PeerUnreachable(f"no answer within {timeout:g} s") from None
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            await dialer.disconnect(peer_id)


