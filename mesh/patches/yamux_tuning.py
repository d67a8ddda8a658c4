"""Yamux flow control and frame size for our hosts (py-libp2p 0.8.1's need replacing).

Yamux flow control: a receiver grants its peer credit (the receive window);
the peer stops sending when the credit is spent, and the receiver gives
credit back with WINDOW_UPDATE frames as the application reads. Two things
in py-libp2p 0.8.1 make bulk transfers cost far more CPU than they need, on
both ends:

* **Credit after every read.** ``YamuxStream._auto_tune_and_send_window_update``
  means to batch credit go-yamux style, but its "partial slack" branch fires
  whenever less than half the window is outstanding, which in a steady bulk
  transfer is after every read: one WINDOW_UPDATE (12 bytes, Noise-encrypted,
  one ``send`` on the reader; a decryption on the writer) per 64 KiB data
  frame. Its ``PY_YAMUX_*`` switches do not reach that branch. A writer that
  runs out of credit polls for more every 10 ms (``YamuxStream.write``).
* **Small frames, split badly.** A full data frame is 12 + 65,524 bytes,
  but a Noise message carries at most 65,519 bytes of plaintext, so every
  frame went out as two messages (the second of 17 bytes): two encryptions,
  two ``send`` calls, two reads on the other side. And every 64 KiB frame
  costs its own trip through yamux's Python on both ends (the reader also
  joins a read's frames by repeated concatenation).

:data:`PATCH` replaces the window policy with :func:`_give_back_credit`
and sets the largest frame to exactly four Noise messages
(:data:`FRAME_SIZE`), which ``mesh/patches/noise_writes.py`` sends in one write. A
frame of 256 KiB holds a shared connection's other streams back for 21 ms
at 100 Mbit/s, a fraction of what the socket's send buffer already queues.
A stream starts with yamux's
256 KiB window; once a quarter of it is due the stream carries bulk data and
its window becomes :data:`RECEIVE_WINDOW`; credit goes back in one update
whenever a quarter of the window is due. The reader thus still has three
quarters of a window buffered when it returns credit, enough to keep
reading through the writer's 10 ms poll at a few hundred MB/s. Streams of
small messages send no update at all; the unread bytes a stream holds stay
bounded by its window.

Measured: py-libp2p's policy sent 190 WINDOW_UPDATEs for 8 MiB over one
stream; tests/test_host.py holds this one to at most 10. What both changes
do for whole reads and puts is measured in ``noise_writes`` and docs/storage.md.

Remove when py-libp2p batches yamux credit (go-yamux style, a quarter window
or more per update) and sends frames larger than one Noise message at once;
the version guard makes each new py-libp2p release the time to measure again.
"""

from __future__ import annotations

from libp2p.security.noise import io as noise_io
from libp2p.stream_muxer.yamux import yamux
from libp2p.stream_muxer.yamux.yamux import Yamux, YamuxStream

from poolai.mesh.patches.guard import Patch, Shape, Swap

RECEIVE_WINDOW = 4 << 20
"""Bytes a peer may send on one bulk stream before the reader gives credit back."""

FRAME_SIZE = 4 * noise_io.MAX_PLAINTEXT_LENGTH
"""Largest yamux frame (header included) we send: exactly four full Noise messages
(262,076 bytes, within the 256 KiB window every stream starts with)."""


async def _give_back_credit(stream: YamuxStream, *, bytes_read: int = 0) -> None:
    """After a read: send one WINDOW_UPDATE once a quarter of the stream's window is due."""
    async with stream.window_lock:
        buffered = len(stream.conn.stream_buffers.get(stream.stream_id, b""))
        window = stream.target_recv_window
        if window - (stream.recv_window + buffered) < window // 4:
            return
        window = stream.target_recv_window = max(window, RECEIVE_WINDOW)
        due = window - (stream.recv_window + buffered)
        stream.recv_window += due
    # Never hold window_lock across the write: the frame reader takes it for incoming updates.
    await stream.send_window_update(due, skip_lock=True)


_CREDIT = Swap(YamuxStream, "_auto_tune_and_send_window_update", _give_back_credit)
_FRAME = Swap(yamux, "MAX_MESSAGE_SIZE", FRAME_SIZE)


def _expect(shape: Shape) -> None:
    shape.signature(YamuxStream, "_auto_tune_and_send_window_update", "(self, *, bytes_read=0)",
                    func=_CREDIT.upstream())
    shape.reads(YamuxStream, "read", "_auto_tune_and_send_window_update")  # credit after each read
    shape.signature(YamuxStream, "send_window_update", "(self, increment, skip_lock=False)")
    shape.reads(YamuxStream, "__init__", "window_lock", "target_recv_window", "recv_window",
                "conn", "stream_id")
    shape.reads(Yamux, "__init__", "stream_buffers")
    # MAX_MESSAGE_SIZE is a module global: assigning it only matters while write() reads it.
    shape.attrs(yamux, "MAX_MESSAGE_SIZE", "DEFAULT_WINDOW_SIZE", "MAX_WINDOW_SIZE")
    shape.reads(YamuxStream, "write", "MAX_MESSAGE_SIZE")
    shape.attrs(noise_io, "MAX_PLAINTEXT_LENGTH")
    shape.holds(FRAME_SIZE <= getattr(yamux, "DEFAULT_WINDOW_SIZE", 0),
                f"a {FRAME_SIZE}-byte frame no longer fits yamux's initial window")
    shape.holds(RECEIVE_WINDOW <= getattr(yamux, "MAX_WINDOW_SIZE", 0),
                f"a {RECEIVE_WINDOW}-byte window is over yamux's MAX_WINDOW_SIZE")


PATCH = Patch("yamux_tuning", "0.8.1", _expect, (_CREDIT, _FRAME))
