"""Joining the mesh: bootstrap dialling with backoff, and peer exchange.

The connection manager keeps the node connected to up to ``target_peers``
peers from its :class:`~poolai.mesh.peers.PeerBook`, dialling bootstrap peers
first and backing off exponentially on failure. After each new connection it
asks that peer for the peers it knows (``/poolai/peers/1.0.0``), which is how a
node that bootstrapped from one peer comes to know the rest of the mesh.

It also keeps the node's inbound connections under ``inbound_cap``: when more are
open (checked after each inbound connection and every round), it closes those
:func:`~poolai.mesh.admission.choose_shed` picks, never the overlay's links
(``protected``) nor a connection with a stream open. Newcomers are not refused
for being many; the least useful connection makes room instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from typing import Any

import trio

from poolai.mesh import rpc, wire
from poolai.mesh.admission import MIN_IDLE, choose_shed, inbound_cap_for
from poolai.mesh.circuit import HOP
from poolai.mesh.errors import MeshError
from poolai.mesh.host import MeshHost
from poolai.mesh.peers import MAX_ADDR_LEN, MAX_ADDRS_PER_PEER, PeerBook
from poolai.mesh.short_ids import short_id

log = logging.getLogger(__name__)

PROTOCOL = "/poolai/peers/1.0.0"
MAX_PEERS_PER_REPLY = 64


@wire.message("peers.request")
class PeersRequest:
    limit: int = wire.field(min=1, max=MAX_PEERS_PER_REPLY)


@wire.message("peers.record")
class PeerRecord:
    peer_id: str = wire.field(max_len=128)
    addrs: tuple[str, ...] = wire.field(max_len=MAX_ADDRS_PER_PEER)


@wire.message("peers.reply")
class PeersReply:
    peers: tuple[PeerRecord, ...] = wire.field(max_len=MAX_PEERS_PER_REPLY)


def strip_p2p(addr: str) -> str:
    """``addr`` without its trailing ``/p2p/<id>`` (a relay address keeps the relay's:
    ``/ip4/../p2p/<relay>/p2p-circuit/p2p/<id>`` becomes ``/ip4/../p2p/<relay>/p2p-circuit``)."""
    head, sep, tail = addr.rpartition("/p2p/")
    return head if sep and "/" not in tail else addr


class ConnectionManager:
    """Keeps the node connected; owns the peer-exchange protocol."""

    def __init__(
        self,
        host: MeshHost,
        book: PeerBook,
        *,
        target_peers: int = 32,
        dial_timeout: float = 15.0,
        request_timeout: float = 5.0,
        interval: float = 1.0,
        exchange_every: float = 30.0,
        relay_exchange_every: float = 10.0,
        inbound_cap: int | None = None,
        protected: Callable[[], Collection[str]] = frozenset,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host = host
        self.book = book
        self.target_peers = target_peers
        self.dial_timeout = dial_timeout
        self.request_timeout = request_timeout
        self.interval = interval
        self.exchange_every = exchange_every
        # Relays learn first where private peers can be reached (their reservations), so
        # they are asked more often than other peers.
        self.relay_exchange_every = relay_exchange_every
        self.clock = clock
        self.monotonic = monotonic  # the host's connection facts are on this clock
        self.inbound_cap = inbound_cap_for(target_peers) if inbound_cap is None else inbound_cap
        self.protected = protected  # peers never shed: the overlay's links
        self.dials_ok = 0
        self.dials_failed = 0
        self.shed = 0  # inbound connections closed to stay under inbound_cap
        self._dialling: set[str] = set()
        self._connected: set[str] = set()  # as of the last round, or a dial of ours since
        self._shedding: set[str] = set()
        self._last_exchange: dict[str, float] = {}
        self._wake = trio.Event()
        self.service = rpc.Service(
            "peers", self._on_request, rpc.ServiceConfig(request_types=(PeersRequest,))
        )

    def wake(self) -> None:
        """Run the next maintenance round now (new bootstrap peers, a lost connection)."""
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.host.serve(PROTOCOL, self.service)
        self.host.on_inbound(self.wake)
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                self._round(nursery)
                with trio.move_on_after(self.interval):
                    await self._wake.wait()
                self._wake = trio.Event()

    def _round(self, nursery: trio.Nursery) -> None:
        self._shed(nursery)
        now = self.clock()
        connected = set(self.host.connected_peers())  # every connection takes room
        members = set(self.host.member_peers())  # only nodes are booked and asked (mesh.members)
        self._log_joins_and_leaves(members)
        for peer in members:
            self.book.add(peer, [strip_p2p(a) for a in self.host.peer_addrs(peer)])
            self.book.mark_connected(peer, now)
        room = self.target_peers - len(connected) - len(self._dialling)
        if room > 0:
            for entry in self.book.due(now, connected | self._dialling, room):
                self._dialling.add(entry.peer_id)
                nursery.start_soon(self._dial, entry.peer_id, list(entry.addrs))
        stale = [p for p in members if now - self._last_exchange.get(p, 0.0) > self._exchange_period(p)]
        if stale:
            peer = min(stale, key=lambda p: self._last_exchange.get(p, 0.0))
            self._last_exchange[peer] = now
            nursery.start_soon(self._exchange, peer)

    def _exchange_period(self, peer: str) -> float:
        return self.relay_exchange_every if self.host.supports(peer, HOP) else self.exchange_every

    def _log_joins_and_leaves(self, connected: set[str]) -> None:
        """One line per peer that connected (a dial of ours says so itself) or went away.
        An inbound connection wakes the round at once, so a join is logged as it happens."""
        inbound = {f.peer_id for f in self.host.connection_facts() if f.inbound}
        for peer in sorted(connected - self._connected):
            addrs = [strip_p2p(a) for a in self.host.peer_addrs(peer)]
            log.info("peer %s connected (%s%s)", peer, "inbound" if peer in inbound else "outbound",
                     f", {addrs[0]}" if addrs else "")
        for peer in sorted(self._connected - connected):
            log.info("peer %s disconnected", peer)
        self._connected = connected

    def _shed(self, nursery: trio.Nursery) -> None:
        facts = [f for f in self.host.connection_facts() if f.peer_id not in self._shedding]
        shed = choose_shed(facts, cap=self.inbound_cap, protected=set(self.protected()),
                           now=self.monotonic(), min_idle=MIN_IDLE)
        for peer in shed:
            self._shedding.add(peer)
            nursery.start_soon(self._disconnect, peer)
        if shed:
            self.shed += len(shed)
            log.info("over the inbound cap of %d: closing %d idle connection(s)",
                     self.inbound_cap, len(shed))

    async def _disconnect(self, peer_id: str) -> None:
        try:
            await self.host.disconnect(peer_id)
        finally:
            self._shedding.discard(peer_id)

    def status(self) -> dict[str, Any]:
        """Connection counts and what inbound admission decided (for ``/api/status``)."""
        facts = self.host.connection_facts()
        inbound = sum(1 for f in facts if f.inbound)
        out: dict[str, Any] = {
            "inbound": inbound,
            "outbound": len(facts) - inbound,
            "inbound_cap": self.inbound_cap,
            "dials_ok": self.dials_ok,
            "dials_failed": self.dials_failed,
            "shed": self.shed,
        }
        if self.host.admission is not None:
            stats = self.host.admission.statistics()
            out.update(accepted=stats.accepted, refused_ip_rate=stats.refused_ip_rate,
                       refused_peer_rate=stats.refused_peer_rate,
                       refused_total_rate=stats.refused_total_rate)
        return out

    async def _dial(self, peer_id: str, addrs: list[str]) -> None:
        try:
            with trio.fail_after(self.dial_timeout):
                await self.host.connect(peer_id, addrs)
        except (MeshError, trio.TooSlowError, ValueError) as exc:
            self.dials_failed += 1
            delay = self.book.mark_failed(peer_id, self.clock())
            log.debug("dial %s failed (%s); retry in %.0f s", short_id(peer_id), exc, delay)
            return
        finally:
            self._dialling.discard(peer_id)
        self.dials_ok += 1
        self.book.mark_connected(peer_id, self.clock())
        if peer_id not in self._connected:
            self._connected.add(peer_id)
            log.info("connected to %s", peer_id)
        self._last_exchange[peer_id] = self.clock()
        await self._exchange(peer_id)

    async def _exchange(self, peer_id: str) -> None:
        try:
            reply = await self.host.request(
                peer_id,
                PROTOCOL,
                PeersRequest(limit=MAX_PEERS_PER_REPLY),
                (PeersReply,),
                timeout=self.request_timeout,
            )
        except MeshError as exc:
            log.debug("peer exchange with %s failed: %s", short_id(peer_id), exc)
            return
        learned = 0
        for record in reply.peers:
            addrs = [a for a in record.addrs if len(a) <= MAX_ADDR_LEN]
            if record.peer_id != self.host.peer_id and record.peer_id not in self.book:
                learned += 1
            self.book.add(record.peer_id, addrs)
        if learned:
            log.info("learned %d peer(s) from %s", learned, short_id(peer_id))
            self.wake()

    async def _on_request(self, peer: str, request: PeersRequest) -> PeersReply:
        connected = set(self.host.member_peers())
        entries = [e for e in self.book.entries() if e.peer_id != peer and e.addrs]
        entries.sort(key=lambda e: (e.peer_id not in connected, -e.last_seen))
        records = [
            PeerRecord(peer_id=e.peer_id, addrs=tuple(e.addrs[:MAX_ADDRS_PER_PEER]))
            for e in entries[: request.limit - 1]
        ]
        # Ourselves too: the asker may know us only by the address it dialled, not by
        # the relay addresses we hold (they change as relays come and go).
        own = [a for a in self.host.transport_addrs() if len(a) <= MAX_ADDR_LEN][-MAX_ADDRS_PER_PEER:]
        if own:
            records.insert(0, PeerRecord(peer_id=self.host.peer_id, addrs=tuple(own)))
        return PeersReply(peers=tuple(records[: request.limit]))
