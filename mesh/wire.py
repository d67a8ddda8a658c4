"""Wire format shared by every PoolAI protocol: frames and the msgpack codec.

A frame is an unsigned LEB128 varint length followed by that many bytes of
msgpack. The length is checked against the caller's limit *before* any buffer
is allocated for the body. The body is one msgpack map whose ``"type"`` key
names the message; every other key is a field of a frozen dataclass declared
with :func:`message`. Declaring and checking messages is :mod:`poolai.mesh.schema`
(re-exported here): decoding rejects unknown, missing, mistyped and oversized
fields with :class:`~poolai.mesh.errors.SchemaError`.

This module does no I/O: :class:`FrameDecoder` turns bytes into frames, and
:mod:`poolai.mesh.rpc` drives it over trio streams.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack

from poolai.mesh.errors import FrameTooLarge, ProtocolError, TruncatedFrame, fault_of
from poolai.mesh.schema import (  # noqa: F401 - the schema API, re-exported
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_ITEMS,
    DEFAULT_MAX_STR,
    MAX_TYPE_LEN,
    Limits,
    decode_message,
    field,
    field_hints,
    from_wire,
    is_message,
    message,
    to_wire,
    type_name_of,
)

MAX_VARINT_BYTES = 10
DEFAULT_MAX_FRAME = 1 << 20  # 1 MiB: control messages; bulk data moves on raw streams

# --------------------------------------------------------------------------- framing


def encode_varint(value: int) -> bytes:
    if value < 0:
        raise ValueError("varint must be non-negative")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def frame(body: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """Prefix ``body`` with its length; refuse to build a frame the peer would reject."""
    if len(body) > max_frame:
        raise FrameTooLarge(f"frame of {len(body)} bytes exceeds the limit of {max_frame}")
    return encode_varint(len(body)) + body


class FrameDecoder:
    """Incremental frame parser: ``feed(bytes)`` then ``next_frame()`` until it returns None.

    Holds at most one partial frame (bounded by ``max_frame``) plus whatever the
    last ``feed`` delivered. ``close()`` marks end of stream and raises
    :class:`TruncatedFrame` if a partial frame is pending.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._need: int | None = None  # body length once the header is parsed

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def pending(self) -> int:
        """Bytes buffered but not yet returned as a frame."""
        return len(self._buf)

    def next_frame(self) -> bytes | None:
        if self._need is None:
            length = self._parse_header()
            if length is None:
                return None
            self._need = length
        if len(self._buf) < self._need:
            return None
        body = bytes(self._buf[: self._need])
        del self._buf[: self._need]
        self._need = None
        return body

    def close(self) -> None:
        if self._buf or self._need is not None:
            raise TruncatedFrame("stream ended inside a frame")

    def _parse_header(self) -> int | None:
        value = 0
        for i, byte in enumerate(self._buf[:MAX_VARINT_BYTES]):
            value |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                if value > self.max_frame:
                    raise FrameTooLarge(
                        f"peer announced a frame of {value} bytes, limit is {self.max_frame}"
                    )
                del self._buf[: i + 1]
                return value
        if len(self._buf) >= MAX_VARINT_BYTES:
            raise ProtocolError("frame length prefix is not a valid varint")
        return None


# --------------------------------------------------------------------------- codec


def encode(msg: Any) -> bytes:
    """A message as msgpack bytes (not yet framed)."""
    return msgpack.packb(to_wire(msg), use_bin_type=True)


def unpack(body: bytes, max_len: int = DEFAULT_MAX_FRAME) -> Any:
    """Bounded msgpack decoding: no container or string may claim more than ``max_len``."""
    try:
        return msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_bin_len=max_len,
            max_str_len=max_len,
            max_array_len=min(max_len, 1 << 16),
            max_map_len=min(max_len, 1 << 16),
            max_ext_len=0,
        )
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError, TypeError) as exc:
        raise ProtocolError(f"malformed msgpack: {exc}") from None


def decode(body: bytes, *classes: type) -> Any:
    """Decode ``body`` as one of ``classes`` (chosen by its type tag); raises ProtocolError.

    The checks are :mod:`poolai.mesh.schema`'s: a :class:`SchemaError` (an
    :class:`~poolai.mesh.errors.UnknownField` for a field beyond the schema) or, for
    bytes that are not one msgpack map, a :class:`ProtocolError`.
    """
    return decode_message(body, classes)


def decode_or_raise(body: bytes, cls: type, error: Callable[[str, str], Exception]) -> Any:
    """:func:`decode`, with a failure raised as ``error(reason, detail)``: the reason is
    :func:`~poolai.mesh.errors.fault_of`'s code (how adverts and receipts are refused)."""
    try:
        return decode(body, cls)
    except ProtocolError as exc:
        raise error(fault_of(exc), str(exc)) from None


# --------------------------------------------------------------------------- shared messages


ERROR_CODES = frozenset(
    {"bad_request", "unsupported", "busy", "not_found", "refused", "internal", "timeout"}
)


@message("error")
class ErrorReply:
    """A request could not be served; ``code`` is one of :data:`ERROR_CODES`."""

    code: str = field(max_len=32)
    message: str = field(max_len=512)
