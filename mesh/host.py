"""The libp2p host: how a node's py-libp2p host is built, and wrapped in PoolAI's own types.

libp2p is imported only under mesh/: here, in identity (keys), peer_ids, latency (ping
handler), gossip (pubsub), inbound (admission of inbound connections) and the guarded
py-libp2p patches in mesh/patches/.

py-libp2p's defaults are unsafe or slow for a long-running node (see NETWORK.md,
"Transport"), so the host is built explicitly: TCP only, Noise as the only
security protocol, yamux as the only muxer, one connection per peer, and no
auto-connector (PoolAI's own connection manager decides whom to dial).
libp2p exceptions are translated here into :mod:`poolai.mesh.errors`, and
libp2p streams are wrapped as trio ``HalfCloseableStream``-shaped objects so
that :mod:`poolai.mesh.rpc` never sees a libp2p type.

py-libp2p's internals are changed only by :mod:`poolai.mesh.patches`, installed
(each patch checked against the installed py-libp2p first) when a host opens.
Latency emulation, a test facility, lives in :mod:`poolai.mesh.latency`.
"""

from __future__ import annotations

import errno
import logging
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.host.exceptions import HostException
from libp2p.host.ping import ID as PING_PROTOCOL_ID
from libp2p.host.ping import PingService
from libp2p.identity.identify.identify import ID as IDENTIFY_PROTOCOL_ID
from libp2p.identity.identify.identify import parse_identify_response
from libp2p.network.config import ConnectionConfig
from libp2p.network.exceptions import SwarmException
from libp2p.network.stream.exceptions import StreamEOF, StreamError
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.protocol_muxer.exceptions import MultiselectClientError, MultiselectError
from libp2p.rcmgr import Direction
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.utils.varint import read_varint_prefixed_bytes_limited

from poolai.mesh import circuit, patches, rpc, wire
from poolai.mesh.admission import ConnFacts, InboundAdmission
from poolai.mesh.bounded import Memo
from poolai.mesh.errors import MeshError, PeerUnreachable, PortInUse, RequestTimeout
from poolai.mesh.inbound import AdmittingResourceManager, ConnectionTracker
from poolai.mesh.latency import LATENCY_ENV, EmulatedLatency, delayed_ping_handler
from poolai.mesh.members import members as _members
from poolai.mesh.short_ids import short_id

log = logging.getLogger(__name__)

_LIBP2P_ERRORS = (HostException, SwarmException, StreamError, MultiselectClientError, MultiselectError)
WRITE_TIMEOUT = 10.0
ADDR_TTL = 0  # 0 = permanent in py-libp2p's peerstore; PoolAI's PeerBook ages addresses itself
PING_BYTES = 32  # the ping protocol's payload
# A peer that advertises relay addresses rarely answers a direct dial: try it this long
# before going through a relay (a LAN peer answers in milliseconds).
DIRECT_FIRST = 2.0
CIRCUIT_DIAL = 8.0  # one relay: connect to it if need be, then the circuit and its upgrade
MAX_IDENTIFY = 8192  # an identify reply (keys, addresses, protocols); py-libp2p's are ~1 KiB


class Libp2pStream:
    """A libp2p stream with trio's HalfCloseableStream method names and error types.

    ``delay`` (emulated latency, normally 0) holds back the first read of each turn.
    """

    def __init__(self, stream: Any, delay: float = 0.0) -> None:
        self._stream = stream
        self.peer_id = str(stream.muxed_conn.peer_id)
        self._delay = delay
        self._turn = delay > 0  # the next read starts a turn: delay it

    @property
    def remote_addr(self) -> tuple[str, int] | None:
        """The (ip, port) this stream's connection comes from, as the socket sees it: behind a
        NAT, the NAT's mapping. None where the transport does not say."""
        try:
            addr = self._stream.get_remote_address()
        except Exception:  # py-libp2p's layers raise assorted types once a connection is gone
            return None
        return (str(addr[0]), int(addr[1])) if addr else None

    @property
    def local_addr(self) -> tuple[str, int] | None:
        """The (ip, port) this end of the stream's TCP connection is bound to, or None."""
        return _local_address(getattr(self._stream, "muxed_conn", None))

    @property
    def inbound(self) -> bool:
        """Whether the other side opened this stream's connection."""
        conn = getattr(self._stream, "swarm_conn", None)
        return getattr(conn, "direction", None) == Direction.INBOUND

    @property
    def connection(self) -> object:
        """The connection this stream runs on; compare with ``is`` (streams on the same
        connection give the same object)."""
        return getattr(self._stream, "swarm_conn", None) or self._stream.muxed_conn

    async def send_all(self, data: bytes) -> None:
        # Noise spends its nonce before the bytes go out: a write cancelled half-way leaves the
        # peer unable to decrypt anything more, and the whole connection dies. So a write is
        # never cancelled from outside; it has its own bound instead.
        with trio.CancelScope(shield=True):
            with trio.move_on_after(WRITE_TIMEOUT) as scope:
                try:
                    await self._stream.write(data)
                except StreamError as exc:
                    raise trio.BrokenResourceError(str(exc)) from None
        if scope.cancelled_caught:
            raise trio.BrokenResourceError(f"write did not complete within {WRITE_TIMEOUT:g} s")
        self._turn = self._delay > 0
        await trio.lowlevel.checkpoint_if_cancelled()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        try:
            data = await self._stream.read(max_bytes or rpc.READ_CHUNK)
        except StreamEOF:
            data = b""
        except StreamError as exc:
            raise trio.BrokenResourceError(str(exc)) from None
        if self._turn:
            self._turn = False
            await trio.sleep(self._delay)
        return data

    async def send_eof(self) -> None:
        try:
            await self._stream.close_write()
        except StreamError as exc:
            raise trio.BrokenResourceError(str(exc)) from None

    async def aclose(self) -> None:
        try:
            await self._stream.close()
        except StreamError:
            pass

    async def reset(self) -> None:
        """Abort both directions; the peer's next read fails instead of hanging."""
        try:
            await self._stream.reset()
        except StreamError:
            pass


StreamHandler = Callable[[Libp2pStream], Awaitable[None]]


def _local_address(conn: Any) -> tuple[str, int] | None:
    """The local (ip, port) of the TCP socket under a muxed connection: py-libp2p 0.8.1 keeps
    it at yamux -> secure session -> Noise reader -> raw connection -> trio stream -> socket
    and exposes only the remote end, so the chain is walked by attribute."""
    obj = getattr(conn, "secured_conn", conn)
    for _ in range(8):
        if obj is None:
            return None
        if hasattr(obj, "getsockname"):
            try:
                addr = obj.getsockname()
            except OSError:
                return None
            return (str(addr[0]), int(addr[1])) if isinstance(addr, tuple) else None
        obj = next((getattr(obj, a) for a in ("conn", "read_writer", "stream", "socket")
                    if getattr(obj, a, None) is not None), None)
    return None


def split_p2p_addr(addr: str) -> tuple[str, str]:
    """``/ip4/../tcp/../p2p/<id>`` → (peer id, transport address); ValueError if malformed."""
    try:
        info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
    except Exception as exc:  # multiaddr raises a zoo of types for bad text
        raise ValueError(f"not a valid peer address {addr!r}: {exc}") from None
    return str(info.peer_id), str(info.addrs[0]) if info.addrs else ""


def _multiaddrs(addrs: list[str]) -> list[multiaddr.Multiaddr]:
    """The addresses in ``addrs`` that parse (peers send any text; the rest is skipped)."""
    parsed = []
    for a in addrs:
        try:
            parsed.append(multiaddr.Multiaddr(a))
        except Exception:  # multiaddr raises several unrelated types for bad text
            continue
    return parsed


class MeshHost:
    """A running libp2p host. Create it with :func:`open_host`."""

    def __init__(self, host: Any, key_pair: KeyPair, latency: EmulatedLatency | None = None,
                 admission: InboundAdmission | None = None) -> None:
        self._host = host
        self.key_pair = key_pair
        self.peer_id = str(host.get_id())
        self._ping = PingService(host)
        self._ids: Memo[str, ID] = Memo(ID.from_base58)
        self.latency = latency
        self.admission = admission  # None: inbound connections are not rate limited
        self._tracker = ConnectionTracker(admission)
        self._circuit_addrs: list[str] = []  # ``<relay addr>/p2p/<relay>/p2p-circuit``
        host.get_network().register_notifee(self._tracker)
        if latency is not None:
            host.set_stream_handler(PING_PROTOCOL_ID, delayed_ping_handler(self._ping, latency))

    @property
    def libp2p(self) -> Any:
        """The py-libp2p host, for mesh modules that run py-libp2p services on it (gossip)."""
        return self._host

    def _delay(self, peer_id: str) -> float:
        return 0.0 if self.latency is None else self.latency.delay(peer_id)

    # ------------------------------------------------------------------ identity and addresses
    def addrs(self) -> list[str]:
        """Listen multiaddrs with ``/p2p/<id>``, wildcard hosts expanded to loopback."""
        out = []
        for a in self._host.get_addrs():
            text = str(a)
            out.append(text.replace("/ip4/0.0.0.0/", "/ip4/127.0.0.1/"))
        out += [f"{a}/p2p/{self.peer_id}" for a in self._circuit_addrs]
        return out

    def set_circuit_addrs(self, addrs: list[str]) -> None:
        """The relay addresses this node is reachable at (from its reservations), advertised
        with its own addresses by :meth:`addrs` and :meth:`transport_addrs`."""
        self._circuit_addrs = list(addrs)

    def circuit_addrs(self) -> list[str]:
        return list(self._circuit_addrs)

    def transport_addrs(self) -> list[str]:
        return [a.rsplit("/p2p/", 1)[0] for a in self.addrs()]

    def _id(self, peer_id: str) -> ID:
        try:
            return self._ids(peer_id)
        except Exception as exc:
            raise ValueError(f"not a valid peer id {peer_id!r}: {exc}") from None

    # ------------------------------------------------------------------ peers
    def connected_peers(self) -> list[str]:
        """Every peer with an open connection, members or not (see :meth:`member_peers`)."""
        return sorted(str(p) for p in self._host.get_connected_peers())

    def member_peers(self) -> list[str]:
        """The connected peers that are mesh members (:func:`poolai.mesh.members.is_member`:
        identified, and not a reachability dial-back). Services that treat a connected peer
        as a node (the overlay, the storage ring, peer exchange, credits) take these."""
        return _members(self.connected_peers(), self.protocols_of)

    async def wait_identified(self, peer_id: str) -> None:
        """Return once identify has answered for ``peer_id`` (a connected peer is a member
        from then on, unless it is a dial-back). py-libp2p runs identify in the background
        after each connection and signals no event, so this polls every 10 ms; the caller
        sets the deadline. For tests and tools that use a peer right after dialling it."""
        while self.protocols_of(peer_id) is None:  # noqa: ASYNC110 - nothing signals identify
            await trio.sleep(0.01)

    def protocols_of(self, peer_id: str) -> frozenset[str] | None:
        """The protocols ``peer_id``'s identify listed, or None before it answered."""
        try:
            known = self._host.get_peerstore().get_protocols(self._id(peer_id))
        except Exception:  # py-libp2p raises PeerStoreError for a peer it has no record of
            return None
        return frozenset(str(p) for p in known) or None

    def is_connected(self, peer_id: str) -> bool:
        return bool(self._host.get_network().connections.get(self._id(peer_id)))

    def is_relayed(self, peer_id: str) -> bool:
        """Connected to ``peer_id`` only through relays."""
        conns = self._host.get_network().connections.get(self._id(peer_id)) or []
        return bool(conns) and all(circuit.is_relayed(c) for c in conns)

    def relay_for(self, peer_id: str) -> str | None:
        """The relay our connection to ``peer_id`` runs through (None: direct or none)."""
        for conn in self._host.get_network().connections.get(self._id(peer_id)) or []:
            if circuit.is_relayed(conn):
                for addr in conn.get_transport_addresses():
                    relay = circuit.relay_of(str(addr))
                    if relay is not None:
                        return relay
        return None

    def dialled_addr(self, peer_id: str) -> str | None:
        """The transport address we dialled ``peer_id`` at, if our direct connection to it
        is outbound (an inbound one's remote port is the peer's ephemeral one)."""
        for conn in self._host.get_network().connections.get(self._id(peer_id)) or []:
            if getattr(conn, "direction", None) == Direction.OUTBOUND and not circuit.is_relayed(conn):
                for addr in conn.get_transport_addresses():
                    return str(addr)
        return None

    def relayed_peers(self) -> list[str]:
        return [p for p in self.connected_peers() if self.is_relayed(p)]

    def peer_remote_addr(self, peer_id: str) -> tuple[str, int] | None:
        """The (ip, port) our open connection to ``peer_id`` goes to, or None."""
        conns = self._host.get_network().connections.get(self._id(peer_id)) or []
        for conn in conns:
            try:
                addr = conn.muxed_conn.secured_conn.get_remote_address()
            except Exception:  # a connection being torn down
                continue
            if addr:
                return (str(addr[0]), int(addr[1]))
        return None

    def supports(self, peer_id: str, protocol: str) -> bool | None:
        """Whether ``peer_id``'s identify listed ``protocol``; None before identify said."""
        try:
            store = self._host.get_peerstore()
            known = store.get_protocols(self._id(peer_id))
        except Exception:  # py-libp2p raises PeerStoreError for a peer it has no record of
            return None
        if not known:
            return None
        return protocol in {str(p) for p in known}

    def connection_facts(self) -> list[ConnFacts]:
        """Every open connection as :func:`poolai.mesh.admission.choose_shed` sees it
        (times on :func:`time.monotonic`)."""
        return self._tracker.facts(self._host.get_network())

    def on_inbound(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` (it must not block or raise) after each inbound connection opens."""
        self._tracker.on_inbound = callback

    def peer_addrs(self, peer_id: str) -> list[str]:
        """Transport addresses the peerstore holds for ``peer_id`` (learned by identify or dial)."""
        try:
            return [str(a) for a in self._host.get_peerstore().addrs(self._id(peer_id))]
        except Exception:
            return []

    def add_addrs(self, peer_id: str, addrs: list[str]) -> None:
        maddrs = _multiaddrs(addrs)
        if maddrs:
            self._host.get_peerstore().add_addrs(self._id(peer_id), maddrs, ADDR_TTL)

    async def connect(self, peer_id: str, addrs: list[str]) -> None:
        """Dial ``peer_id`` at ``addrs`` (transport addresses). The caller sets the deadline.

        Direct addresses first; then, if that fails (or takes :data:`DIRECT_FIRST` s)
        and the peer advertises ``/p2p-circuit`` addresses, through each of its relays
        in turn, connected ones first (py-libp2p's ``connect`` cannot dial those).
        """
        pid = self._id(peer_id)
        if pid == self._host.get_id():
            raise ValueError("refusing to dial ourselves")
        circuits = [a for a in addrs if circuit.is_circuit(a)]
        maddrs = _multiaddrs([a for a in addrs if not circuit.is_circuit(a)])
        if not maddrs and not circuits:
            raise PeerUnreachable(f"no usable address for {peer_id}")
        errors: list[str] = []
        if maddrs:
            try:
                if not circuits:
                    await self._connect_direct(pid, maddrs)
                    return
                with trio.move_on_after(DIRECT_FIRST):
                    await self._connect_direct(pid, maddrs)
                    return
                errors.append(f"no direct answer in {DIRECT_FIRST:g} s")
            except PeerUnreachable as exc:
                if not circuits:
                    raise
                errors.append(str(exc))
        await self._connect_via_relays(peer_id, circuits, errors)

    async def _connect_direct(self, pid: ID, maddrs: list[multiaddr.Multiaddr]) -> None:
        peer_id = str(pid)
        # A failed dial is cached for 60 s by the swarm; PoolAI does its own backoff.
        network = self._host.get_network()
        if hasattr(network, "unblock_peer"):
            network.unblock_peer(pid)
        try:
            await self._host.connect(PeerInfo(pid, maddrs))
        except _LIBP2P_ERRORS as exc:
            raise PeerUnreachable(f"dial {short_id(peer_id)} failed: {exc}") from None
        except OSError as exc:
            raise PeerUnreachable(f"dial {short_id(peer_id)} failed: {exc}") from None
        if not self.is_connected(peer_id):  # py-libp2p can return from a failed dial silently
            raise PeerUnreachable(f"dial {short_id(peer_id)} failed: no connection was established")
        self._host.get_peerstore().add_addrs(pid, maddrs, ADDR_TTL)

    async def _connect_via_relays(self, peer_id: str, circuits: list[str], errors: list[str]) -> None:
        tried: set[str] = set()
        ordered = sorted(circuits, key=lambda a: not self._connected_relay(a))
        for addr in ordered:
            relay = circuit.relay_of(addr)
            if relay is None or relay in tried or relay in (self.peer_id, peer_id):
                continue
            tried.add(relay)
            try:
                with trio.fail_after(CIRCUIT_DIAL):
                    if not self.is_connected(relay):
                        await self._connect_direct(self._id(relay),
                                                   _multiaddrs([circuit.relay_transport(addr)]))
                    await circuit.dial_via(self._host, relay, peer_id)
            except (PeerUnreachable, ValueError) as exc:
                errors.append(str(exc))
                continue
            except trio.TooSlowError:
                errors.append(f"relay {relay[-8:]}: no circuit in {CIRCUIT_DIAL:g} s")
                continue
            if self.is_connected(peer_id):
                return
        raise PeerUnreachable(f"dial {peer_id[-8:]} failed: {'; '.join(errors[-3:]) or 'no relay'}")

    def _connected_relay(self, addr: str) -> bool:
        relay = circuit.relay_of(addr)
        try:
            return relay is not None and self.is_connected(relay)
        except ValueError:
            return False

    async def disconnect(self, peer_id: str) -> None:
        try:
            await self._host.disconnect(self._id(peer_id))
        except _LIBP2P_ERRORS:
            pass

    async def ping(self, peer_id: str) -> float:
        """One round trip in milliseconds, over an existing or new connection.

        A 32-byte echo on ``/ipfs/ping/1.0.0``, timed from our write to the echo's arrival:
        opening the stream (two more round trips of protocol negotiation) is not counted,
        so a starved machine inflates the figure once, not three times. Raises
        :class:`PeerUnreachable` (also for a wrong echo). The caller sets the deadline.
        """
        try:
            raw = await self._host.new_stream(self._id(peer_id), [PING_PROTOCOL_ID])
        except (*_LIBP2P_ERRORS, TypeError) as exc:  # py-libp2p 0.8 raises TypeError for a leaving peer
            raise PeerUnreachable(f"ping {short_id(peer_id)} failed: {exc}") from None
        stream = Libp2pStream(raw, self._delay(peer_id))
        payload = secrets.token_bytes(PING_BYTES)
        echo = b""
        try:
            start = time.perf_counter()
            await stream.send_all(payload)
            while len(echo) < PING_BYTES and (chunk := await stream.receive_some(PING_BYTES - len(echo))):
                echo += chunk
            rtt = (time.perf_counter() - start) * 1000.0
        except trio.BrokenResourceError as exc:
            await stream.reset()
            raise PeerUnreachable(f"ping {short_id(peer_id)} failed: {exc}") from None
        except trio.Cancelled:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.reset()  # the peer's handler stops waiting for the next ping
            raise
        if echo != payload:
            await stream.reset()
            raise PeerUnreachable(f"ping {short_id(peer_id)} failed: a wrong or short echo")
        with trio.move_on_after(1):
            await stream.aclose()
        return rtt

    async def identify_observed(self, peer_id: str) -> str | None:
        """The address ``peer_id`` sees this node's connection coming from, as its identify
        reply states it (``/ip4/../tcp/..``), or None where it gives none. Raises
        :class:`PeerUnreachable`; the caller sets the deadline."""
        try:
            raw = await self._host.new_stream(self._id(peer_id), [IDENTIFY_PROTOCOL_ID])
        except (*_LIBP2P_ERRORS, TypeError) as exc:
            raise PeerUnreachable(f"identify {peer_id[-8:]} failed: {exc}") from None
        try:
            body = await read_varint_prefixed_bytes_limited(raw, MAX_IDENTIFY)
            observed = parse_identify_response(body).observed_addr
        except Exception as exc:  # a wrong length, a bad protobuf, a stream that broke
            raise PeerUnreachable(f"identify {peer_id[-8:]} failed: {exc}") from None
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                try:
                    await raw.close()
                except Exception:
                    pass
        if not observed:
            return None
        try:
            return str(multiaddr.Multiaddr(observed))
        except Exception:  # multiaddr raises several unrelated types for bad bytes
            return None

    # ------------------------------------------------------------------ streams
    async def open_stream(self, peer_id: str, protocol: str) -> Libp2pStream:
        try:
            raw = await self._host.new_stream(self._id(peer_id), [TProtocol(protocol)])
        except _LIBP2P_ERRORS as exc:
            raise PeerUnreachable(f"stream {protocol} to {short_id(peer_id)} failed: {exc}") from None
        return Libp2pStream(raw, self._delay(peer_id))

    def set_handler(self, protocol: str, handler: StreamHandler) -> None:
        """Serve ``protocol``. The handler must not raise; it gets a wrapped stream."""

        async def on_stream(raw: Any) -> None:
            try:
                stream = Libp2pStream(raw, self._delay(str(raw.muxed_conn.peer_id)))
                await handler(stream)
            except Exception:
                # An exception escaping a libp2p handler ends the whole connection.
                log.exception("stream handler for %s failed", protocol)
                try:
                    await raw.reset()
                except Exception:
                    pass

        self._host.set_stream_handler(TProtocol(protocol), on_stream)

    def serve(self, protocol: str, service: rpc.Service) -> None:
        """Serve a request/response protocol with ``service``."""

        async def handler(stream: Libp2pStream) -> None:
            await service.handle(stream, stream.peer_id)

        self.set_handler(protocol, handler)

    async def request(
        self,
        peer_id: str,
        protocol: str,
        request: Any,
        reply_types: tuple[type, ...],
        *,
        timeout: float,  # noqa: ASYNC109 - the deadline maps to RequestTimeout here, once
        max_frame: int = wire.DEFAULT_MAX_FRAME,
        on_stream: Callable[[Libp2pStream], None] | None = None,
    ) -> Any:
        """Open a stream, send one request, return the reply; everything within ``timeout``.
        ``on_stream`` sees the stream before the request goes out (which connection it is on)."""
        stream: Libp2pStream | None = None
        try:
            with trio.fail_after(timeout):
                stream = await self.open_stream(peer_id, protocol)
                if on_stream is not None:
                    on_stream(stream)
                reply = await rpc.exchange(stream, request, reply_types, max_frame=max_frame)
        except trio.TooSlowError:
            if stream is not None:
                await stream.reset()
            raise rpc.timeout_error(f"{protocol} to {short_id(peer_id)}", timeout) from None
        except MeshError:  # ProtocolError (a bad reply) included
            if stream is not None:
                await stream.reset()
            raise
        with trio.move_on_after(1):
            await stream.aclose()
        return reply


@asynccontextmanager
async def open_host(key_pair: KeyPair, listen_addrs: list[str], *,
                    latency: EmulatedLatency | None = None,
                    admission: InboundAdmission | None = None) -> AsyncIterator[MeshHost]:
    """Start a listening host; leaving the block closes every connection and listener.

    ``latency`` defaults to :meth:`EmulatedLatency.from_env` (normally None: no delays).
    ``admission`` rate-limits inbound connections by remote IP, peer id and in total
    (:mod:`poolai.mesh.inbound`); None (for tests' many-host meshes) limits none.
    Raises ValueError for a bad listen address or latency table, :class:`PortInUse` when
    another process listens on a listen address's port, MeshError if it cannot listen,
    :class:`~poolai.mesh.patches.PatchMismatch` if py-libp2p is not the version PoolAI patches.
    """
    try:
        maddrs = [multiaddr.Multiaddr(a) for a in listen_addrs]
    except Exception as exc:
        raise ValueError(f"invalid listen address: {exc}") from None
    for addr in listen_addrs:
        check_port_free(addr)
    if latency is None:
        latency = EmulatedLatency.from_env()
    if latency is not None:
        log.warning("emulated latency is on for %d peer(s) (%s; a test facility)",
                    len(latency.one_way_s), LATENCY_ENV)
    patches.install()
    host = new_host(
        key_pair=key_pair,
        sec_opt={NOISE_PROTOCOL_ID: NoiseTransport(key_pair, create_x25519_key_pair().private_key)},
        muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
        listen_addrs=maddrs,
        connection_config=ConnectionConfig(max_connections_per_peer=1, dial_timeout=5.0),
        resource_manager=None if admission is None else AdmittingResourceManager(admission),
    )
    try:
        async with host.run(listen_addrs=maddrs):
            await _stop_auto_connector(host)
            try:
                yield MeshHost(host, key_pair, latency, admission)
            finally:
                await _close_listeners(host)
    except OSError as exc:
        raise MeshError(f"cannot listen on {', '.join(listen_addrs)}: {exc.strerror or exc}") from None


def check_port_free(addr: str) -> None:
    """Raise :class:`PortInUse` if another process listens on the TCP port of ``addr``.

    py-libp2p 0.8 sets SO_REUSEPORT on its listeners (for hole punching), so a second node
    given the same port binds it without an error and the kernel then splits the inbound
    connections between the two. A plain bind (SO_REUSEADDR only, as trio's listeners do)
    fails on a port anyone listens on, and so tells the owner before the node starts.
    Port 0 and addresses that are not ``/ip4|ip6/.../tcp/PORT`` are not checked.
    """
    parts = addr.split("/")
    if len(parts) < 5 or parts[1] not in ("ip4", "ip6") or parts[3] != "tcp" or not parts[4].isdigit():
        return
    port = int(parts[4])
    if port == 0:
        return
    family = socket.AF_INET6 if parts[1] == "ip6" else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((parts[2], port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(addr, port) from None
            # anything else (no such address, a privileged port) libp2p reports itself


async def _close_listeners(host: Any) -> None:
    # py-libp2p 0.8 leaves its TCP listeners running (in system tasks) after run() exits,
    # so a "stopped" host would go on accepting connections in this process.
    with trio.CancelScope(shield=True), trio.move_on_after(2):
        for listener in list(host.get_network().listeners.values()):
            try:
                await listener.close()
            except Exception:
                log.debug("listener did not close cleanly", exc_info=True)


async def _stop_auto_connector(host: Any) -> None:
    connector = getattr(host.get_network(), "auto_connector", None)
    if connector is not None:
        try:
            await connector.stop()
        except Exception:
            log.debug("auto-connector did not stop cleanly", exc_info=True)


__all__ = ["Libp2pStream", "MeshHost", "check_port_free", "open_host", "split_p2p_addr",
           "RequestTimeout"]
