"""The capacity service's local API: ``GET /api/capacity`` (every live advert),
``GET /api/capacity/capable`` (peers able to run a job, best first) and the admin route
``POST /api/admin/capacity/load`` (set this node's advertised load)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from poolai.mesh import adverts
from poolai.node.capacity.rules import Requirements

if TYPE_CHECKING:
    from poolai.node.capacity.service import CapacityService


def routes(service: CapacityService) -> list[Route]:
    async def get_table(request: Request) -> JSONResponse:
        now = time.time()
        return JSONResponse({"self": service.peer_id, **service.status(),
                             "entries": [service.entry_json(e, now) for e in service.table.entries(now)]})

    async def get_capable(request: Request) -> JSONResponse:
        try:
            req = Requirements.from_query(dict(request.query_params))
            limit = int(request.query_params.get("limit", "20"))
            if not 1 <= limit <= 1000:
                raise ValueError("limit must be in 1..1000")
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, 400)
        found = service.capable(req, limit)
        return JSONResponse({"requirements": req.to_json(), "candidates": [c.to_json() for c in found]})

    async def post_load(request: Request) -> JSONResponse:
        """Admin: ``{"busy_slots": n, "queue_length": n, "models": [...]}`` (each optional)."""
        try:
            body = await request.json()
            if not isinstance(body, dict) or set(body) - {"busy_slots", "queue_length", "models"}:
                raise ValueError("expected busy_slots, queue_length and/or models")
            busy, queue, models = body.get("busy_slots"), body.get("queue_length"), body.get("models")
            for value in (busy, queue):
                if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                          or value < 0):
                    raise ValueError("busy_slots and queue_length are non-negative integers")
            if models is not None and not (isinstance(models, list) and len(models) <= adverts.MAX_MODELS
                                           and all(isinstance(m, str) for m in models)):
                raise ValueError(f"models is a list of at most {adverts.MAX_MODELS} names")
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, 400)
        service.set_load(busy_slots=busy, queue_length=queue,
                      models=tuple(models) if models is not None else None)
        return JSONResponse({"busy_slots": service.state.busy_slots,
                             "queue_length": service.state.queue_length,
                             "free_slots": service.state.job_slots - service.state.busy_slots})

    return [
        Route("/api/capacity", get_table),
        Route("/api/capacity/capable", get_capable),
        Route("/api/admin/capacity/load", post_load, methods=["POST"]),
    ]
