"""The py-libp2p side of inbound admission: where :mod:`poolai.mesh.admission`'s rules are asked.

* :class:`AdmittingResourceManager` is py-libp2p's own resource manager (built as
  ``new_resource_manager()`` builds it) with one change: ``open_connection``, which
  py-libp2p 0.8.1's swarm calls for an inbound connection once with no peer id
  before the security handshake (``Swarm.upgrade_inbound_raw_conn``, "pre-upgrade
  admission", with the remote IP) and once with the peer id after it, first asks
  :class:`~poolai.mesh.admission.InboundAdmission`. A refusal there closes the
  socket before Noise starts; a refusal by peer id closes the connection before the
  swarm registers it. Both are the swarm's public hook (``new_host(resource_manager=)``),
  so nothing of py-libp2p is patched; ``tests/test_inbound_live.py`` shows that a
  refused connection never opens.
* :class:`ConnectionTracker` (a notifee) notes when each connection opened and when
  a stream last opened or closed on it, so that the connection manager can hand
  :func:`~poolai.mesh.admission.choose_shed` the facts it decides on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from libp2p.abc import INotifee
from libp2p.rcmgr import Direction
from libp2p.rcmgr.manager import ConnectionScope, ResourceManager

from poolai.mesh.admission import ConnFacts, InboundAdmission, Verdict
from poolai.mesh.short_ids import short_id

log = logging.getLogger(__name__)


class AdmittingResourceManager(ResourceManager):
    """py-libp2p's default resource manager, asking ``admission`` about inbound connections."""

    def __init__(self, admission: InboundAdmission, clock: Callable[[], float] = time.monotonic) -> None:
        # The same arguments as libp2p.rcmgr.new_resource_manager() passes.
        super().__init__(enable_memory_pooling=True)
        self.admission = admission
        self.clock = clock

    def open_connection(self, peer_id: Any | None = None, endpoint_ip: str | None = None,
                        direction: str = "inbound") -> ConnectionScope | None:
        if direction == "inbound":
            now = self.clock()
            if peer_id is None:
                verdict = self.admission.admit_address(endpoint_ip or "", now)
            else:
                verdict = self.admission.admit_peer(str(peer_id), now)
            if verdict is not Verdict.ADMIT:
                log.debug("inbound connection from %s refused: %s",
                          endpoint_ip if peer_id is None else short_id(str(peer_id)), verdict.value)
                return None
        return super().open_connection(peer_id, endpoint_ip=endpoint_ip, direction=direction)


class ConnectionTracker(INotifee):
    """Opening times and last stream activity of a host's connections, by connection.

    Entries go when their connection's ``disconnected`` arrives, so the table is as
    large as the set of open connections.
    """

    def __init__(self, admission: InboundAdmission | None,
                 clock: Callable[[], float] = time.monotonic,
                 on_inbound: Callable[[], None] | None = None) -> None:
        self.admission = admission
        self.clock = clock
        self.on_inbound = on_inbound  # called after each inbound connection opens
        self._opened: dict[Any, float] = {}
        self._active: dict[Any, float] = {}

    def facts(self, network: Any) -> list[ConnFacts]:
        """Every open connection of ``network`` (py-libp2p's swarm), as the rules see it."""
        now = self.clock()
        for conn in [c for c in self._opened if c.is_closed]:  # a disconnect not yet reported
            self._opened.pop(conn, None)
            self._active.pop(conn, None)
        out = []
        for peer_id, conns in list(network.connections.items()):
            for conn in conns:
                opened = self._opened.get(conn, now)
                out.append(ConnFacts(
                    peer_id=str(peer_id),
                    inbound=getattr(conn, "direction", None) == Direction.INBOUND,
                    opened_at=opened,
                    last_active=self._active.get(conn, opened),
                    streams=len(conn.get_streams()),
                ))
        return out

    def _touch(self, stream: Any) -> None:
        conn = getattr(stream, "swarm_conn", None)
        if conn is not None and conn in self._opened:
            self._active[conn] = self.clock()

    async def opened_stream(self, network: Any, stream: Any) -> None:
        self._touch(stream)

    async def closed_stream(self, network: Any, stream: Any) -> None:
        self._touch(stream)

    async def connected(self, network: Any, conn: Any) -> None:
        if getattr(conn, "direction", None) == Direction.INBOUND:
            if self.admission is not None:
                self.admission.note_accepted()
            if self.on_inbound is not None:
                self.on_inbound()
        if not getattr(conn, "is_closed", False):  # else it closed before this ran: forget it
            self._opened[conn] = self.clock()

    async def disconnected(self, network: Any, conn: Any) -> None:
        self._opened.pop(conn, None)
        self._active.pop(conn, None)

    async def listen(self, network: Any, multiaddr: Any) -> None:
        pass

    async def listen_close(self, network: Any, multiaddr: Any) -> None:
        pass
