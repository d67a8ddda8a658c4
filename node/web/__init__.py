"""The node owner's status page: static files, the JSON behind them, the admin API.

The page is three static files (``static/``: HTML, one script, one style
sheet; no build step, nothing fetched from elsewhere) that poll
``/api/page`` and redraw. ``/api/page`` is :func:`view.page_view` of the live
status: the same data as ``/api/status``, summarised and paginated.
Responses carry a strict Content-Security-Policy: the page runs only its own
script, so a hostile string in a peer's advert is text, never markup.
"""

from __future__ import annotations

import time
from importlib import resources
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from poolai.node.web import view
from poolai.node.web.admin import admin_routes
from poolai.node.web.playground import playground_routes

if TYPE_CHECKING:
    from poolai.node.web.context import NodeView

STATIC = {  # name -> media type; nothing else is served
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "companion.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
MAX_OFFSET = 1_000_000


def _static(name: str) -> bytes:
    return resources.files("poolai.node.web").joinpath("static", name).read_bytes()


def _offset(request: Request, key: str) -> int:
    raw = request.query_params.get(key, "0")
    if not raw.isdigit() or int(raw) > MAX_OFFSET:
        raise ValueError(f"{key} must be an offset (0..{MAX_OFFSET})")
    return int(raw)


def capacity_entries(node: NodeView) -> list[dict[str, Any]]:
    """Every live capacity advert as JSON (this node's own included); empty without the service."""
    capacity = node.capacity
    if capacity is None:
        return []
    now = time.time()
    return [capacity.entry_json(entry, now) for entry in capacity.table.entries(now)]


def page_document(node: NodeView, peers_offset: int = 0, jobs_offset: int = 0) -> dict[str, Any]:
    """The ``/api/page`` document for ``node`` right now."""
    status = node.status()
    ring = node.log_ring
    return view.page_view(
        status,
        capacity_entries=capacity_entries(node),
        log=[e.to_json() for e in ring.tail(view.LOG_TAIL)] if ring else [],
        jobs=jobs_input(node),
        files=placed_files(node),
        peers_offset=peers_offset,
        jobs_offset=jobs_offset,
    )


def jobs_input(node: NodeView) -> dict[str, Any] | None:
    """Rows of every job this node submitted or runs, plus the jobs service's flags; None without it."""
    jobs = node.jobs
    if jobs is None:
        return None
    submitted = [jobs.job_json(sub) for sub in list(jobs.jobs.values())]
    worker = jobs.executor.snapshot()
    return {"rows": view.job_rows(submitted, worker, time.time()),
            "slots": worker.get("slots"), "running_here": worker.get("running"),
            "queued_here": worker.get("queue_length", worker.get("queued")),
            "draining": bool(getattr(jobs, "draining", False)),
            "paused": bool(getattr(jobs, "paused", False))}


def placed_files(node: NodeView) -> list[dict[str, Any]] | None:
    """The files this node looks after, with their last health check; None without storage."""
    storage = node.files
    if storage is None:
        return None
    out = []
    for entry in storage.files.entries():
        health = storage.health.get(entry.file_id)
        out.append({"file_id": entry.file_id.hex(), "size": entry.manifest.size, "pinned": entry.pinned,
                    "added": entry.added, "k": entry.manifest.k, "n": entry.manifest.n, "name": entry.name,
                    "health": health.counts() if health else None,
                    "spread": health.spread() if health else None})
    return out


def web_routes(node: NodeView) -> list[BaseRoute]:
    """Routes of the page, its JSON, the OpenAPI description and the admin actions."""

    async def page(request: Request) -> Response:
        return Response(_static("index.html"), media_type=STATIC["index.html"], headers=SECURITY_HEADERS)

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:
            return JSONResponse({"error": "not found"}, 404)
        return Response(_static(name), media_type=STATIC[name], headers=SECURITY_HEADERS)

    async def page_json(request: Request) -> JSONResponse:
        """The status page's data: status summarised, peers and finished jobs a page at a time."""
        try:
            doc = page_document(node, _offset(request, "peers"), _offset(request, "jobs"))
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, 400)
        return JSONResponse(doc, headers={"Cache-Control": "no-store"})

    async def log_tail(request: Request) -> JSONResponse:
        """The newest log records kept in memory (``?limit=``, at most 500)."""
        raw = request.query_params.get("limit", "100")
        limit = min(int(raw), 500) if raw.isdigit() else 100
        ring = node.log_ring
        return JSONResponse({"entries": [e.to_json() for e in ring.tail(limit)] if ring else [],
                             "counts": ring.counts() if ring else {}})

    async def openapi(request: Request) -> JSONResponse:
        """This API's routes as an OpenAPI 3.1 description."""
        return JSONResponse(openapi_document(request.app.routes))

    return [
        Route("/", page, include_in_schema=False),
        Route("/index.html", page, include_in_schema=False),
        Route("/static/{name}", static, include_in_schema=False),
        Route("/api/page", page_json),
        Route("/api/log", log_tail),
        Route("/api/openapi.json", openapi),
        *admin_routes(node),
        *playground_routes(node),
    ]


def openapi_document(routes: list[BaseRoute]) -> dict[str, Any]:
    """A minimal OpenAPI description: every route, its methods and its docstring's first line."""
    from poolai.node import __version__
    paths: dict[str, Any] = {}
    for route in routes:
        if not isinstance(route, Route) or not route.include_in_schema:
            continue
        doc = (route.endpoint.__doc__ or "").strip().splitlines()
        operations = paths.setdefault(route.path, {})
        for method in sorted((route.methods or {"GET"}) - {"HEAD"}):
            operation: dict[str, Any] = {"summary": doc[0] if doc else route.name,
                                         "responses": {"200": {"description": "OK"}}}
            if route.path.startswith("/api/admin/"):
                operation["security"] = [{"adminToken": []}]
                operation["responses"]["401"] = {"description": "no or wrong admin token"}
            operations[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "PoolAI node API", "version": __version__},
        "paths": paths,
        "components": {"securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer"}}},
    }
