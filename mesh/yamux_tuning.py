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

:func:`install` replaces the window policy with :func:`_give_back_credit`
and sets the largest frame to exactly four Noise messages
(:data:`FRAME_SIZE`), which ``mesh/noise_writes.py`` sends in one write. A
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
"""

from __future__ import annotations

from libp2p.security.noise import io as noise_io
from libp2p.stream_muxer.yamux import yamux
from libp2p.stream_muxer.yamux.yamux import YamuxStream

RECEIVE_WINDOW = 4 << 20
"""Bytes a peer may send on one bulk stream before the reader gives credit back."""

FRAME_SIZE = 4 * noise_io.MAX_PLAINTEXT_LENGTH
"""Largest yamux frame (header included) we send: exactly four full Noise messages
(262,076 bytes, within the 256 KiB window every stream starts with)."""

_ORIGINAL = (YamuxStream._auto_tune_and_send_window_update, yamux.MAX_MESSAGE_SIZE)


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


def install() -> None:
    """Apply both changes to every yamux stream of this process (idempotent)."""
    YamuxStream._auto_tune_and_send_window_update = _give_back_credit  # type: ignore[method-assign]
    yamux.MAX_MESSAGE_SIZE = FRAME_SIZE


def uninstall() -> None:
    """Restore py-libp2p's own behaviour (for comparisons)."""
    YamuxStream._auto_tune_and_send_window_update, yamux.MAX_MESSAGE_SIZE = _ORIGINAL  # type: ignore[method-assign]
