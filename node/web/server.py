"""The node's local HTTP API, its status page and ``/metrics``.

Starlette on hypercorn's trio worker: both run natively inside the node's trio
nursery, so API handlers read live node state directly, with no thread hop and
no second event loop. The API binds 127.0.0.1 by default, and also a Unix
socket in the data directory (mode 0600) that the CLI on this machine uses:
on two cores a byte sent over a loopback TCP connection costs the node about
0.2 ms of CPU per MB (its kernel runs the receiver's TCP as well), over the
socket 0.08. Every request, on either, passes
:class:`~poolai.node.auth.AuthMiddleware` first (admin token, Host and Origin
checks).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
from pathlib import Path
from typing import TYPE_CHECKING

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from poolai.node.auth import AuthMiddleware, Policy
from poolai.node.capacity import api as capacity_api
from poolai.node.companion import api as companion_api
from poolai.node.credits import api as credits_api
from poolai.node.files import api as files_api
from poolai.node.jobs import api as jobs_api
from poolai.node.overlay import api as overlay_api
from poolai.node.reach import api as reach_api
from poolai.node.web import metrics, web_routes

if TYPE_CHECKING:
    from poolai.node.web.context import NodeView

log = logging.getLogger(__name__)


def service_routes(node: NodeView) -> list[BaseRoute]:
    """The routes of every service ``node`` runs, from each capability's ``api`` module."""
    routes: list[BaseRoute] = []
    if node.overlay is not None:
        routes += overlay_api.routes(node.overlay)
    if node.capacity is not None:
        routes += capacity_api.routes(node.capacity)
    if node.files is not None:
        routes += files_api.routes(node.files)
    if node.jobs is not None:
        routes += jobs_api.routes(node.jobs)
    if node.credits is not None:
        routes += credits_api.routes(node.credits)
    companion = getattr(node, "companion", None)  # stand-ins in tests may lack it
    if companion is not None:
        routes += companion_api.routes(companion)
    if getattr(node, "reach", None) is not None:  # a stand-in node may predate the service
        routes += reach_api.routes(node.reach)  # type: ignore[arg-type]
    return routes


def build_app(node: NodeView) -> Starlette:
    """The ASGI app of ``node``: core routes, every service's routes, the page, the admin API."""

    async def status(request: Request) -> JSONResponse:
        """Everything the node knows about itself, one section per service."""
        return JSONResponse(node.status())

    async def peers(request: Request) -> JSONResponse:
        """Connected peers."""
        return JSONResponse({"peers": node.status()["peers"]})

    async def metrics_text(request: Request) -> Response:
        """The status in Prometheus text format."""
        counts = node.log_ring.counts() if node.log_ring else None
        return Response(metrics.render(metrics.collect(node.status(), counts)),
                        media_type=metrics.CONTENT_TYPE)

    routes: list[BaseRoute] = [
        Route("/api/status", status),
        Route("/api/peers", peers),
        Route("/metrics", metrics_text),
    ]
    routes.extend(service_routes(node))
    routes.extend(web_routes(node))
    app = Starlette(routes=routes)
    # Always installed: a node without a token (never the case once run() started) refuses admin calls.
    app.add_middleware(AuthMiddleware, policy=Policy.for_bind(node.admin_token, node.config.api_host))
    return app


MAX_SOCKET_PATH = 107  # bytes of a Unix socket's path, without the NUL (Linux sun_path)


def open_unix_listener(path: Path) -> socket.socket | None:
    """A Unix stream socket bound at ``path`` with mode 0600, not yet listening; None (and a
    log line) where one cannot be made there: the API then stays on TCP alone.

    A socket file left by a node that was killed is replaced; any other file is left alone.
    Nobody can connect before ``listen()`` (which the server calls), so the mode is set
    before the first connection without touching the process-wide umask.
    """
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        log.info("no API socket: its path %s is too long (the API is on TCP only)", path)
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        remove_socket(path)
        sock.bind(os.fspath(path))
        os.chmod(path, 0o600)
    except OSError as exc:
        sock.close()
        log.warning("no API socket at %s: %s (the API is on TCP only)", path, exc.strerror or exc)
        return None
    return sock


def open_tcp_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound at ``host``:``port`` (0 = any free port), not yet listening, for
    :func:`serve_api`. The node binds it before its services start, so a port in use stops
    it at once instead of after every service has come up. Raises OSError (EADDRINUSE for
    a port another program listens on)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def remove_socket(path: Path) -> None:
    """Remove the Unix socket file at ``path``, if that is what is there (any other file
    stays). Raises OSError when a socket there cannot be removed."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()


async def serve_api(
    node: NodeView, host: str, port: int, *, unix_listener: socket.socket | None = None,
    tcp_listener: socket.socket | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; reports the bound TCP base URL (the real port when ``port`` is 0).

    With ``tcp_listener`` (from :func:`open_tcp_socket`, which this takes over) the API is
    served on that socket instead of binding ``host``:``port`` itself. With ``unix_listener``
    (from :func:`open_unix_listener`, also taken over) the same app is also served on that
    Unix socket."""
    config = HypercornConfig()
    if tcp_listener is not None:
        config.bind = [f"fd://{tcp_listener.detach()}"]  # hypercorn now owns the descriptor
    else:
        config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    if unix_listener is not None:
        config.bind.append(f"fd://{unix_listener.detach()}")  # hypercorn now owns the descriptor
    config.graceful_timeout = 0.5
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")

    class _Status:
        def started(self, binds: list[str] | None = None) -> None:
            url = (binds or config.bind)[0]
            task_status.started(url if url.startswith("http") else f"http://{url}")

    await serve(build_app(node), config, task_status=_Status())  # type: ignore[arg-type]
