"""Read-ahead on raw TCP connections (py-libp2p 0.8.1 reads each Noise message in two).

Every libp2p connection here is TCP with Noise on top: each Noise message is
a 2-byte length and up to 65,535 bytes of ciphertext. py-libp2p reads it as
two ``RawConnection.read`` calls (``read_exactly(2)``, then
``read_exactly(length)``), and each call goes down through a trio lock, the
trio socket wrapper and one ``recv`` system call. A bulk stream thus costs
two receives and their Python layers per 64 KiB.

:func:`install` gives ``RawConnection.read`` a per-connection buffer: a read
that finds the buffer empty asks the socket for up to :data:`READ_AHEAD`
bytes, and later reads are served from what came. The bytes and their
order are unchanged; every read of the connection goes through this one
method, so none can bypass the buffer. A read never waits while the buffer
holds bytes, so the protocol above sees a stream that delivers at least as
early as before.
"""

from __future__ import annotations

from libp2p.network.connection.raw_connection import RawConnection

READ_AHEAD = 256 << 10
"""Bytes asked of the socket when the buffer is empty (about four Noise messages)."""

_ORIGINAL = RawConnection.read


async def _read(conn: RawConnection, n: int | None = None) -> bytes:
    """Up to ``n`` bytes (all that is buffered, or one socket read, for None)."""
    buffered: bytearray | None = conn.__dict__.get("_read_ahead")
    if buffered:
        take = len(buffered) if n is None or n < 0 else min(n, len(buffered))
        out = bytes(buffered[:take])
        del buffered[:take]  # bytearray drops a prefix without moving the rest
        return out
    if n is not None and n == 0:
        return b""
    data = await _ORIGINAL(conn, READ_AHEAD if n is None or n < 0 else max(n, READ_AHEAD))
    if n is None or n < 0 or len(data) <= n:
        return data
    if buffered is None:
        buffered = conn.__dict__["_read_ahead"] = bytearray()
    buffered += memoryview(data)[n:]
    return data[:n]


def install() -> None:
    """Apply to every raw connection of this process (idempotent)."""
    RawConnection.read = _read  # type: ignore[method-assign]


def uninstall() -> None:
    """Restore py-libp2p's own read (for comparisons)."""
    RawConnection.read = _ORIGINAL  # type: ignore[method-assign]
