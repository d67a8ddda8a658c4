"""The mesh layer's error tree.

Two families, kept apart on purpose: ``ProtocolError`` means a *peer* sent us
something wrong (contain it: drop the stream, penalise the peer), while
``MeshError`` subclasses such as ``RequestTimeout`` or ``PeerUnreachable`` are
ordinary network weather that callers retry or route around. Bugs in our own
code raise ordinary Python exceptions and are never caught here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar


class MeshError(Exception):
    """Base class of every error the mesh layer raises on purpose."""


class ProtocolError(MeshError):
    """A peer broke the wire protocol: bad framing, bad encoding or bad schema."""


class FrameTooLarge(ProtocolError):
    """A frame's declared length exceeds the limit; nothing was allocated for it."""


class TruncatedFrame(ProtocolError):
    """The stream ended in the middle of a frame."""


class SchemaError(ProtocolError):
    """A decoded message has a wrong type, a missing or unknown field, or a value out of range."""


class UnknownField(SchemaError):
    """A decoded message has a field (at any level) that its schema does not declare."""


def fault_of(exc: ProtocolError) -> str:
    """The reason code a refused message is counted under: ``unknown_field``, ``schema``
    (decoded, but not to the schema) or ``malformed`` (not a message at all)."""
    if isinstance(exc, UnknownField):
        return "unknown_field"
    return "schema" if isinstance(exc, SchemaError) else "malformed"


class Rejected(ProtocolError):
    """A peer's record (an advert, a receipt, a signature) failed a check: ``reason`` is a
    code from the subclass's ``reasons`` (what counters and tests key on), ``detail`` the
    particulars. A subclass names its codes: ``class AdvertRejected(Rejected, reasons=...)``."""

    reasons: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, *, reasons: Iterable[str] = (), **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.reasons = frozenset(reasons)

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in self.reasons, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class RemoteError(MeshError):
    """The peer answered with an error reply (it understood us and said no)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class RequestTimeout(MeshError):
    """A request to a peer did not complete within its deadline."""


class PortInUse(MeshError):
    """A listen address's TCP port is taken by another process (another node, most often)."""

    def __init__(self, addr: str, port: int) -> None:
        super().__init__(f"port {port} of {addr} is in use by another program")
        self.addr = addr
        self.port = port


class PeerUnreachable(MeshError):
    """A peer could not be dialled, or the stream to it broke."""
