"""The admin token and who may call what on the local API.

**The token** is made at the node's first start, in ``admin.token`` in the data
directory (mode 0600, like ``identity.key``), and printed in the status URL
``http://127.0.0.1:8740/#token=...`` as Jupyter does. ``poolai`` on the same
machine reads the file itself (:func:`read_token`, :func:`auth_headers`).
A token file that others can read is an error, never silently used.

**The policy** (:func:`decide`, pure) for every HTTP request:

1. Bound to a loopback address (the default), the ``Host`` header must name a
   loopback host: a page on another site that rebinds its DNS name to
   127.0.0.1 is refused (403), so it can neither read nor act.
2. A state-changing request (any method but GET/HEAD/OPTIONS) that carries an
   ``Origin`` other than the API's own, or ``Sec-Fetch-Site: cross-site``, is
   refused (403): other sites cannot drive the node through the owner's browser.
3. Admin requests (paths under :data:`ADMIN_PREFIX`) and every state-changing
   request (storing, pinning or unpinning a file, a repair pass ...) need
   ``Authorization: Bearer <token>`` (401 otherwise, and nothing happens): any
   process on the machine can reach a loopback port, not only the owner's.
   Bound to any other address (``api_remote = true``) every request needs it,
   except the page shell and its static files, which hold no node data.
4. A request over the Unix socket ``api.sock`` holds the token's authority
   without sending it: the socket is mode 0600 in a 0700 data directory, so only
   the owner (and root) can connect, the same people who can read ``admin.token``.

The token travels in a header, never in a cookie: browsers share cookies
between all ports of a host, so a cookie would reach every other local web
server (and every other node on the machine), and a header cannot be attached
by a cross-site form. The page keeps the token in ``localStorage``, which is
per origin (scheme, host *and* port).
"""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import logging
import os
import re
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from poolai.mesh.durable import write_atomic
from poolai.node.config import ConfigError

log = logging.getLogger(__name__)

TOKEN_FILE = "admin.token"
ADMIN_PREFIX = "/api/admin/"
PUBLIC_PATHS = ("/", "/index.html", "/favicon.ico")  # the page shell: no node data in it
PUBLIC_PREFIXES = ("/static/",)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{32,128}$")
MAX_TOKEN_FILE = 1024


class TokenError(ConfigError):
    """The admin token file is unreadable, malformed or readable by others."""


# ----------------------------------------------------------------------------- the token file


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def load_or_create_token(data_dir: Path) -> tuple[str, bool]:
    """This node's admin token, made on first use; returns (token, created).

    Raises TokenError when the file exists but is malformed or open to other users.
    """
    path = data_dir / TOKEN_FILE
    token = new_token()
    try:  # created whole or not at all: a crash never leaves a file that holds half a token
        write_atomic(path, (token + "\n").encode(), overwrite=False)
    except FileExistsError:
        return _load(path), False
    log.info("created the admin token in %s", path)
    return token, True


def read_token(data_dir: Path) -> str | None:
    """The token of the node in ``data_dir`` when this user may read it; None otherwise."""
    try:
        return _load(data_dir / TOKEN_FILE)
    except (TokenError, OSError):
        return None


def auth_headers(data_dir: Path) -> dict[str, str]:
    """Headers that authorise a local client (empty when the token cannot be read)."""
    token = read_token(data_dir)
    return {"Authorization": f"Bearer {token}"} if token else {}


def _load(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise  # not a TokenError: read_token() reads "no file" as "no token"
    except OSError as exc:
        raise TokenError(f"cannot read {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise TokenError(f"{path} is open to other users; run 'chmod 600 {path}' "
                             f"(or delete it to make a new token)")
        raw = os.read(fd, MAX_TOKEN_FILE + 1)
    finally:
        os.close(fd)
    token = raw.decode("ascii", errors="replace").strip()
    if len(raw) > MAX_TOKEN_FILE or not _TOKEN_RE.match(token):
        raise TokenError(f"{path} does not hold a token; delete it to make a new one")
    return token


# ----------------------------------------------------------------------------- the policy


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the API on this machine."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclasses.dataclass(frozen=True, slots=True)
class Policy:
    """What :func:`decide` enforces. ``remote``: bound beyond loopback, token for everything."""

    token: str
    remote: bool = False

    @classmethod
    def for_bind(cls, token: str, api_host: str) -> Policy:
        return cls(token=token, remote=not is_loopback(api_host))


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    """``status`` is 0 when the request may proceed, else the HTTP status to answer with."""

    status: int
    reason: str = ""

    @property
    def allowed(self) -> bool:
        return self.status == 0


ALLOW = Verdict(0)


def decide(policy: Policy, method: str, path: str, headers: Mapping[str, str], *,
           owner_socket: bool = False) -> Verdict:
    """The verdict on one request. ``headers`` maps lower-case names to values;
    ``owner_socket``: it came over the owner-only Unix socket (rule 4)."""
    host = headers.get("host", "")
    if not policy.remote and _hostname(host) not in LOOPBACK_NAMES:
        return Verdict(403, f"Host {host[:100]!r} is not a loopback name; "
                            f"open the page as http://127.0.0.1:<port>/")
    changes_state = method.upper() not in SAFE_METHODS
    if changes_state:
        origin = headers.get("origin")
        if origin is not None and origin not in (f"http://{host}", f"https://{host}"):
            return Verdict(403, "cross-origin request refused")
        if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return Verdict(403, "cross-site request refused")
    public = path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)
    needs_token = path.startswith(ADMIN_PREFIX) or changes_state or (policy.remote and not public)
    if needs_token and not owner_socket and not token_matches(headers.get("authorization", ""),
                                                              policy.token):
        return Verdict(401, "this needs the node's admin token (Authorization: Bearer <token>)")
    return ALLOW


def token_matches(authorization: str, token: str) -> bool:
    """Whether an ``Authorization`` header value carries ``token`` (constant-time compare)."""
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer" or not given:
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


def _hostname(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8740
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        return host.partition(":")[0]
    return host


# ----------------------------------------------------------------------------- ASGI middleware


class AuthMiddleware:
    """Applies :func:`decide` to every HTTP request before the app sees it."""

    def __init__(self, app: Any, policy: Policy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        # hypercorn gives no server address for a Unix socket (it does for every TCP one)
        owner_socket = scope.get("server") is None
        verdict = decide(self.policy, scope["method"], scope["path"], headers, owner_socket=owner_socket)
        if verdict.allowed:
            await self.app(scope, receive, send)
            return
        from starlette.responses import JSONResponse

        extra = {"WWW-Authenticate": 'Bearer realm="poolai"'} if verdict.status == 401 else {}
        response = JSONResponse({"error": verdict.reason}, verdict.status, headers=extra)
        await response(scope, receive, send)
