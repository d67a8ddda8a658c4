"""Connections and kept streams to holders, for :mod:`poolai.storage.transport`.

:class:`HolderLinks` dials a holder this node is not connected to (at the
addresses its ``addresses`` callable gives; one dial per peer at a time,
however many exchanges wait) and keeps the streams of exchanges that ended
cleanly, up to ``max_idle_per_peer`` per holder for ``idle_keep`` seconds,
for the next exchange with that holder to reuse.

A failed dial stands for ``redial_after`` seconds: exchanges with that
holder fail at once meanwhile instead of dialling again. py-libp2p takes
about 0.7 s to fail a dial to a closed port (three tries), and a read asks
a holder for a share of every segment, so without this a read after a
holder left waited that long again and again, one exchange after another.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from poolai.mesh.errors import MeshError, PeerUnreachable
from poolai.mesh.host import Libp2pStream, MeshHost
from poolai.storage.protocol import close

MAX_PEERS = 10_000  # entries per table before it is pruned


class HolderLinks:
    """Dialling and kept streams, by holder name (base58 peer id); see the module doc."""

    def __init__(
        self, host: MeshHost, *, addresses: Callable[[str], list[str]] | None = None,
        dial_failed: Callable[[str], None] | None = None, redial_after: float = 5.0,
        max_idle_per_peer: int = 4, idle_keep: float = 10.0,
    ) -> None:
        self._host = host
        self._addresses = addresses
        self._dial_failed = dial_failed
        self._redial_after = redial_after
        self._max_idle = max_idle_per_peer
        self._idle_keep = idle_keep
        self._dialling: dict[str, trio.Lock] = {}
        self._dial_errors: dict[str, tuple[float, str]] = {}  # name -> (when, why) of a failed dial
        self._idle: dict[str, list[tuple[Libp2pStream, float]]] = {}
        self.reused = 0  # streams taken for another exchange

    async def dial(self, name: str) -> None:
        """Connect to ``name`` unless connected (or no ``addresses`` was given); raises
        MeshError (PeerUnreachable for a dial that failed lately)."""
        if self._addresses is None or self._host.is_connected(name):
            return
        self._recent_error(name)
        if len(self._dialling) > MAX_PEERS and name not in self._dialling:
            self._dialling = {k: v for k, v in self._dialling.items() if v.locked()}
        async with self._dialling.setdefault(name, trio.Lock()):
            if self._host.is_connected(name):
                return
            self._recent_error(name)  # the exchange that held the lock just failed
            addrs = self._addresses(name)
            if addrs:  # without any, open_stream tries what libp2p knows
                try:
                    await self._host.connect(name, addrs)
                except MeshError as exc:
                    if len(self._dial_errors) > MAX_PEERS:
                        self._dial_errors.clear()
                    self._dial_errors[name] = (trio.current_time(), str(exc))
                    if self._dial_failed is not None:
                        self._dial_failed(name)
                    raise
            self._dial_errors.pop(name, None)

    def _recent_error(self, name: str) -> None:
        failed = self._dial_errors.get(name)
        if failed is None:
            return
        age = trio.current_time() - failed[0]
        if age >= self._redial_after:
            del self._dial_errors[name]
            return
        raise PeerUnreachable(f"{failed[1]} ({age:.1f} s ago; not dialled again yet)")

    async def take_idle(self, name: str) -> Libp2pStream | None:
        """A stream kept open to ``name`` that is fresh enough to reuse, if any."""
        kept = self._idle.get(name)
        now = trio.current_time()
        while kept:
            stream, since = kept.pop()
            if now - since < self._idle_keep:
                self.reused += 1
                return stream
            await close(stream)  # older ones are likely closed by the holder by now
        return None

    async def keep_idle(self, name: str, stream: Libp2pStream) -> None:
        """Keep ``stream`` for the next exchange with ``name`` (or close it: enough are kept)."""
        kept = self._idle.setdefault(name, [])
        if len(kept) >= self._max_idle or (len(self._idle) > MAX_PEERS and len(kept) == 1):
            await close(stream)
            return
        kept.append((stream, trio.current_time()))
