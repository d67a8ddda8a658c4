"""The overlay's local API: ``GET /api/overlay`` (this node's ring position, links and
coordinate) and ``POST /api/overlay/lookup`` (who owns some ring positions or keys)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from poolai.mesh.peer_ids import peer_id_text
from poolai.mesh.ring import RING_MASK, key_position

if TYPE_CHECKING:
    from poolai.node.overlay.service import OverlayService

MAX_LOOKUP_KEYS = 256


def routes(service: OverlayService) -> list[Route]:
    overlay = service.overlay

    async def get(request: Request) -> JSONResponse:
        """This node's place on the overlay: position, links, coordinate, size estimate."""
        return JSONResponse(overlay.snapshot())

    async def lookup(request: Request) -> JSONResponse:
        """Body ``{"positions": ["<16 hex digits>", ...]}`` or ``{"keys": ["text", ...]}``.

        Each result: ``position``, ``owner`` (None when the lookup failed), ``timeouts`` (peers
        that did not answer in time; a slow owner among them makes the owner named the next
        live peer) and ``expired`` (the lookup ran out of this route's 10 s)."""
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
                lk = await overlay.run_lookup(position)
                results[i] = {"position": f"{position:016x}",
                              "owner": peer_id_text(lk.owner.peer_id) if lk.owner else None,
                              "timeouts": lk.timeouts, "expired": False}
            if not results[i]:
                results[i] = {"position": f"{position:016x}", "owner": None, "timeouts": None,
                              "expired": True}

        limiter = trio.CapacityLimiter(16)

        async def limited(i: int, position: int) -> None:
            async with limiter:
                await one(i, position)

        async with trio.open_nursery() as nursery:
            for i, p in enumerate(positions):
                nursery.start_soon(limited, i, p)
        return JSONResponse({"results": results})

    return [
        Route("/api/overlay", get),
        Route("/api/overlay/lookup", lookup, methods=["POST"]),
    ]
