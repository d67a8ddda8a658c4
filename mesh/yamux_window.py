"""The yamux receive-window policy of our hosts (py-libp2p 0.8.1 needs it replaced).

Yamux flow control: a receiver grants its peer credit (the receive window);
the peer stops sending when the credit is spent, and the receiver gives
credit back with WINDOW_UPDATE frames as the application reads.

py-libp2p 0.8.1 (``YamuxStream._auto_tune_and_send_window_update``) means to
batch the credit it gives back, go-yamux style, but its "partial slack"
branch fires whenever less than half the window is outstanding, which in a
steady bulk transfer is after every read: one WINDOW_UPDATE frame (12 bytes,
Noise-encrypted, one ``send`` system call on the reader; one decryption and a
lock on the writer) for every 64 KiB data frame. Its ``PY_YAMUX_*``
environment switches do not reach that branch. Measured on a storage get,
the updates took 18% of the getting node's event loop.

:func:`install` replaces that method with go-yamux's rule on a fixed window
of :data:`RECEIVE_WINDOW` bytes per bulk stream: after a read, credit goes
back in one update once at least half of the window was consumed. A bulk
stream then sends two updates per window instead of one per frame; a stream
of small messages sends none. The unread bytes a stream can hold stay
bounded by the window.
"""

from __future__ import annotations

from libp2p.stream_muxer.yamux.yamux import YamuxStream

RECEIVE_WINDOW = 1 << 20
"""Bytes a peer may send on one stream before the reader gives credit back."""

_ORIGINAL = YamuxStream._auto_tune_and_send_window_update


async def _give_back_credit(stream: YamuxStream, *, bytes_read: int = 0) -> None:
    """After a read: send one WINDOW_UPDATE once half the stream's window is due.

    A stream starts with yamux's initial window (256 KiB); the first time half
    of it is due the stream has shown it carries bulk data and its window grows
    to :data:`RECEIVE_WINDOW`. Streams of small messages never send an update.
    """
    async with stream.window_lock:
        buffered = len(stream.conn.stream_buffers.get(stream.stream_id, b""))
        window = stream.target_recv_window
        if window - (stream.recv_window + buffered) < window // 2:
            return
        window = stream.target_recv_window = max(window, RECEIVE_WINDOW)
        due = window - (stream.recv_window + buffered)
        stream.recv_window += due
    # Never hold window_lock across the write: the frame reader takes it for incoming updates.
    await stream.send_window_update(due, skip_lock=True)


def install() -> None:
    """Use :func:`_give_back_credit` for every yamux stream of this process (idempotent)."""
    YamuxStream._auto_tune_and_send_window_update = _give_back_credit  # type: ignore[method-assign]


def uninstall() -> None:
    """Restore py-libp2p's own policy (for comparisons)."""
    YamuxStream._auto_tune_and_send_window_update = _ORIGINAL  # type: ignore[method-assign]
