"""The share protocol ``/poolai/store/2.0.0``: its messages and byte-level stream I/O.

Every exchange is one libp2p stream (layout in NETWORK.md, "Storage")::

    client: frame(request)  [+ exactly `size` raw share bytes after store.put]  FIN
    server: frame(reply)    [+ exactly `length` raw bytes after store.data]     close

A frame is the mesh's varint length + msgpack map, here at most 64 KiB: share
bytes never travel inside a frame. Both sides count raw bytes against the
length announced in the frame, because a reset stream reads like a clean end
of stream on yamux. Errors are the mesh's ``error {code, message}`` with a
standard code; the message starts with a reason word (``quota:``, ``hash:``,
``corrupt:``, ``truncated:``, ``range:``, ``busy:`` ...) that
:class:`ShareRefused` exposes as ``reason``.

The server is :mod:`poolai.storage.server`, the client
:mod:`poolai.storage.transport`; both use the framing helpers here.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

from poolai.mesh import wire
from poolai.mesh.errors import FrameTooLarge, MeshError, PeerUnreachable, ProtocolError, TruncatedFrame
from poolai.mesh.rpc import ByteStream
from poolai.storage import integrity
from poolai.storage.errors import PeerError, ShareMissing
from poolai.storage.store import MAX_LEASE, MAX_VALUE_SIZE
from poolai.storage.transfers import MAX_HAS_IDS

log = logging.getLogger(__name__)

PROTOCOL = "/poolai/store/2.0.0"
CONTROL_FRAME = 64 << 10  # every framed request and reply; ids lists of 1024 fit in 36 KiB
MAX_SHARE_SIZE = MAX_VALUE_SIZE  # 16 MiB: a k=1 share of a 16 MiB segment, or a manifest
MAX_AUDIT_LENGTH = 1 << 20
READ_CHUNK = 1 << 20
WRITE_CHUNK = 1 << 20  # a default (1 MiB) share is one write; each write has a fixed cost
WRITE_STALL = 30.0  # seconds one chunk may take before the connection is given up
_ID = integrity.HASH_SIZE

Offload = Callable[..., Awaitable[Any]]


# ---------------------------------------------------------------------------- messages


@wire.message("store.put")
class PutRequest:
    """Keep a share; exactly ``size`` raw bytes follow the frame."""

    id: bytes = wire.field(max_len=_ID)
    file: bytes = wire.field(max_len=_ID)
    lease: int = wire.field(min=0, max=MAX_LEASE)
    size: int = wire.field(min=1, max=MAX_SHARE_SIZE)


@wire.message("store.stored")
class StoredReply:
    new: bool  # False: the share was already held (its lease was merged)


@wire.message("store.fetch")
class FetchRequest:
    id: bytes = wire.field(max_len=_ID)
    offset: int = wire.field(min=0, max=MAX_SHARE_SIZE)
    length: int = wire.field(min=0, max=MAX_SHARE_SIZE)  # 0 = to the end of the share


@wire.message("store.data")
class DataReply:
    """Exactly ``length`` raw bytes follow the frame."""

    size: int = wire.field(min=0, max=MAX_SHARE_SIZE)  # of the whole share
    length: int = wire.field(min=0, max=MAX_SHARE_SIZE)


@wire.message("store.has")
class HasRequest:
    ids: list[bytes] = wire.field(max_len=MAX_HAS_IDS)


@wire.message("store.held")
class HeldReply:
    held: bytes = wire.field(max_len=MAX_HAS_IDS // 8)  # bitmap, bit i (LSB first) = ids[i]


@wire.message("store.audit")
class AuditRequest:
    id: bytes = wire.field(max_len=_ID)
    offset: int = wire.field(min=0, max=MAX_SHARE_SIZE)
    length: int = wire.field(min=1, max=MAX_AUDIT_LENGTH)
    nonce: bytes = wire.field(max_len=integrity.AUDIT_NONCE_SIZE)


@wire.message("store.proof")
class ProofReply:
    digest: bytes = wire.field(max_len=_ID)


@wire.message("store.renew")
class RenewRequest:
    ids: list[bytes] = wire.field(max_len=MAX_HAS_IDS)
    lease: int = wire.field(min=0, max=MAX_LEASE)


@wire.message("store.renewed")
class RenewedReply:
    renewed: bytes = wire.field(max_len=MAX_HAS_IDS // 8)


@wire.message("store.check")
class CheckRequest:
    """The share the holder sent under ``id`` failed the reader's hash check: hash it again."""

    id: bytes = wire.field(max_len=_ID)


@wire.message("store.checked")
class CheckedReply:
    whole: bool  # False: not held, or held rotten (and now deleted)


REQUESTS = (PutRequest, FetchRequest, HasRequest, AuditRequest, RenewRequest, CheckRequest)


class ShareRefused(PeerError):
    """A holder answered a share request with an error (or the local store said no).

    ``code`` is the mesh error code, ``reason`` the word the message starts
    with (``quota``, ``hash``, ``corrupt``, ``busy`` ...).
    """

    def __init__(self, code: str, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.code = code
        self.reason = reason

    @classmethod
    def from_remote(cls, code: str, message: str) -> ShareRefused:
        reason, sep, rest = message.partition(": ")
        if not sep or not reason.isidentifier() or len(reason) > 16:
            return cls(code, code, message)
        if code == reason == "not_found":
            return ShareNotHeld(rest)
        return cls(code, reason, rest)

    def to_wire(self) -> wire.ErrorReply:
        return wire.ErrorReply(code=self.code, message=str(self)[:512])


class ShareNotHeld(ShareRefused, ShareMissing):
    """The holder has no share under the id (code and reason ``not_found``)."""

    def __init__(self, message: str) -> None:
        super().__init__("not_found", "not_found", message)


def pack_bits(flags: Sequence[bool]) -> bytes:
    """Bitmap of ``flags``: bit i is byte i//8, bit i%8 (least significant first)."""
    out = bytearray((len(flags) + 7) // 8)
    for i, flag in enumerate(flags):
        if flag:
            out[i // 8] |= 1 << (i % 8)
    return bytes(out)


def unpack_bits(bitmap: bytes, count: int) -> list[bool]:
    """Inverse of :func:`pack_bits`; raises ProtocolError on a wrong length or stray bits."""
    if len(bitmap) != (count + 7) // 8:
        raise ProtocolError(f"bitmap of {len(bitmap)} bytes for {count} ids")
    flags = [bool(bitmap[i // 8] >> (i % 8) & 1) for i in range(count)]
    if count % 8 and bitmap[-1] >> (count % 8):
        raise ProtocolError("bitmap has bits set past the last id")
    return flags


def check_ids(ids: Sequence[bytes]) -> None:
    """Raise ShareRefused(bad_request) unless every id is 32 bytes."""
    if any(len(i) != _ID for i in ids):
        raise ShareRefused("bad_request", "schema", f"ids must be {_ID} bytes")


# ---------------------------------------------------------------------------- byte-level reading


class Reader:
    """Frames and counted raw bytes from one stream, with its own buffer.

    A ``FrameDecoder`` would swallow the raw bytes that follow a header frame;
    this reader hands back exactly the frame and keeps the rest for
    :meth:`exactly`. Raises TruncatedFrame / PeerUnreachable / FrameTooLarge.
    """

    def __init__(self, stream: ByteStream) -> None:
        self._stream = stream
        self._buf = bytearray()
        self.received = 0

    async def _more(self) -> bool:
        try:
            data = await self._stream.receive_some(READ_CHUNK)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise PeerUnreachable(f"stream broke: {exc}") from None
        self.received += len(data)
        self._buf += data
        return bool(data)

    async def frame(self, max_frame: int = CONTROL_FRAME) -> bytes | None:
        """The next frame's body, or None on a clean end of stream before it."""
        while True:
            value, shift = 0, 0
            for used, byte in enumerate(self._buf[: wire.MAX_VARINT_BYTES], 1):
                value |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    if value > max_frame:
                        raise FrameTooLarge(f"frame of {value} bytes exceeds {max_frame}")
                    if len(self._buf) >= used + value:
                        body = bytes(self._buf[used : used + value])
                        del self._buf[: used + value]
                        return body
                    break
            else:
                if len(self._buf) >= wire.MAX_VARINT_BYTES:
                    raise ProtocolError("frame length prefix is not a valid varint")
            if not await self._more():
                if self._buf:
                    raise TruncatedFrame("stream ended inside a frame")
                return None

    @property
    def pending(self) -> int:
        """Bytes received and not yet handed out."""
        return len(self._buf)

    async def exactly(self, length: int) -> bytes:
        """Exactly ``length`` raw bytes; TruncatedFrame if the stream ends first.

        The bulk path: received chunks are kept as they come and joined once
        (one copy per byte, no buffer regrowth); only a partial last chunk's
        tail goes back into the buffer.
        """
        if len(self._buf) >= length:
            out = bytes(self._buf[:length])
            del self._buf[:length]
            return out
        parts: list[bytes] = [bytes(self._buf)] if self._buf else []
        have = len(self._buf)
        self._buf.clear()
        while have < length:
            try:
                data = await self._stream.receive_some(READ_CHUNK)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise PeerUnreachable(f"stream broke: {exc}") from None
            if not data:
                self._buf += b"".join(parts)  # what came stays counted as pending
                raise TruncatedFrame(f"truncated: stream ended after {have} of {length} bytes")
            self.received += len(data)
            parts.append(data)
            have += len(data)
        if have > length:
            last = parts[-1]
            cut = len(last) - (have - length)
            parts[-1] = last[:cut]
            self._buf += memoryview(last)[cut:]
        return parts[0] if len(parts) == 1 and type(parts[0]) is bytes else b"".join(parts)


async def _write(stream: ByteStream, data: bytes) -> None:
    # py-libp2p is not cancel-safe while writing: a cancellation that lands inside a write
    # can leave half a Noise frame on the socket, and the peer then drops the whole
    # connection (every stream on it). So writes are shielded and cancellation is let in
    # between chunks; a chunk that stalls for WRITE_STALL seconds gives the connection up.
    with trio.CancelScope(shield=True) as scope:
        scope.deadline = trio.current_time() + WRITE_STALL
        try:
            await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise PeerUnreachable(f"stream broke: {exc}") from None
    if scope.cancelled_caught:
        raise PeerUnreachable(f"a write stalled for {WRITE_STALL:g} s")
    await trio.lowlevel.checkpoint()


async def send_frame(stream: ByteStream, message: Any) -> None:
    """Write one framed message (cancel-safe, see ``_write``)."""
    await _write(stream, wire.frame(wire.encode(message), CONTROL_FRAME))


async def send_raw(stream: ByteStream, data: bytes, head: bytes = b"") -> None:
    """Write ``head`` then raw bytes, in chunks (cancel-safe between chunks).

    ``head`` (a frame) goes out in the same write as the first chunk, so it
    shares that chunk's yamux frame and Noise message instead of costing one
    of its own on both ends.
    """
    view = memoryview(data)  # slices share data's bytes: no copy per chunk
    start = WRITE_CHUNK if head else 0
    if head:
        await _write(stream, head + view[:start])  # one copy, so a whole share is one write
    for at in range(start, len(data), WRITE_CHUNK):
        await _write(stream, view[at : at + WRITE_CHUNK])


async def send_frame_and_body(stream: ByteStream, message: Any, data: bytes) -> None:
    """Write one framed message and the raw bytes it announces (see ``send_raw``)."""
    await send_raw(stream, data, wire.frame(wire.encode(message), CONTROL_FRAME))


async def send_eof(stream: ByteStream) -> None:
    """Half-close (the FIN is a write too, so it is shielded the same way)."""
    with trio.CancelScope(shield=True) as scope:
        scope.deadline = trio.current_time() + WRITE_STALL
        try:
            await stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise PeerUnreachable(f"stream broke: {exc}") from None
    if scope.cancelled_caught:
        raise PeerUnreachable(f"a write stalled for {WRITE_STALL:g} s")


async def abort(stream: Any) -> None:
    """Reset (or close) a stream whatever is happening around us, within a second."""
    with trio.CancelScope(shield=True), trio.move_on_after(1):
        try:
            if hasattr(stream, "reset"):
                await stream.reset()
            else:
                await stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, MeshError):
            pass


async def close(stream: Any) -> None:
    with trio.move_on_after(1):
        try:
            await stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, MeshError):
            pass
