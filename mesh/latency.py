"""Latency emulation for live tests: per-peer one-way delays on what a node receives.

Inert unless ``POOLAI_EMULATED_LATENCY`` names a table (see :class:`EmulatedLatency`
and NETWORK.md, "Emulated latency"). Data a node receives from a listed peer is
held back by that peer's one-way delay, on PoolAI's own streams (applied by
:class:`poolai.mesh.host.Libp2pStream`) and on ping replies
(:func:`delayed_ping_handler`), so every round trip the node measures (overlay
probes, pings, job offers) includes it. Nothing that decides routes knows about it.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import trio
from libp2p.host.ping import PingService

from poolai.mesh.peer_ids import peer_id_bytes, peer_id_text

log = logging.getLogger(__name__)

LATENCY_ENV = "POOLAI_EMULATED_LATENCY"
MAX_LATENCY_FILE = 1 << 20
MAX_ONE_WAY_MS = 10_000.0


@dataclass(frozen=True, slots=True)
class EmulatedLatency:
    """One-way delays, in seconds, added to what this node receives from each listed peer.

    For tests only: there is no netem on the machines PoolAI is tested on, so a live
    test gives each node a table and every node then *measures* the emulated distances
    the way it measures real ones. A stream's first read after it opens, and its first
    read after each write, returns ``delay`` later (the data's arrival, one way);
    reads within one turn are not delayed, so bulk transfers keep their throughput.
    A ping reply is held back by the replying node's delay for the pinger, and the
    pinger adds its own for the replier. Round trip A–B = A's delay for B + B's for A.
    """

    one_way_s: Mapping[str, float]

    def delay(self, peer_id: str) -> float:
        return self.one_way_s.get(peer_id, 0.0)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> EmulatedLatency:
        """Read ``{"version": 1, "one_way_ms": {peer id: ms}}``; ValueError naming the fault."""
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_LATENCY_FILE + 1)
            if len(data) > MAX_LATENCY_FILE:
                raise ValueError(f"over {MAX_LATENCY_FILE} bytes")
            doc = json.loads(data)
        except (OSError, ValueError) as exc:
            raise ValueError(f"latency table {path}: {exc}") from None
        if (not isinstance(doc, dict) or set(doc) != {"version", "one_way_ms"}
                or type(doc["version"]) is not int or doc["version"] != 1):
            raise ValueError(f"latency table {path}: expected {{'version': 1, 'one_way_ms': {{...}}}}")
        table = doc["one_way_ms"]
        if not isinstance(table, dict):
            raise ValueError(f"latency table {path}: one_way_ms must map peer ids to milliseconds")
        out = {}
        for peer, ms in table.items():
            if (not isinstance(ms, int | float) or isinstance(ms, bool) or not math.isfinite(ms)
                    or not 0 <= ms <= MAX_ONE_WAY_MS):
                raise ValueError(f"latency table {path}: {peer}: {ms!r} is not in [0, {MAX_ONE_WAY_MS:g}] ms")
            peer_id_text(peer_id_bytes(peer))  # ValueError for a malformed peer id
            out[peer] = ms / 1000.0
        return cls(out)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> EmulatedLatency | None:
        """The table named by ``POOLAI_EMULATED_LATENCY``; None when it is unset or empty."""
        path = environ.get(LATENCY_ENV, "")
        return cls.load(path) if path else None


class _DelayedPingStream:
    """A raw libp2p stream for py-libp2p's ping handler: each ping is read ``delay`` late."""

    def __init__(self, raw: Any, delay: float) -> None:
        self._raw = raw
        self._delay = delay
        self._turn = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)

    async def read(self, n: int | None = None) -> bytes:
        data = await self._raw.read(n)
        if self._turn:
            self._turn = False
            await trio.sleep(self._delay)
        return data

    async def write(self, data: bytes) -> None:
        await self._raw.write(data)
        self._turn = True


def delayed_ping_handler(ping: PingService, latency: EmulatedLatency) -> Callable[[Any], Awaitable[None]]:
    """A handler for ``/ipfs/ping/1.0.0`` that echoes each ping its peer's delay late."""

    async def handle(raw: Any) -> None:
        try:
            delay = latency.delay(str(raw.muxed_conn.peer_id))
            stream: Any = _DelayedPingStream(raw, delay) if delay else raw  # duck-typed INetStream
            await ping.handle_ping(stream)
        except Exception:
            log.debug("ping handler failed", exc_info=True)

    return handle
