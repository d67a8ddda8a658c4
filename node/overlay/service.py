"""The overlay as a node service: runs :class:`~poolai.mesh.overlay_net.OverlayNode` and
exposes its state and lookups on the local API."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from poolai.mesh.host import peer_id_text
from poolai.mesh.links import DEFAULT_CONFIG
from poolai.mesh.overlay_net import DriverConfig, OverlayNode, scaled
from poolai.mesh.ring import RING_MASK, key_position

if TYPE_CHECKING:
    from poolai.node.node import Node

MAX_LOOKUP_KEYS = 256


class OverlayService:
    name = "overlay"

    def __init__(self, node: Node) -> None:
        assert node.host is not None and node.book is not None
        cfg = node.config
        self.overlay = OverlayNode(
            node.host,
            node.book,
            config=scaled(DEFAULT_CONFIG, cfg.overlay_scale),
            driver=DriverConfig(tick=min(1.0, max(0.1, cfg.overlay_scale))),
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.overlay.run(task_status=task_status)

    def status(self) -> dict[str, Any]:
        return self.overlay.snapshot()

    def routes(self) -> list[Route]:
        return [
            Route("/api/overlay", self._get),
            Route("/api/overlay/lookup", self._lookup, methods=["POST"]),
        ]

    async def _get(self, request: Request) -> JSONResponse:
        return JSONResponse(self.overlay.snapshot())

    async def _lookup(self, request: Request) -> JSONResponse:
        """Body ``{"positions": ["<16 hex digits>", ...]}`` or ``{"keys": ["text", ...]}``."""
        try:
            body = await request.json()
            positions = [int(p, 16) for p in body.get("positions", [])]
            positions += [key_position(k.encode()) for k in body.get("keys", [])]
        except (ValueError, TypeError, AttributeError):
            return JSONResponse({"error": "expected positions (hex) or keys (strings)"}, 400)
        if len(positions) > MAX_LOOKUP_KEYS or any(not 0 <= p <= RING_MASK for p in positions):
            return JSONResponse({"error": f"at most {MAX_LOOKUP_KEYS} positions in range"}, 400)
        results: list[dict[str, Any]] = [{} for _ in positions]

        async def one(i: int, position: int) -> None:
            with trio.move_on_after(10):
                owner = await self.overlay.lookup(position)
                results[i] = {"position": f"{position:016x}",
                              "owner": peer_id_text(owner.peer_id) if owner else None}
            if not results[i]:
                results[i] = {"position": f"{position:016x}", "owner": None}

        limiter = trio.CapacityLimiter(16)

        async def limited(i: int, position: int) -> None:
            async with limiter:
                await one(i, position)

        async with trio.open_nursery() as nursery:
            for i, p in enumerate(positions):
                nursery.start_soon(limited, i, p)
        return JSONResponse({"results": results})
