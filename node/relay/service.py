"""Reachability through relays as a node service.

Every node answers the circuit relay v2 ``stop`` protocol (it can be reached through a
relay) and DCUtR. A node that is *private* (see :mod:`poolai.node.relay.rules`; later
the reachability verdict, through :class:`Reachability`) holds reservations on 2-3
relays, near by the overlay's coordinates and spread apart, and advertises them; a
public node serves the hop protocol within the limits in its config. Roles are
re-decided every few seconds, so a verdict that changes takes effect without a restart.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import trio

from poolai.mesh import coords
from poolai.mesh.holepunch import HolePuncher
from poolai.mesh.peer_ids import peer_id_text
from poolai.mesh.relay import RelayServer, ReservationKeeper, StopService
from poolai.node.relay import rules

if TYPE_CHECKING:
    from poolai.mesh.overlay_net import OverlayNode
    from poolai.node.context import NodeContext

log = logging.getLogger(__name__)

ROLE_CHECK = 5.0  # seconds between re-deciding whether to serve as a relay


class Reachability(Protocol):
    """What this service needs of the reachability service: its verdict (True private,
    False public, None not known yet), and where to report this node's relay addresses."""

    def is_private(self) -> bool | None: ...

    def set_relay_addrs(self, addrs: Sequence[str]) -> None: ...


class RelayService:
    name = "relay"

    def __init__(self, ctx: NodeContext, *, overlay: OverlayNode | None = None,
                 reach: Reachability | None = None) -> None:
        """``overlay`` gives coordinates to pick near relays by (None: any order);
        ``reach`` the reachability verdict (None: ``relay_client`` and the listen
        addresses decide)."""
        self.ctx = ctx
        self.config = ctx.config
        self.overlay = overlay
        self.reach = reach
        self.host = ctx.host
        self.server = RelayServer(ctx.host, rules.limits_from(ctx.config), on_reserved=self._on_reserved)
        self.keeper = ReservationKeeper(ctx.host, self.is_private, rtt=self._rtt, rng=random.Random(),
                                        on_published=None if reach is None else reach.set_relay_addrs)
        self.puncher = HolePuncher(ctx.host, enabled=ctx.config.hole_punch)
        self.serving = False

    def is_private(self) -> bool:
        """Whether this node needs relays to be reached (the small interface the
        reachability verdict plugs into)."""
        return rules.is_private(self.config.relay_client, self._verdict(), self._ips())

    def _verdict(self) -> bool | None:
        return self.reach.is_private() if self.reach is not None else None

    def _ips(self) -> list[str]:
        return rules.listen_ips(self.host.transport_addrs())

    def _serves(self) -> bool:
        return rules.serves(self.config.relay_service, self.is_private(),
                            rules.looks_public(self._verdict(), self._ips()))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(StopService(self.host).run)
            await nursery.start(self.puncher.run)
            await nursery.start(self.keeper.run)
            task_status.started()
            server_scope: trio.CancelScope | None = None
            while True:
                want = self._serves()
                if want and server_scope is None:
                    server_scope = await nursery.start(self._serve)
                    log.info("serving as a circuit relay (%d slots, %d circuits)",
                             self.server.limits.reservations, self.server.limits.circuits)
                elif not want and server_scope is not None:
                    server_scope.cancel()
                    server_scope = None
                self.serving = server_scope is not None
                await trio.sleep(ROLE_CHECK)

    async def _serve(self, *,
                     task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            await self.server.run()

    def _on_reserved(self, peer: str, addrs: list[str]) -> None:
        if self.ctx.book is not None:
            self.ctx.book.add(peer, addrs)

    def _rtt(self, peer: str, other: str | None) -> float | None:
        if self.overlay is None:
            return None
        members = {peer_id_text(p.peer_id): p.coord for p in self.overlay.table.members()}
        a = members.get(peer)
        b = self.overlay.table.coord if other is None else members.get(other)
        if a is None or b is None:
            return None
        return coords.predicted_rtt(a, b)

    def status(self) -> dict[str, Any]:
        return {"private": self.is_private(), "relay_client": self.config.relay_client,
                "serving": self.serving, "server": self.server.status() if self.serving else None,
                "client": self.keeper.status(), "circuit_addrs": self.host.circuit_addrs(),
                "hole_punch": self.puncher.status()}
