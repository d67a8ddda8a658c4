"""How ``poolai`` commands reach the node running in a data directory.

A running node names its local API in ``node.json`` in its data directory:
the TCP base URL (``api``) and, where it could make one, a Unix socket
(``api_socket``, mode 0600; see :mod:`poolai.node.web.server`). Commands use the
socket when this user can open it, since a byte costs the node less CPU
there than over loopback TCP, and TCP otherwise. They send the node's admin
token when this user can read it, so admin routes work too.
"""

from __future__ import annotations

import dataclasses
import http.client
import os
import socket
import urllib.parse
from pathlib import Path
from typing import Any

import httpx

from poolai.node.cli.errors import CliError

SOCKET_BASE = "http://localhost"  # a loopback Host name, as the API's Host check asks
CONNECT_TIMEOUT = 5.0  # seconds to reach the local node


@dataclasses.dataclass(frozen=True, slots=True)
class LocalNode:
    """The local API of one node: ``api`` its TCP base URL; ``socket`` its Unix socket when
    this user may open it (None: TCP only); ``headers`` carry the admin token if readable."""

    api: str
    headers: dict[str, str]
    socket: str | None = None

    @property
    def base(self) -> str:
        """The base URL for requests made with :meth:`client` or :meth:`connection`."""
        return SOCKET_BASE if self.socket else self.api

    def client(self, timeout: httpx.Timeout | float, **kw: object) -> httpx.Client:
        """An httpx client (over the socket when there is one); ``kw`` go to ``httpx.Client``."""
        transport = httpx.HTTPTransport(uds=self.socket) if self.socket else None
        return httpx.Client(timeout=timeout, transport=transport, **kw)  # type: ignore[arg-type]

    def connection(self) -> http.client.HTTPConnection:
        """An unconnected http.client connection (over the socket when there is one): the
        leanest way to read a large body."""
        if self.socket:
            return _UnixConnection(self.socket)
        where = urllib.parse.urlsplit(self.api)
        return http.client.HTTPConnection(where.hostname or "127.0.0.1", where.port,
                                          timeout=CONNECT_TIMEOUT)


class _UnixConnection(http.client.HTTPConnection):
    """http.client over a Unix stream socket."""

    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=CONNECT_TIMEOUT)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def find_node(data_dir: Path) -> LocalNode:
    """The node running in ``data_dir``; CliError when there is none."""
    from poolai.node.auth import auth_headers
    from poolai.node.runtime import read_runtime_file

    info = read_runtime_file(data_dir)
    if not info or not isinstance(info.get("api"), str):
        raise CliError(f"no running node found in {data_dir} (start one with 'poolai node run')")
    pid = info.get("pid")
    if isinstance(pid, int) and not _alive(pid):
        raise CliError(f"no running node found in {data_dir}: the last one (pid {pid}) ended "
                       f"without cleaning up (start one with 'poolai node run')")
    path = info.get("api_socket")
    usable = isinstance(path, str) and os.access(path, os.R_OK | os.W_OK)
    return LocalNode(info["api"], auth_headers(data_dir), path if usable else None)


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (a node killed with SIGKILL leaves its node.json)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def fetch_local(data_dir: Path, path: str, timeout: float) -> Any:
    """GET ``path`` from the node running in ``data_dir``; CliError when there is none.

    Sends the node's admin token when this user can read it, so admin routes work too.
    """
    node = find_node(data_dir)
    try:
        with node.client(timeout, headers=node.headers) as client:
            response = client.get(node.base + path)
        response.raise_for_status()
        return response.json()
    except httpx.HTTPError as exc:
        raise CliError(f"the node at {node.api} did not answer: {exc}") from None
