"""Admin actions on the local API, all under ``/api/admin/`` (so all behind the admin token).

Each action calls into the service that owns the state: drain, pause and
resume go to the jobs service, the quota to the storage service (cancelling a
job is the jobs service's own ``/api/admin/jobs/{id}/cancel``). A node
that does not run the service answers 501 with a sentence saying so; a
request that makes no sense in the current state answers 409. The token check
itself happens before any of this (:mod:`poolai.node.auth`), so a request
without it never reaches a handler.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from poolai.node.units import parse_size

if TYPE_CHECKING:
    from poolai.node.web.context import NodeView

MAX_BODY = 4096


class Conflict(Exception):
    """The action does not apply in the current state (answered with 409)."""


class _NotAvailable(Exception):
    """The service or the action is not part of this node (answered with 501)."""


async def _body(request: Request) -> dict[str, Any]:
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise ValueError(f"body larger than {MAX_BODY} bytes")
    if not raw.strip():
        return {}
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    return value


def admin_routes(node: NodeView) -> list[Route]:
    """The ``/api/admin/*`` routes of ``node``."""

    def method(service_name: str, action: str) -> Callable[..., Any]:
        service = {"jobs": node.jobs, "storage": node.files}[service_name]
        if service is None:
            raise _NotAvailable(f"this node runs no {service_name} service")
        fn = getattr(service, action, None)
        if not callable(fn):
            raise _NotAvailable(f"the {service_name} service has no {action} action yet")
        return fn

    def handler(run: Callable[[Request, dict[str, Any]], Awaitable[dict[str, Any]]]
                ) -> Callable[[Request], Awaitable[JSONResponse]]:
        async def endpoint(request: Request) -> JSONResponse:
            try:
                body = await _body(request)
                result = await run(request, body)
            except _NotAvailable as exc:
                return JSONResponse({"error": str(exc)}, 501)
            except Conflict as exc:
                return JSONResponse({"error": str(exc)}, 409)
            except LookupError as exc:
                return JSONResponse({"error": f"not found: {exc.args[0] if exc.args else ''}"}, 404)
            except ValueError as exc:  # json.JSONDecodeError included
                return JSONResponse({"error": str(exc)}, 400)
            return JSONResponse({"ok": True, **result})

        endpoint.__doc__ = run.__doc__
        return endpoint

    async def call(fn: Callable[..., Any], *args: Any) -> Any:
        result = fn(*args)
        return await result if inspect.isawaitable(result) else result

    async def check(request: Request, body: dict[str, Any]) -> dict[str, Any]:
        """Whether the token is right (the page uses it to unlock its admin controls)."""
        return {}

    async def drain(request: Request, body: dict[str, Any]) -> dict[str, Any]:
        """Drain (``{"drain": true}``, the default) or undrain: finish running jobs, accept none."""
        on = body.get("drain", True)
        if not isinstance(on, bool):
            raise ValueError("drain must be true or false")
        await call(method("jobs", "set_draining"), on)
        return {"draining": on}

    async def pause(request: Request, body: dict[str, Any]) -> dict[str, Any]:
        """Pause jobs: queued jobs wait, running ones go on."""
        await call(method("jobs", "set_paused"), True)
        return {"paused": True}

    async def resume(request: Request, body: dict[str, Any]) -> dict[str, Any]:
        """Resume paused jobs."""
        await call(method("jobs", "set_paused"), False)
        return {"paused": False}

    async def quota(request: Request, body: dict[str, Any]) -> dict[str, Any]:
        """Set the share storage quota: ``{"quota": "50GiB"}`` or a number of bytes."""
        if "quota" not in body:
            raise ValueError('expected {"quota": "<size>"}')
        size = parse_size(body["quota"])
        await call(method("storage", "set_quota"), size)
        return {"quota": size}

    return [
        Route("/api/admin/check", handler(check), methods=["POST"]),
        Route("/api/admin/drain", handler(drain), methods=["POST"]),
        Route("/api/admin/jobs/pause", handler(pause), methods=["POST"]),
        Route("/api/admin/jobs/resume", handler(resume), methods=["POST"]),
        Route("/api/admin/storage/quota", handler(quota), methods=["POST"]),
    ]
