"""The node's local HTTP API (and, later, its status page).

Starlette on hypercorn's trio worker: both run natively inside the node's trio
nursery, so API handlers read live node state directly, with no thread hop and
no second event loop. The API binds 127.0.0.1 by default.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

if TYPE_CHECKING:
    from poolai.node.node import Node

log = logging.getLogger(__name__)


def build_app(node: Node) -> Starlette:
    async def status(request: Request) -> JSONResponse:
        return JSONResponse(node.status())

    async def peers(request: Request) -> JSONResponse:
        return JSONResponse({"peers": node.status()["peers"]})

    routes = [
        Route("/api/status", status),
        Route("/api/peers", peers),
    ]
    for service in node.services:
        routes.extend(service.routes())
    return Starlette(routes=routes)


async def serve_api(
    node: Node, host: str, port: int, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve until cancelled; reports the bound base URL (the real port when ``port`` is 0)."""
    config = HypercornConfig()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.graceful_timeout = 0.5
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")

    class _Status:
        def started(self, binds: list[str] | None = None) -> None:
            url = (binds or config.bind)[0]
            task_status.started(url if url.startswith("http") else f"http://{url}")

    await serve(build_app(node), config, task_status=_Status())  # type: ignore[arg-type]
