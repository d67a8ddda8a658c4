"""Roles by reachability: what a node does, and is asked to do, given who can dial whom.

Pure rules, no I/O; NETWORK.md section 9 ("Roles") gives the reasons.

A peer is **relay-only** for this node when its advert says ``private`` (the
internet cannot dial it) and this node holds no direct connection to it: the only
way to reach it is through a relay. Such a peer

- is left out of the ring this node *places* shares on (:func:`write_exclusions`):
  a share moves only over a direct path, never through a relay's slots and byte
  limits. It stays in the ring readers use, marked absent, so the holders of the
  shares already on it are still computed (``storage.placement``'s absent peers);
- keeps fewer incoming overlay links (:func:`incoming_cap`): each incoming link costs
  the linker a probe a minute and puts the node on lookup paths, and through a relay
  every one of those rides the relay's circuits;
- serves as no relay (:func:`may_relay`; for the circuit relay service to consult).

A ``private`` peer that holds a direct connection to us (it dialled out, or a hole
punch made one) is reached directly and takes shares like anyone else; a ``public``
or ``unknown`` peer always does (unknown is every node of an older release, and every
node before its first round: excluding them would empty small rings).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from poolai.node.reach.rules import PRIVATE, PUBLIC

PRIVATE_INCOMING_SHARE = 4  # a private node keeps a quarter of the incoming links ...
MIN_PRIVATE_INCOMING = 4  # ... but never fewer than this (its ring neighbours link to it)


def relay_only(state: str, direct: bool) -> bool:
    """Whether a peer advertising ``state`` is reachable only through a relay, given
    whether this node holds a ``direct`` connection to it."""
    return state == PRIVATE and not direct


def write_exclusions(peers: Iterable[str], state_of: Callable[[str], str],
                     direct: Callable[[str], bool]) -> set[str]:
    """The ``peers`` a node must not place shares on now: the relay-only ones."""
    return {p for p in peers if relay_only(state_of(p), direct(p))}


def may_relay(own_state: str) -> bool:
    """Whether a node in ``own_state`` serves circuit relay: only a public one (a relay
    others cannot dial is no relay, and a private node's own uplink is what its relayed
    peers would be spending)."""
    return own_state == PUBLIC


def incoming_cap(max_incoming: int, own_state: str) -> int:
    """How many incoming overlay links a node in ``own_state`` keeps, of the
    configured ``max_incoming``."""
    if own_state != PRIVATE:
        return max_incoming
    return min(max_incoming, max(MIN_PRIVATE_INCOMING, max_incoming // PRIVATE_INCOMING_SHARE))


def summary(state: str, *, public_addr: str | None, relay_addrs: Sequence[str],
            detail: str, answers: int) -> str:
    """The one line ``poolai status`` and the status page show.

    ``relay_addrs`` are the node's ``/p2p-circuit`` addresses (none until circuit relay
    is in use: the relay work passes its reservations' addresses here); ``detail`` is the
    verdict's own line (what it can tell of the NAT).
    """
    if state == PUBLIC and public_addr:
        return f"reachable from the internet at {public_addr}"
    if relay_addrs:
        shown = ", ".join(relay_addrs[:3]) + (f" (+{len(relay_addrs) - 3})" if len(relay_addrs) > 3 else "")
        return f"behind NAT, reachable through relays {shown}"
    if state == PRIVATE:
        return f"LAN only: {detail}, and no relay"
    return f"reachability unknown ({answers} answer{'' if answers == 1 else 's'})"
