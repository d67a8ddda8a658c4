"""One-request, one-reply exchanges over any trio half-closeable stream.

The client writes one frame, half-closes, and reads one frame back; the whole
exchange runs under the caller's deadline. The server side reads exactly one
frame under its own deadline, decodes it against the protocol's request
classes, calls the handler, and writes the reply or an :class:`ErrorReply`.
Anything a peer does wrong ends that stream and nothing else.

Streams here are trio ``HalfCloseableStream``-shaped objects, so the same code
runs over libp2p (see :mod:`poolai.mesh.host`) and over
``trio.testing.memory_stream_pair`` in tests.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio

from poolai.mesh import wire
from poolai.mesh.errors import (
    MeshError,
    PeerUnreachable,
    ProtocolError,
    RemoteError,
    RequestTimeout,
)
from poolai.mesh.short_ids import short_id

log = logging.getLogger(__name__)

READ_CHUNK = 1 << 16
# An error reply must fit however small a protocol's own frame limit is.
ERROR_FRAME = 1024


class ByteStream(Protocol):
    async def send_all(self, data: bytes) -> None: ...
    async def receive_some(self, max_bytes: int | None = None) -> bytes: ...
    async def send_eof(self) -> None: ...
    async def aclose(self) -> None: ...


class RemoteFault(Exception):
    """Raised by a handler to answer with a specific error code instead of ``internal``."""

    def __init__(self, code: str, message: str) -> None:
        if code not in wire.ERROR_CODES:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message


async def read_frame(stream: ByteStream, decoder: wire.FrameDecoder) -> bytes | None:
    """The next frame from ``stream``, or None on a clean end of stream between frames."""
    while True:
        body = decoder.next_frame()
        if body is not None:
            return body
        try:
            data = await stream.receive_some(READ_CHUNK)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise PeerUnreachable(f"stream broke: {exc}") from None
        if not data:
            decoder.close()  # raises TruncatedFrame if we stopped mid-frame
            return None
        decoder.feed(data)


async def write_frame(stream: ByteStream, body: bytes, max_frame: int) -> None:
    try:
        await stream.send_all(wire.frame(body, max_frame))
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise PeerUnreachable(f"stream broke: {exc}") from None


async def exchange(
    stream: ByteStream,
    request: Any,
    reply_types: tuple[type, ...],
    *,
    max_frame: int = wire.DEFAULT_MAX_FRAME,
) -> Any:
    """Send ``request`` on an open stream and return the decoded reply.

    Raises RemoteError for an error reply, ProtocolError for a malformed one and
    PeerUnreachable when the stream breaks. The caller owns the deadline.
    """
    await write_frame(stream, wire.encode(request), max_frame)
    try:
        await stream.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise PeerUnreachable(f"stream broke: {exc}") from None
    body = await read_frame(stream, wire.FrameDecoder(max(max_frame, ERROR_FRAME)))
    if body is None:
        raise ProtocolError("peer closed the stream without replying")
    reply = wire.decode(body, wire.ErrorReply, *reply_types)
    if isinstance(reply, wire.ErrorReply):
        raise RemoteError(reply.code, reply.message)
    return reply


Handler = Callable[[Any, Any], Awaitable[Any]]


@dataclasses.dataclass(frozen=True, slots=True)
class ServiceConfig:
    """How one request/response protocol is served."""

    request_types: tuple[type, ...]
    max_frame: int = wire.DEFAULT_MAX_FRAME
    read_timeout: float = 10.0
    handler_timeout: float = 30.0
    max_concurrent: int = 64


@dataclasses.dataclass
class ServiceStats:
    served: int = 0
    rejected_busy: int = 0
    bad_requests: int = 0
    handler_errors: int = 0
    timeouts: int = 0


class Service:
    """Serves one protocol: bounded concurrency, a deadline per phase, errors contained."""

    def __init__(self, name: str, handler: Handler, config: ServiceConfig) -> None:
        self.name = name
        self.handler = handler
        self.config = config
        self.stats = ServiceStats()
        self._limiter = trio.CapacityLimiter(config.max_concurrent)

    async def handle(self, stream: ByteStream, peer: Any) -> None:
        """Serve one inbound stream. Never raises except for cancellation."""
        try:
            self._limiter.acquire_on_behalf_of_nowait(stream)
        except trio.WouldBlock:
            self.stats.rejected_busy += 1
            await self._reply_error(stream, "busy", "too many concurrent requests")
            return
        try:
            await self._serve_one(stream, peer)
        except MeshError as exc:
            log.info("%s: dropped stream from %s: %s", self.name, _short(peer), exc)
        except Exception:
            # A bug in a handler must not take the host down (a libp2p handler that raises
            # ends the whole connection); log it loudly and drop only this stream.
            self.stats.handler_errors += 1
            log.exception("%s: handler failed for %s", self.name, _short(peer))
            await self._reply_error(stream, "internal", "internal error")
        finally:
            self._limiter.release_on_behalf_of(stream)
            with trio.move_on_after(1):
                await _close_quietly(stream)

    async def _serve_one(self, stream: ByteStream, peer: Any) -> None:
        cfg = self.config
        decoder = wire.FrameDecoder(cfg.max_frame)
        try:
            with trio.fail_after(cfg.read_timeout):
                body = await read_frame(stream, decoder)
        except trio.TooSlowError:
            self.stats.timeouts += 1
            raise RequestTimeout("request not received in time") from None
        except ProtocolError as exc:
            self.stats.bad_requests += 1
            await self._reply_error(stream, "bad_request", str(exc))
            raise
        if body is None:
            raise ProtocolError("stream closed before a request arrived")
        try:
            request = wire.decode(body, *cfg.request_types)
        except ProtocolError as exc:
            self.stats.bad_requests += 1
            await self._reply_error(stream, "bad_request", str(exc))
            raise
        try:
            with trio.fail_after(cfg.handler_timeout):
                reply = await self.handler(peer, request)
        except RemoteFault as fault:
            await self._reply_error(stream, fault.code, fault.message)
            return
        except trio.TooSlowError:
            self.stats.timeouts += 1
            await self._reply_error(stream, "timeout", "handler ran out of time")
            return
        with trio.fail_after(cfg.read_timeout):
            await write_frame(stream, wire.encode(reply), cfg.max_frame)
        self.stats.served += 1

    async def _reply_error(self, stream: ByteStream, code: str, message: str) -> None:
        body = wire.encode(wire.ErrorReply(code=code, message=message[:512]))
        with trio.move_on_after(2):
            try:
                await write_frame(stream, body, max(self.config.max_frame, ERROR_FRAME))
            except MeshError:
                pass


async def _close_quietly(stream: ByteStream) -> None:
    try:
        await stream.aclose()
    except (trio.BrokenResourceError, trio.ClosedResourceError, MeshError):
        pass


def _short(peer: Any) -> str:
    return short_id(str(peer))


def timeout_error(what: str, seconds: float) -> RequestTimeout:
    return RequestTimeout(f"{what} did not complete within {seconds:g} s")
