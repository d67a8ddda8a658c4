"""The reachability service's local API: ``GET /api/reach`` (the verdict, the last round,
what the dial-back server spent) and the admin route ``POST /api/admin/reach/check``
(run a round now and answer with it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

if TYPE_CHECKING:
    from poolai.node.reach.service import ReachService

CHECK_TIMEOUT = 40.0  # a round: its requests run at once, each within 25 s


def routes(service: ReachService) -> list[Route]:
    async def get(request: Request) -> JSONResponse:
        return JSONResponse(service.status())

    async def check(request: Request) -> JSONResponse:
        with trio.move_on_after(CHECK_TIMEOUT):
            verdict = await service.check("asked by the owner")
            return JSONResponse({"round": verdict.as_json(), "reach": service.status()})
        return JSONResponse({"error": f"the round did not end within {CHECK_TIMEOUT:g} s"}, 504)

    return [
        Route("/api/reach", get),
        Route("/api/admin/reach/check", check, methods=["POST"]),
    ]
