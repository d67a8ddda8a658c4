"""The overlay on libp2p: carries out the pure :class:`OverlayTable`'s decisions.

This driver only moves bytes and time. Every second it asks the table for due
actions (probes, neighbour-list requests, long-link lookups) and runs them
with bounded concurrency and a deadline each, reporting outcomes back. It
serves the three overlay requests (probe, links, step) from the same table.

Lookups are **iterative**: the querying node asks one hop after another and
picks each next hop itself. That keeps every timeout and retry decision at the
one node that cares about the answer, lets it exclude dead peers as it meets
them and ask ``alpha`` hops in parallel, and means a forwarding node never
holds state for somebody else's lookup (recursive routing would make every hop
a relay for strangers' requests and hide which hop failed).
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import Callable, Iterable
from typing import Any

import trio

from poolai.mesh import overlay_wire as ow
from poolai.mesh import rpc
from poolai.mesh.errors import MeshError, PeerUnreachable, RemoteError, RequestTimeout
from poolai.mesh.host import MeshHost
from poolai.mesh.links import (
    DEFAULT_CONFIG,
    AskNear,
    AskNeighbours,
    FindLong,
    OverlayConfig,
    Probe,
)
from poolai.mesh.lookup import DEFAULT_LOOKUP, IterativeLookup, LookupConfig
from poolai.mesh.overlay import OverlayTable
from poolai.mesh.peer_ids import peer_id_bytes, peer_id_text
from poolai.mesh.peers import PeerBook
from poolai.mesh.routing import PeerInfo
from poolai.mesh.short_ids import short_peer

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class DriverConfig:
    tick: float = 1.0  # seconds between maintenance rounds
    request_timeout: float = 3.0  # one probe, links request or lookup hop
    max_parallel: int = 16  # overlay requests in flight at once
    join_retry: float = 2.0  # seconds between join attempts while the node has no ring neighbours


def scaled(config: OverlayConfig, scale: float) -> OverlayConfig:
    """The overlay's periods multiplied by ``scale`` (tests and small meshes run faster)."""
    names = ("probe_interval", "stabilise_interval", "exchange_interval", "sample_interval",
             "proximity_interval", "long_retry", "failed_memory")
    return dataclasses.replace(config, **{n: getattr(config, n) * scale for n in names})


@dataclasses.dataclass
class OverlayStats:
    probes_sent: int = 0
    probes_failed: int = 0
    links_requests: int = 0
    lookups: int = 0
    lookups_failed: int = 0
    requests_served: int = 0
    peers_removed: int = 0


class OverlayNode:
    """One node's overlay: the pure table plus the network that feeds it."""

    def __init__(
        self,
        host: MeshHost,
        book: PeerBook,
        *,
        config: OverlayConfig = DEFAULT_CONFIG,
        driver: DriverConfig = DriverConfig(),
        lookup: LookupConfig = DEFAULT_LOOKUP,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.host = host
        self.book = book
        self.self_bytes = peer_id_bytes(host.peer_id)
        self.table = OverlayTable(self.self_bytes, config)
        self.dims = config.vivaldi.dimensions
        self.driver = driver
        self.lookup_config = lookup
        self.clock = clock
        self.rng = rng or random.Random()
        self.stats = OverlayStats()
        self._limiter = trio.CapacityLimiter(driver.max_parallel)
        self._busy: set[tuple[str, bytes]] = set()  # (action kind, peer) already in flight
        self.service = rpc.Service(
            "overlay",
            self._serve,
            rpc.ServiceConfig(request_types=ow.REQUESTS, max_frame=ow.MAX_FRAME, read_timeout=5.0),
        )

    # ------------------------------------------------------------------ running
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.host.serve(ow.PROTOCOL, self.service)
        async with trio.open_nursery() as nursery:
            task_status.started()
            next_join = 0.0
            while True:
                now = self.clock()
                self._observe_connected(now)
                links = self.table.links()
                if not links.successors and now >= next_join and self.host.member_peers():
                    next_join = now + self.driver.join_retry
                    nursery.start_soon(self._join)
                for action in self.table.maintenance(now, self.rng):
                    self._start(nursery, action)
                await trio.sleep(self.driver.tick)

    def _observe_connected(self, now: float) -> None:
        # A member connected to us is a peer we know directly; the table decides if it matters.
        # (Not every connected peer: a reachability dial-back is no node, see mesh.members.)
        for peer in self.host.member_peers():
            try:
                self.table.observe(PeerInfo.of(peer_id_bytes(peer)), now, direct=True)
            except ValueError:
                continue

    def _start(self, nursery: trio.Nursery, action: Any) -> None:
        if isinstance(action, Probe):
            key = ("probe", action.peer)
            job = self._probe(action.peer, action.link)
        elif isinstance(action, AskNeighbours):
            key = ("links", action.peer)
            job = self._ask_links(action.peer)
        elif isinstance(action, AskNear):
            key = ("near", action.peer)
            job = self._ask_near(action.peer)
        elif isinstance(action, FindLong):
            key = ("long", action.target.to_bytes(8, "big"))
            job = self._find_long(action.slot, action.target)
        else:  # Drop: connections are shared with other services, so nothing to close here
            return
        if key in self._busy:
            job.close()
            return
        self._busy.add(key)

        async def guarded() -> None:
            try:
                async with self._limiter:
                    await job
            finally:
                self._busy.discard(key)

        nursery.start_soon(guarded)

    # ------------------------------------------------------------------ outgoing requests
    def _me(self) -> ow.WirePeer:
        return ow.WirePeer(
            id=self.self_bytes,
            addrs=tuple(self.host.transport_addrs()[: ow.MAX_ADDRS]),
            coord=ow.coord_to_wire(self.table.coord),
        )

    def _wire_peer(self, peer: PeerInfo) -> ow.WirePeer:
        addrs: tuple[str, ...] = ()
        try:
            entry = self.book.get(peer_id_text(peer.peer_id))
        except ValueError:
            entry = None
        if entry is not None:
            addrs = tuple(entry.addrs[:2])
        return ow.WirePeer(id=peer.peer_id, addrs=addrs, coord=ow.coord_to_wire(peer.coord))

    def _learn(self, peers: Iterable[ow.WirePeer]) -> None:
        """Remember addresses of peers named to us, so the overlay can dial them."""
        for p in peers:
            try:
                text = peer_id_text(p.id)
            except ValueError:
                continue
            if p.addrs and text != self.host.peer_id:
                self.book.add(text, list(p.addrs))
                self.host.add_addrs(text, list(p.addrs))

    async def _request(self, peer: bytes, request: Any, reply_type: type,
                       on_stream: Callable[[Any], None] | None = None) -> Any:
        return await self.host.request(
            peer_id_text(peer), ow.PROTOCOL, request, (reply_type,),
            timeout=self.driver.request_timeout, max_frame=ow.MAX_FRAME, on_stream=on_stream,
        )

    async def _probe(self, peer: bytes, link: bool) -> None:
        self.stats.probes_sent += 1
        # Timed from the stream's opening, as a ping is: opening it negotiates the protocol
        # (multistream-select, more round trips through both nodes' event loops), which on
        # two nodes of one busy machine put 30-50 ms on a loopback round trip of well under 1.
        start = time.perf_counter()

        def opened(_stream: Any) -> None:
            nonlocal start
            start = time.perf_counter()

        try:
            pong = await self._request(peer, ow.ProbeRequest(sender=self._me(), link=link), ow.Pong,
                                       on_stream=opened)
        except (MeshError, ValueError) as exc:
            self.stats.probes_failed += 1
            if self.table.probe_failed(peer, self.clock()):
                self.stats.peers_removed += 1
                log.info("overlay: peer %s removed after failed probes (%s)", _short(peer), exc)
            return
        rtt = (time.perf_counter() - start) * 1000.0
        if pong.responder.id != peer:
            return
        self._learn([pong.responder])
        coord = ow.coord_from_wire(pong.responder.coord, self.dims)
        self.table.record_rtt(peer, rtt, coord, self.clock(), self.rng)

    async def _ask_links(self, peer: bytes) -> None:
        self.stats.links_requests += 1
        try:
            links = await self._request(peer, ow.LinksRequest(sender=self._me()), ow.WireLinks)
        except (MeshError, ValueError):
            self.table.probe_failed(peer, self.clock())
            return
        self._learn([links.node, *links.successors, *links.predecessors, *links.long, *links.proximity])
        self.table.merge_neighbours(peer, ow.links_from_wire(links, self.dims), self.clock())

    async def _ask_near(self, peer: bytes) -> None:
        coord = ow.coord_to_wire(self.table.coord)
        assert coord is not None
        try:
            reply = await self._request(peer, ow.NearQuery(sender=self._me(), coord=coord), ow.NearAnswer)
        except (MeshError, ValueError):
            return
        self._learn(reply.peers)
        peers = [ow.peer_from_wire(p, self.dims) for p in reply.peers]
        self.table.merge_near(peer, peers, self.clock())

    async def _find_long(self, slot: int, target: int) -> None:
        owner = await self.lookup(target)
        if owner is not None:
            self.table.long_link_found(slot, target, owner, self.clock())

    async def _join(self) -> None:
        """Route to our own position and splice in next to the owner we find."""
        seeds = []
        for peer in self.host.member_peers()[:8]:
            try:
                seeds.append(PeerInfo.of(peer_id_bytes(peer)))
            except ValueError:
                continue
        owner = await self.lookup(self.table.position, seeds)
        if owner is not None and owner.peer_id != self.self_bytes:
            await self._ask_links(owner.peer_id)

    async def lookup(self, key: int, seeds: Iterable[PeerInfo] = ()) -> PeerInfo | None:
        """The live owner of ring position ``key``, or None when the lookup fails."""
        return (await self.run_lookup(key, seeds)).owner

    async def run_lookup(self, key: int, seeds: Iterable[PeerInfo] = ()) -> IterativeLookup:
        """:meth:`lookup`, returning the finished machine: owner, hops, queries, timeouts."""
        self.stats.lookups += 1
        lk: IterativeLookup = self.table.lookup(key, tuple(seeds), self.lookup_config)
        send, receive = trio.open_memory_channel[tuple[bytes, Any]](self.lookup_config.max_queries)
        async with trio.open_nursery() as nursery:
            inflight = 0
            while not lk.done:
                for peer in lk.next_queries():
                    inflight += 1
                    nursery.start_soon(self._ask_step, peer.peer_id, lk.request(), send.clone())
                if lk.done or inflight == 0:
                    break
                peer_id, answer = await receive.receive()
                inflight -= 1
                if answer is None:
                    lk.on_timeout(peer_id)
                else:
                    lk.on_answer(peer_id, answer)
            nursery.cancel_scope.cancel()
        if lk.owner is None:
            self.stats.lookups_failed += 1
        return lk

    async def neighbours_of(self, peer: bytes) -> tuple[PeerInfo, ...]:
        """The successors ``peer`` reports (nearest first), learning their addresses; ``()``
        when it does not answer. Lets a node walk the ring beyond its own view."""
        try:
            links = await self._request(peer, ow.LinksRequest(sender=self._me()), ow.WireLinks)
            successors = ow.links_from_wire(links, self.dims).successors
        except (MeshError, ValueError):
            return ()
        self._learn([links.node, *links.successors])
        return successors

    async def _ask_step(self, peer: bytes, request: Any, send: trio.MemorySendChannel) -> None:
        async with send:
            answer = None
            if peer == self.self_bytes:
                answer = self.table.answer(request)
            else:
                query = ow.StepQuery(
                    sender=self._me(), key=request.key,
                    exclude=tuple(request.exclude[: ow.MAX_EXCLUDE]),
                    origin=ow.coord_to_wire(request.origin),
                )
                try:
                    reply = await self._request(peer, query, ow.StepAnswer)
                    self._learn([*reply.owners, *reply.next_hops])
                    answer = ow.step_from_wire(reply, self.dims)
                except (MeshError, ValueError):
                    answer = None
            await send.send((peer, answer))

    # ------------------------------------------------------------------ serving
    async def _serve(self, peer: str, request: Any) -> Any:
        self.stats.requests_served += 1
        now = self.clock()
        sender = request.sender
        if sender.id != peer_id_bytes(peer):
            raise rpc.RemoteFault("bad_request", "sender id does not match the connection's peer")
        self._learn([sender])
        info = ow.peer_from_wire(sender, self.dims)
        if isinstance(request, ow.ProbeRequest):
            if request.link:
                self.table.add_incoming(info, now)
            else:
                self.table.observe(info, now, direct=True)
            return ow.Pong(responder=self._me())
        self.table.observe(info, now, direct=True)
        if isinstance(request, ow.LinksRequest):
            links = self.table.links()
            w = self._wire_peer
            return ow.WireLinks(
                node=self._me(),
                successors=tuple(w(p) for p in links.successors[: ow.MAX_LIST]),
                predecessors=tuple(w(p) for p in links.predecessors[: ow.MAX_LIST]),
                long=tuple(w(p) for p in links.long[: ow.MAX_LONG]),
                proximity=tuple(w(p) for p in links.proximity[: ow.MAX_PROXIMITY]),
                size_estimate=max(1.0, links.size_estimate),
                version=links.version,
            )
        if isinstance(request, ow.NearQuery):
            coord = ow.coord_from_wire(request.coord, self.dims)
            near = self.table.near(coord) if coord is not None else ()
            return ow.NearAnswer(peers=tuple(self._wire_peer(p) for p in near[: ow.MAX_NEAR]))
        step = self.table.answer(ow.step_request_from_wire(request, self.dims))
        return ow.StepAnswer(
            responder=self._me(),
            owners=tuple(self._wire_peer(p) for p in step.owners[: ow.MAX_OWNERS]),
            next_hops=tuple(self._wire_peer(p) for p in step.next_hops[: ow.MAX_HOPS]),
        )

    # ------------------------------------------------------------------ state
    def link_peers(self) -> set[str]:
        """Peer ids of every overlay link, both ways (the connections a node must keep)."""
        links = self.table.links()
        return {peer_id_text(p.peer_id) for p in links.peers() if p.peer_id != self.self_bytes}

    def snapshot(self) -> dict[str, Any]:
        """The overlay state for the status API (JSON-ready)."""
        links = self.table.links()
        me = self.table.coord

        def describe(peer: PeerInfo) -> dict[str, Any]:
            out: dict[str, Any] = {"peer_id": peer_id_text(peer.peer_id),
                                   "position": f"{peer.position:016x}"}
            measured = self.table.measured_rtt(peer.peer_id)
            if measured is not None:
                out["rtt_ms"] = round(measured, 3)
            if peer.coord is not None:
                from poolai.mesh.coords import predicted_rtt

                out["predicted_rtt_ms"] = round(predicted_rtt(me, peer.coord), 3)
            return out

        return {
            "position": f"{self.table.position:016x}",
            "size_estimate": round(links.size_estimate, 1),
            "coordinate": {"vec": [round(v, 3) for v in me.vec], "height": round(me.height, 3),
                           "error": round(me.error, 3)},
            "successors": [describe(p) for p in links.successors],
            "predecessors": [describe(p) for p in links.predecessors],
            "long": [describe(p) for p in links.long],
            "proximity": [describe(p) for p in links.proximity],
            "incoming": len(links.incoming),
            "incoming_cap": self.table.incoming_cap,
            "stats": dataclasses.asdict(self.stats),
        }


_short = short_peer


__all__ = ["DriverConfig", "OverlayNode", "PeerUnreachable", "RemoteError", "RequestTimeout", "scaled"]
