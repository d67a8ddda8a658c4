"""Let one side of each pair start DCUtR hole punches (py-libp2p 0.8.1 starts them from both).

py-libp2p's ``DCUtRProtocol`` runs ``_auto_drive_loop``: every 2 s it starts a hole
punch towards every peer it reaches only through a relay. Both peers do so at once;
measured across real NATs (../shared/LIBP2P.md section 8), the two sessions collide
("Concurrent hole punch session", ``[Errno 99] Cannot assign requested address`` when
both bind the listen port for the same 4-tuple). PoolAI starts the punches itself
(:class:`poolai.mesh.holepunch.HolePuncher`: one side per pair, three attempts, each
counted), so :func:`quiet_auto_drive` replaces the loop on one ``DCUtRProtocol``
instance with one that does nothing; nothing process-wide changes, and :data:`PATCH`
only checks the shape at node start.

Remove when py-libp2p's DCUtR can be run without its auto-drive loop (an option), or
only drives from the side the spec names (the one that accepted the relayed connection).
"""

from __future__ import annotations

import trio
from libp2p.relay.circuit_v2 import dcutr
from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol

from poolai.mesh.patches.guard import Patch, Shape


async def _no_drive() -> None:
    await trio.sleep_forever()


def quiet_auto_drive(protocol: DCUtRProtocol) -> None:
    """Make ``protocol`` only answer hole punches and start those asked of it."""
    protocol._auto_drive_loop = _no_drive  # type: ignore[method-assign]


def _expect(shape: Shape) -> None:
    # run() starts self._auto_drive_loop: the instance's attribute, so ours.
    shape.reads(DCUtRProtocol, "run", "_auto_drive_loop", "start_soon")
    shape.signature(DCUtRProtocol, "_auto_drive_loop", "(self)")
    shape.signature(DCUtRProtocol, "initiate_hole_punch", "(self, peer_id)")
    shape.signature(DCUtRProtocol, "__init__",
                    "(self, host, read_timeout=30, write_timeout=30, dial_timeout=10)")
    shape.attrs(dcutr, "PROTOCOL_ID", "MAX_HOLE_PUNCH_ATTEMPTS")


PATCH = Patch("dcutr_drive", "0.8.1", _expect)
