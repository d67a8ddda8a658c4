"""Read-ahead on raw TCP connections (py-libp2p 0.8.1 reads each Noise message in two).

Every libp2p connection here is TCP with Noise on top: each Noise message is
a 2-byte length and up to 65,535 bytes of ciphertext. py-libp2p reads it as
two ``RawConnection.read`` calls (``read_exactly(2)``, then
``read_exactly(length)``), and each call goes down through a trio lock, the
trio socket wrapper and one ``recv`` system call. A bulk stream thus costs
two receives and their Python layers per 64 KiB.

:data:`PATCH` gives ``RawConnection.read`` a per-connection buffer: a read
that finds the buffer empty asks the socket for up to :data:`READ_AHEAD`
bytes, and later reads are served from what came. The bytes and their
order are unchanged; every read of the connection goes through this one
method, so none can bypass the buffer. A read never waits while the buffer
holds bytes, so the protocol above sees a stream that delivers at least as
early as before.

Measured on a ten-node local mesh (docs/storage.md, "What raised the get",
item 3): gets of 214-237 became 218-260 MB/s, and the getting node's CPU fell
from 3.5-3.8 to 3.0-3.5 ms per MB. tests/test_host.py counts the socket
reads: two or more per message without it, at most three for sixteen queued
messages with it.

Remove when py-libp2p buffers its raw TCP reads itself (or reads a Noise
message with one ``recv``).
"""

from __future__ import annotations

from libp2p.network.connection.raw_connection import RawConnection

from poolai.mesh.patches.guard import Patch, Shape, Swap

READ_AHEAD = 256 << 10
"""Bytes asked of the socket when the buffer is empty (about four Noise messages)."""


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
    data = await _READ.saved(conn, READ_AHEAD if n is None or n < 0 else max(n, READ_AHEAD))
    if n is None or n < 0 or len(data) <= n:
        return data
    if buffered is None:
        buffered = conn.__dict__["_read_ahead"] = bytearray()
    buffered += memoryview(data)[n:]
    return data[:n]


_READ = Swap(RawConnection, "read", _read)


def _expect(shape: Shape) -> None:
    upstream = _READ.upstream()
    shape.signature(RawConnection, "read", "(self, n=None)", func=upstream)
    shape.reads(RawConnection, "read", "stream", "read", func=upstream)  # one read of the socket
    shape.holds(RawConnection.__dictoffset__ != 0, "RawConnection has no __dict__ for its buffer")
    shape.holds("_read_ahead" not in RawConnection.__dict__, "RawConnection has its own _read_ahead")


PATCH = Patch("read_ahead", "0.8.1", _expect, (_READ,))
