"""Which relay roles a node takes, pure.

A node is *private* when nobody outside its own network can dial it. With
``relay_client = "auto"`` the node's reachability verdict decides; while it has none,
a node whose listen addresses are all behind a NAT (RFC 1918, 100.64.0.0/10) counts as
private, and one listening on 0.0.0.0 (reported as 127.0.0.1) or on a routable address
waits for the verdict. ``on`` and ``off`` override both.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from poolai.mesh.relay_rules import RelayLimits, is_private_address

if TYPE_CHECKING:
    from poolai.node.config import Config


def listen_ips(addrs: Iterable[str]) -> list[str]:
    """The IPv4 addresses in ``/ip4/<ip>/...`` multiaddrs (relay addresses left out)."""
    out = []
    for a in addrs:
        parts = a.split("/")
        if len(parts) > 2 and parts[1] == "ip4" and "/p2p-circuit" not in a:
            out.append(parts[2])
    return out


def is_private(setting: str, verdict: bool | None, ips: list[str]) -> bool:
    """``relay_client`` (``on``/``off``/``auto``), the node's reachability verdict (None:
    none yet), its listen IPs: does it need relays?"""
    if setting == "on":
        return True
    if setting == "off":
        return False
    if verdict is not None:
        return verdict
    return bool(ips) and all(is_private_address(ip) for ip in ips)


def looks_public(verdict: bool | None, ips: list[str]) -> bool:
    """Whether the node may be dialled from the internet: its verdict (``verdict`` is
    "private?") when it has one, else all its listen addresses are routable (neither
    behind a NAT nor loopback: a node on 0.0.0.0 or 127.0.0.1 waits for the verdict)."""
    if verdict is not None:
        return not verdict
    return bool(ips) and not any(is_private_address(ip) or ip.startswith("127.") for ip in ips)


def serves(setting: str, private: bool, public: bool) -> bool:
    """``relay_service`` (``on``/``off``/``auto``): relay for others? ``auto``: when the
    node looks public and is not private (``relay_client = "on"`` says private)."""
    return setting == "on" or (setting == "auto" and public and not private)


def limits_from(config: Config) -> RelayLimits:
    """The relay limits in a node's config."""
    return RelayLimits(reservations=config.relay_reservations, circuits=config.relay_circuits,
                       circuit_bytes=config.relay_circuit_bytes,
                       circuit_seconds=float(config.relay_circuit_time),
                       bandwidth=config.relay_bandwidth)
