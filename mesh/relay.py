"""Circuit relay v2 on a running host: the relay's hop server, and a private node's
reservations.

:class:`RelayServer` answers ``/libp2p/circuit/relay/0.2.0/hop`` (RESERVE and CONNECT)
within :class:`~poolai.mesh.relay_rules.RelayLimits`: a slot is freed when its holder
disconnects, a circuit is closed at its byte budget or its time limit (idle or not),
and every relayed byte passes one bucket that caps the relay's total bandwidth.

:class:`ReservationKeeper` (on a private node) holds slots on 2-3 relays picked from
the connected peers that serve the hop protocol, renews them, replaces one whose
connection dies within a second or two, and hands the host the ``/p2p-circuit``
addresses to advertise.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import multiaddr
import trio
from libp2p.connection_types import ConnectionType
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.network.stream.exceptions import StreamEOF, StreamError
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage, Limit, StopMessage
from libp2p.relay.circuit_v2.pb.circuit_pb2 import PeerId as CircuitPeerId
from libp2p.relay.circuit_v2.protocol_buffer import StatusCode
from libp2p.relay.circuit_v2.resources import RelayLimits as Libp2pRelayLimits
from libp2p.relay.circuit_v2.resources import Reservation as Libp2pReservation

from poolai.mesh import circuit
from poolai.mesh.circuit import HOP, STOP, Granted, read_msg, write_msg
from poolai.mesh.errors import PeerUnreachable
from poolai.mesh.host import MeshHost
from poolai.mesh.relay_rules import (
    TARGET_RELAYS,
    ByteBucket,
    Circuit,
    Refusal,
    RelayLimits,
    RelayTable,
    choose_relays,
    renew_at,
)

log = logging.getLogger(__name__)

EXCHANGE_TIMEOUT = 10.0  # one hop or stop exchange, end to end
CHUNK = 64 << 10
WRITE_TIMEOUT = 15.0
_STATUS = {Refusal.NO_RESERVATION: StatusCode.NO_RESERVATION,
           Refusal.RESOURCE_LIMIT: StatusCode.RESOURCE_LIMIT_EXCEEDED,
           Refusal.OFF: StatusCode.PERMISSION_DENIED}


class StopService:
    """Accepts relayed connections (circuit relay v2's ``stop`` protocol) on ``host``
    while :meth:`run` runs, each upgraded with Noise and yamux like a direct inbound one.

    Our own handler rather than py-libp2p's ``CircuitV2Protocol``: that one tags the
    relayed connection ``/p2p/<itself>/p2p-circuit/...``, naming the destination as its
    own relay (py-libp2p 0.8.1, ``handle_incoming_connection``), so nothing could tell which relay a
    connection runs through; and it reads messages of up to 64 KiB.
    """

    def __init__(self, host: MeshHost) -> None:
        self.host = host
        self.accepted = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.host.libp2p.set_stream_handler(STOP, self._on_stop)
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            self.host.libp2p.remove_stream_handler(STOP)

    async def _on_stop(self, stream: Any) -> None:
        try:
            await self._stop(stream)
        except Exception:  # a handler exception would end the relay's connection
            log.exception("relay: stop stream failed")
            await circuit.reset_quietly(stream)

    async def _stop(self, stream: Any) -> None:
        relay = str(stream.muxed_conn.peer_id)
        try:
            with trio.fail_after(EXCHANGE_TIMEOUT):
                msg = await read_msg(stream, StopMessage)
                src = ID(msg.peer.id)
                src_text = src.to_base58()
                ok = msg.type == StopMessage.CONNECT
                await write_msg(stream, StopMessage(
                    type=StopMessage.STATUS,
                    status=StatusCode.OK if ok else StatusCode.UNEXPECTED_MESSAGE))
        except Exception:  # a timeout, a reset, or bytes that are no StopMessage or peer id
            await circuit.reset_quietly(stream)
            return
        if not ok:
            await circuit.close_quietly(stream)
            return
        addr = multiaddr.Multiaddr(f"/p2p/{relay}{circuit.CIRCUIT}/p2p/{src_text}")
        raw = RawConnection(stream=stream, initiator=False, connection_type=ConnectionType.RELAYED,
                            addresses=[addr])
        done = False
        try:
            muxed = await self.host.libp2p.upgrade_inbound_connection(raw, addr)
            for conn in self.host.libp2p.get_network().get_connections(src):
                if conn.muxed_conn is muxed:
                    conn.set_transport_info([addr], ConnectionType.RELAYED)
            done = True
            self.accepted += 1
        except Exception as exc:  # the dialler gave up or failed the handshake
            log.info("relay: inbound circuit from %s via %s failed: %s", src_text[-8:], relay[-8:], exc)
        finally:
            if not done:
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    await circuit.reset_quietly(stream)


class RelayServer:
    """Serves circuit relay v2's hop protocol on ``host`` while :meth:`run` runs.

    ``on_reserved(peer, circuit_addrs)`` (optional, must not block) hears of each
    reservation: the node adds the addresses to its peer book, so its peer exchange
    tells others how to reach the private peer.
    """

    def __init__(self, host: MeshHost, limits: RelayLimits, *,
                 on_reserved: Callable[[str, list[str]], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.host = host
        self.limits = limits
        self.table = RelayTable(limits)
        self.bucket = ByteBucket(limits.bandwidth, now=clock())
        self.on_reserved = on_reserved
        self.clock = clock
        self._streams: dict[int, tuple[Any, Any]] = {}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.host.libp2p.set_stream_handler(HOP, self._on_hop)
        try:
            task_status.started()
            while True:  # a holder's slot goes with its connection
                await trio.sleep(1.0)
                for peer in self.table.reserved_peers():
                    if not self.host.is_connected(peer):
                        self.table.drop(peer)
        finally:
            self.host.libp2p.remove_stream_handler(HOP)
            with trio.CancelScope(shield=True):
                for a, b in list(self._streams.values()):
                    await circuit.reset_quietly(a)
                    await circuit.reset_quietly(b)

    def status(self) -> dict[str, Any]:
        stats = self.table.statistics()
        lim = self.limits
        return {"limits": {"reservations": lim.reservations, "circuits": lim.circuits,
                           "circuits_per_peer": lim.circuits_per_peer, "circuit_bytes": lim.circuit_bytes,
                           "circuit_seconds": lim.circuit_seconds, "bandwidth": lim.bandwidth},
                "reservations": stats.reservations, "circuits": stats.circuits,
                "reservations_made": stats.reservations_made,
                "reservations_refused": stats.reservations_refused,
                "circuits_opened": stats.circuits_opened, "circuits_refused": stats.circuits_refused,
                "closed_by_bytes": stats.closed_by_bytes, "closed_by_time": stats.closed_by_time,
                "bytes_relayed": stats.bytes_relayed}

    def circuit_addrs(self) -> list[str]:
        """This relay's dialable addresses with ``/p2p/<relay>`` (wildcards left out)."""
        out = []
        for a in self.host.libp2p.get_addrs():
            text = str(a)
            if "/ip4/0.0.0.0/" not in text and "/ip6/::/" not in text and circuit.CIRCUIT not in text:
                out.append(text)
        return out

    # ------------------------------------------------------------------ the hop protocol
    async def _on_hop(self, stream: Any) -> None:
        try:
            await self._hop(stream)
        except Exception:  # a handler exception would end the connection (LIBP2P.md 7.1)
            log.exception("relay: hop stream failed")
            await circuit.reset_quietly(stream)

    async def _hop(self, stream: Any) -> None:
        src = str(stream.muxed_conn.peer_id)
        try:
            with trio.fail_after(EXCHANGE_TIMEOUT):
                msg = await read_msg(stream, HopMessage)
        except (trio.TooSlowError, PeerUnreachable, StreamError, ValueError):
            await circuit.reset_quietly(stream)
            return
        if circuit.is_relayed(_swarm_conn(self.host, stream)):  # no relaying over a relay
            await self._status(stream, StatusCode.PERMISSION_DENIED)
            return
        if msg.type == HopMessage.RESERVE:
            await self._reserve(stream, src)
        elif msg.type == HopMessage.CONNECT:
            await self._connect(stream, src, msg)
        else:
            await self._status(stream, StatusCode.UNEXPECTED_MESSAGE)

    async def _reserve(self, stream: Any, peer: str) -> None:
        granted = self.table.reserve(peer, self.clock(), self.host.is_connected)
        if isinstance(granted, Refusal):
            log.info("relay: refused a reservation to %s (%s)", peer[-8:], granted.value)
            await self._status(stream, StatusCode.RESERVATION_REFUSED)
            return
        addrs = self.circuit_addrs()
        ttl = int(self.limits.reservation_ttl)
        voucher = Libp2pReservation(ID.from_base58(peer), Libp2pRelayLimits(
            duration=int(self.limits.circuit_seconds), data=self.limits.circuit_bytes,
            max_circuit_conns=self.limits.circuits_per_peer, max_reservations=self.limits.reservations,
            reservation_ttl=ttl), self.host.libp2p)
        voucher.addrs = [multiaddr.Multiaddr(a).to_bytes() for a in addrs]
        reply = HopMessage(type=HopMessage.STATUS, status=StatusCode.OK, reservation=voucher.to_proto(),
                           limit=self._limit())
        with trio.move_on_after(EXCHANGE_TIMEOUT):
            await write_msg(stream, reply)
        await circuit.close_quietly(stream)
        if self.on_reserved is not None:
            self.on_reserved(peer, [a + circuit.CIRCUIT for a in addrs])

    def _limit(self) -> Limit:
        return Limit(duration=int(self.limits.circuit_seconds), data=self.limits.circuit_bytes)

    async def _status(self, stream: Any, code: StatusCode) -> None:
        with trio.move_on_after(EXCHANGE_TIMEOUT):
            try:
                await write_msg(stream, HopMessage(type=HopMessage.STATUS, status=code))
            except StreamError:
                pass
        await circuit.close_quietly(stream)

    async def _connect(self, stream: Any, src: str, msg: HopMessage) -> None:
        try:
            dst_id = ID(msg.peer.id)
            dst = dst_id.to_base58()
        except Exception:  # any bytes from a peer; ID checks nothing, to_base58 may fail
            await self._status(stream, StatusCode.MALFORMED_MESSAGE)
            return
        opened = self.table.open_circuit(src, dst, self.clock())
        if isinstance(opened, Refusal):
            await self._status(stream, _STATUS[opened])
            return
        timed_out = False
        dst_stream = None
        try:
            try:
                with trio.fail_after(EXCHANGE_TIMEOUT):
                    dst_stream = await self.host.libp2p.new_stream(dst_id, [STOP])
                    await write_msg(dst_stream, StopMessage(
                        type=StopMessage.CONNECT, peer=CircuitPeerId(id=ID.from_base58(src).to_bytes()),
                        limit=self._limit()))
                    resp = await read_msg(dst_stream, StopMessage)
                ok = resp.type == StopMessage.STATUS and resp.status == StatusCode.OK
            except Exception as exc:  # the destination went away, refused, or sent garbage
                log.info("relay: %s -> %s failed at the destination: %s", src[-8:], dst[-8:], exc)
                ok = False
            if not ok:
                await self._status(stream, StatusCode.CONNECTION_FAILED)
                return
            assert dst_stream is not None
            with trio.move_on_after(EXCHANGE_TIMEOUT):
                await write_msg(stream, HopMessage(type=HopMessage.STATUS, status=StatusCode.OK,
                                                   limit=self._limit()))
            self._streams[opened.id] = (stream, dst_stream)
            timed_out = await self._pump(opened, stream, dst_stream)
        finally:
            self._streams.pop(opened.id, None)
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await circuit.reset_quietly(stream)
                if dst_stream is not None:
                    await circuit.reset_quietly(dst_stream)
            why = self.table.close_circuit(opened, timed_out)
            if why != "closed":
                log.info("relay: closed circuit %s -> %s at its %s limit (%d bytes)",
                         src[-8:], dst[-8:], why, opened.moved)

    async def _pump(self, c: Circuit, a: Any, b: Any) -> bool:
        """Copy both ways until both ends finish, a byte budget runs out or time is up;
        True when it was the time limit."""
        with trio.move_on_after(self.limits.circuit_seconds) as limit:
            async with trio.open_nursery() as both:
                both.start_soon(self._copy, c, a, b, both.cancel_scope)
                both.start_soon(self._copy, c, b, a, both.cancel_scope)
        return limit.cancelled_caught

    async def _copy(self, c: Circuit, src: Any, dst: Any, done: trio.CancelScope) -> None:
        while True:
            try:
                data = await src.read(CHUNK)
            except StreamEOF:
                data = b""
            except StreamError:
                done.cancel()
                return
            if not data:
                try:
                    await dst.close_write()  # pass the half-close on; the other way goes on
                except StreamError:
                    done.cancel()
                return
            if not c.charge(len(data)):
                done.cancel()
                return
            wait = self.bucket.take(len(data), self.clock())
            if wait > 0:
                await trio.sleep(wait)
            try:
                with trio.fail_after(WRITE_TIMEOUT):
                    await dst.write(data)
            except (StreamError, trio.TooSlowError):
                done.cancel()
                return


def _swarm_conn(host: MeshHost, stream: Any) -> Any:
    """The swarm connection a stream runs on (whose transport says whether it is relayed)."""
    peer = stream.muxed_conn.peer_id
    for conn in host.libp2p.get_network().get_connections(peer):
        if conn.muxed_conn is stream.muxed_conn:
            return conn
    return None


class ReservationKeeper:
    """Holds reservations on relays while ``private()`` says this node needs them.

    ``rtt(peer, other)`` estimates round trips (``other`` None: from this node) for
    :func:`~poolai.mesh.relay_rules.choose_relays`. Every wait is bounded: a
    reservation exchange by ``timeout``, a dead relay noticed within ``interval``.
    """

    def __init__(self, host: MeshHost, private: Callable[[], bool], *,
                 rtt: Callable[[str, str | None], float | None] = lambda a, b: None,
                 want: int = TARGET_RELAYS, interval: float = 0.5, timeout: float = 5.0,
                 rng: random.Random | None = None,
                 on_published: Callable[[list[str]], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.host = host
        self.private = private
        self.on_published = on_published  # hears the relay addresses each time they change
        self.rtt = rtt
        self.want = want
        self.interval = interval
        self.timeout = timeout
        self.rng = rng or random.Random()
        self.clock = clock
        self.held: dict[str, tuple[Granted, float, float]] = {}  # relay -> (granted, renew at, expiry)
        self._refused: dict[str, float] = {}  # relay -> not before
        self.reservations_made = 0
        self.relays_lost = 0
        self._published: tuple[str, ...] = ()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while True:
                await self.step()
                await trio.sleep(self.interval)
        finally:
            self.host.set_circuit_addrs([])

    async def step(self) -> None:
        """One round: forget dead relays, renew due ones, top up to ``want``."""
        now = self.clock()
        if not self.private():
            if self.held:
                self.held.clear()
                self._publish()
            return
        for relay, (_, _, expiry) in list(self.held.items()):
            if not self.host.is_connected(relay) or expiry <= now:
                del self.held[relay]
                self.relays_lost += 1
                log.info("relay %s gone; looking for another", relay[-8:])
        for relay, until in list(self._refused.items()):
            if until <= now:
                del self._refused[relay]
        due = [r for r, (_, at, _) in self.held.items() if at <= now]
        candidates = [p for p in self.host.connected_peers()
                      if self._refused.get(p, 0.0) <= now and not self.host.is_relayed(p)
                      and self.host.supports(p, HOP)]
        wanted = choose_relays(list(self.held), candidates, self.rtt, self.rng, self.want)
        new = [r for r in wanted if r not in self.held]
        async with trio.open_nursery() as nursery:
            for relay in due + new:
                nursery.start_soon(self._reserve, relay)
        self._publish()

    async def _reserve(self, relay: str) -> None:
        start = self.clock()
        try:
            with trio.fail_after(self.timeout):
                granted = await circuit.reserve(self.host.libp2p, relay)
        except (PeerUnreachable, trio.TooSlowError, ValueError) as exc:
            self.held.pop(relay, None)
            self._refused[relay] = self.clock() + 30.0
            log.info("no reservation on relay %s: %s", relay[-8:], exc)
            return
        if not granted.circuit_addrs:  # a relay listening on 0.0.0.0 may not know its address
            dialled = self.host.dialled_addr(relay)
            if dialled is not None:
                granted = dataclasses.replace(granted, circuit_addrs=(
                    f"{dialled}/p2p/{relay}{circuit.CIRCUIT}",))
        ttl = min(3600.0, max(10.0, circuit.remaining(granted)))
        self.held[relay] = (granted, renew_at(start + ttl, start), start + ttl)
        self.reservations_made += 1
        if not granted.circuit_addrs:
            log.warning("relay %s: no address of it to advertise", relay[-8:])

    def _publish(self) -> None:
        addrs = sorted(a for g, _, _ in self.held.values() for a in g.circuit_addrs)
        if tuple(addrs) == self._published:
            return
        self._published = tuple(addrs)
        self.host.set_circuit_addrs(addrs)
        if self.on_published is not None:
            self.on_published(addrs)
        if addrs:
            log.info("reachable through %d relay(s): %s", len(self.held),
                     ", ".join(r[-8:] for r in sorted(self.held)))

    def status(self) -> dict[str, Any]:
        now = self.clock()
        return {"relays": [{"relay": r, "expires_in_s": round(exp - now, 1), "addrs": list(g.circuit_addrs)}
                           for r, (g, _, exp) in sorted(self.held.items())],
                "reservations_made": self.reservations_made, "relays_lost": self.relays_lost}
