"""Every change PoolAI makes to py-libp2p's internals, each checked before it is applied.

One module per patch; each says what upstream bug or limit it works around,
the measurement behind it, and when it can go. :func:`install` (called by
:func:`poolai.mesh.host.open_host`) first checks every patch against the
installed py-libp2p (the version it was written for, and the attributes,
signatures and names it relies on), and only then applies them all. A
mismatch raises :class:`PatchMismatch` naming the patch and what changed, so
a node with an unexpected py-libp2p stops at start instead of running with a
patch that silently no longer takes effect.

Patches here change py-libp2p for the whole process; code elsewhere in mesh/
reaches into py-libp2p only through public calls.
"""

from __future__ import annotations

from poolai.mesh.patches import (
    dcutr_drive,
    inbound_slots,
    noise_writes,
    pubsub_writes,
    read_ahead,
    yamux_tuning,
)
from poolai.mesh.patches.guard import Patch, PatchMismatch

PATCHES: tuple[Patch, ...] = (
    yamux_tuning.PATCH,
    noise_writes.PATCH,
    read_ahead.PATCH,
    pubsub_writes.PATCH,
    inbound_slots.PATCH,
    dcutr_drive.PATCH,
)


def check() -> None:
    """Raise :class:`PatchMismatch` for the first patch that does not fit py-libp2p."""
    for patch in PATCHES:
        patch.check()


def install() -> None:
    """Check every patch, then apply them all; a second call changes nothing.

    Raises :class:`PatchMismatch` (and applies nothing) if any patch does not fit.
    """
    check()
    for patch in PATCHES:
        patch.apply()


__all__ = ["PATCHES", "Patch", "PatchMismatch", "check", "install"]
