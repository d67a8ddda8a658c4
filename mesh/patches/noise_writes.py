"""One socket write per Noise write (py-libp2p 0.8.1 sends each Noise message on its own).

A Noise transport message carries at most 65,519 bytes of plaintext, so a
larger write is sealed as several messages. py-libp2p writes each of them
with its own ``RawConnection.write``: a trio lock, the socket wrapper and a
``send`` system call per 64 KiB. :data:`PATCH` seals every message of a
write first and hands them to the connection as one buffer. The bytes on
the wire are unchanged (the same messages, in the same order), so peers
see no difference; a writer just crosses into the kernel once per write.

With yamux frames of four Noise messages (``yamux_tuning.FRAME_SIZE``) instead
of one, a 256 MiB check read on ten local nodes ran at 374 instead of 328
MB/s, the getting node's CPU per MB fell from 2.24 to 1.96 ms (medians of
six reads each, alternated on one mesh), and puts rose from 55-62 to 62-72
MB/s (docs/storage.md).

Remove when py-libp2p's ``BaseNoiseMsgReadWriter.write_msg`` writes a
chunked message with one ``write`` (go-libp2p's noise ``Write`` does).
"""

from __future__ import annotations

from libp2p.io.msgio import BaseMsgReadWriter
from libp2p.security.noise import io as noise_io
from libp2p.security.noise.io import BaseNoiseMsgReadWriter, NoisePacketReadWriter

from poolai.mesh.patches.guard import Patch, Shape, Swap

_MAX_PLAINTEXT = noise_io.MAX_PLAINTEXT_LENGTH


async def _write_msg(self: BaseNoiseMsgReadWriter, msg: bytes, prefix_encoded: bool = False) -> None:
    """``BaseNoiseMsgReadWriter.write_msg`` with every message of ``msg`` in one write."""
    if len(msg) <= _MAX_PLAINTEXT:
        await _WRITE.saved(self, msg, prefix_encoded)
        return
    parts: list[bytes] = []
    for start in range(0, len(msg), _MAX_PLAINTEXT):
        sealed = self.encrypt(bytes(msg[start : start + _MAX_PLAINTEXT]))  # noise wants bytes
        if prefix_encoded and start == 0:
            sealed = self.prefix + sealed
        parts.append(self.read_writer.encode_msg(sealed))  # its length prefix, as py-libp2p writes it
    await self.read_writer.read_write_closer.write(b"".join(parts))


_WRITE = Swap(BaseNoiseMsgReadWriter, "write_msg", _write_msg)


def _expect(shape: Shape) -> None:
    upstream = _WRITE.upstream()
    shape.signature(BaseNoiseMsgReadWriter, "write_msg", "(self, msg, prefix_encoded=False)",
                    func=upstream)
    # What we do for a long message is what upstream does, message by message.
    shape.reads(BaseNoiseMsgReadWriter, "write_msg", "MAX_PLAINTEXT_LENGTH", "encrypt", "prefix",
                "read_writer", func=upstream)
    shape.attrs(noise_io, "MAX_PLAINTEXT_LENGTH")
    shape.attrs(BaseNoiseMsgReadWriter, "encrypt", "prefix")
    shape.reads(BaseNoiseMsgReadWriter, "__init__", "read_writer", "NoisePacketReadWriter")
    # py-libp2p's packet writer is one encode_msg and one write: ours joins those writes.
    shape.signature(NoisePacketReadWriter, "encode_msg", "(self, msg)")
    shape.reads(NoisePacketReadWriter, "write_msg", "encode_msg", "read_write_closer", "write")
    shape.reads(BaseMsgReadWriter, "__init__", "read_write_closer")


PATCH = Patch("noise_writes", "0.8.1", _expect, (_WRITE,))
