"""Give an inbound-connection slot back when its connection closes (py-libp2p 0.8.1 never does).

py-libp2p's swarm admits an inbound connection only if it can take a slot of
``Swarm._inbound_limiter`` (``max_connections - min_connections`` slots, 250
with the defaults PoolAI keeps), and ``_handle_inbound_connection`` returns
the slot when its handler ends. But after a successful upgrade the handler
(``_do_handle_inbound_connection``) waits for ``self.manager.wait_finished()``,
the end of the whole swarm, not of the connection. So every inbound
connection a node ever accepted holds its slot (and a parked task) until the
node stops: measured here, a host's borrowed slots rose by one per inbound
connection, closed or not, and its 251st dialler was refused ("failed to
negotiate the secure protocol") although it had no connection open. A
long-running node would stop accepting peers after its 250th.

:data:`PATCH` wraps ``Swarm._handle_inbound_connection`` so that once the
connection it upgraded (``upgrade_inbound_raw_conn``, also wrapped, reports
it through a context variable of the handler's task) has closed, the
handler is cancelled out of that wait: the upstream ``finally`` gives the
slot back and the task ends. Nothing changes while a connection is open, and
a connection that was never upgraded (refused, failed) ends its handler
upstream's way already.

Remove when py-libp2p's inbound handler waits for its connection to close
instead of the swarm to finish.
"""

from __future__ import annotations

import contextvars
from typing import Any

import trio
from libp2p.network.swarm import Swarm
from libp2p.stream_muxer.yamux.yamux import Yamux
from multiaddr import Multiaddr

from poolai.mesh.patches.guard import Patch, Shape, Swap


class _Inbound:
    """The connection one inbound handler upgraded, once it has one."""

    __slots__ = ("conn", "upgraded")

    def __init__(self) -> None:
        self.upgraded = trio.Event()
        self.conn: Any = None


_CURRENT: contextvars.ContextVar[_Inbound | None] = contextvars.ContextVar(
    "poolai_inbound_connection", default=None)


async def _handle_inbound_connection(swarm: Swarm, read_write_closer: Any, maddr: Multiaddr) -> None:
    """Upstream's handler, ended (its slot given back) once its connection has closed."""
    inbound = _Inbound()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_end_when_closed, inbound, nursery.cancel_scope)
        token = _CURRENT.set(inbound)
        try:
            await _HANDLE.saved(swarm, read_write_closer, maddr)
        finally:
            _CURRENT.reset(token)
        nursery.cancel_scope.cancel()  # upstream's handler ended by itself


async def _end_when_closed(inbound: _Inbound, handler: trio.CancelScope) -> None:
    await inbound.upgraded.wait()
    closed = getattr(inbound.conn, "event_closed", None)
    if closed is None:  # not a muxer we checked: leave the slot held, as upstream does
        return
    await closed.wait()
    handler.cancel()


async def _upgrade_inbound_raw_conn(swarm: Swarm, raw_conn: Any, maddr: Multiaddr) -> Any:
    """Upstream's upgrade; the connection is also reported to the inbound handler calling it."""
    conn = await _UPGRADE.saved(swarm, raw_conn, maddr)
    inbound = _CURRENT.get()
    if inbound is not None and inbound.conn is None:
        inbound.conn = conn
        inbound.upgraded.set()
    return conn


_HANDLE = Swap(Swarm, "_handle_inbound_connection", _handle_inbound_connection)
_UPGRADE = Swap(Swarm, "upgrade_inbound_raw_conn", _upgrade_inbound_raw_conn)


def _expect(shape: Shape) -> None:
    handle, upgrade = _HANDLE.upstream(), _UPGRADE.upstream()
    shape.signature(Swarm, "_handle_inbound_connection", "(self, read_write_closer, maddr)", func=handle)
    shape.reads(Swarm, "_handle_inbound_connection", "_inbound_limiter", "acquire_nowait", "release",
                "_do_handle_inbound_connection", func=handle)
    shape.reads(Swarm, "listen", "_handle_inbound_connection")  # every listener's handler
    shape.signature(Swarm, "upgrade_inbound_raw_conn", "(self, raw_conn, maddr)", func=upgrade)
    # The bug itself: the handler holds its slot until the swarm has finished.
    shape.reads(Swarm, "_do_handle_inbound_connection", "upgrade_inbound_raw_conn", "wait_finished")
    shape.reads(Yamux, "__init__", "event_closed")
    shape.reads(Yamux, "close", "event_closed")
    shape.reads(Yamux, "_cleanup_on_error", "event_closed")  # the peer hung up or broke the frame


PATCH = Patch("inbound_slots", "0.8.1", _expect, (_HANDLE, _UPGRADE))
