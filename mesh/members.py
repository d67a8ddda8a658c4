"""Who is a member of the mesh: a connected peer is not necessarily one.

Every service used to take "connected" for "a PoolAI node": the overlay observed each
connected peer as a direct neighbour, the storage ring placed shares on each, peer
exchange booked each, credits synced with each. Reachability checks break that: a
node proves another can be dialled by dialling it from a *throw-away* libp2p identity
(:mod:`poolai.mesh.reach`), a fresh host that serves nothing of PoolAI's and hangs up
after a few milliseconds. Counted as a member, such an identity entered storage rings
and stayed in readers' rings as a departed holder for two upkeep passes.

The rule (:func:`is_member`): a connected peer is a member once it has **identified
itself** (libp2p identify answered, so its protocol list is known) and that list does
**not** carry :data:`DIALER_MARK`, the protocol every dial-back identity serves and no
node does. Both halves are needed:

- Identify first: until it answers, nothing tells a node from a dial-back identity.
  It answers within milliseconds of the connection, before any service's next tick.
- A marker, not a positive test such as "serves the storage protocol": a node's
  services register their protocols *after* its host starts listening (and tests
  connect hosts before starting services), so a node identified early lists none of
  them; py-libp2p pushes no identify update when a handler is added. The marker is
  registered by the dial-back host before it dials anyone, so it is always listed.

A peer that lies about its protocols can always connect under a fresh identity
anyway; this rule keeps the project's own dial-backs out, which is what went wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable

DIALER_MARK = "/poolai/reach-dialer/1.0.0"  # served by dial-back identities only (see mesh.reach)


def is_member(protocols: Collection[str] | None) -> bool:
    """Whether a connected peer whose identify listed ``protocols`` (None: not yet
    identified) counts as a member of the mesh (see the module doc)."""
    return bool(protocols) and DIALER_MARK not in protocols  # type: ignore[operator]


def members(connected: Iterable[str], protocols_of: Callable[[str], Collection[str] | None]) -> list[str]:
    """The ``connected`` peers that are members, in the order given."""
    return [p for p in connected if is_member(protocols_of(p))]
