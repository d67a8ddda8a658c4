"""Which relay roles a node takes, pure.

A node is *private* when nobody outside its own network can dial it. Until the node
has its own reachability verdict (AutoNAT-style dial-backs), ``auto`` guesses from its
listen addresses: all of them private (RFC 1918, 100.64.0.0/10, loopback) means behind a
NAT. A firewalled node with a routable address cannot be told apart that way; its owner
says ``relay_client = "on"``. A node listening on 0.0.0.0 reports 127.0.0.1 and so
counts as private: most such nodes are home machines; a public server that listens on
0.0.0.0 says ``relay_client = "off"`` (or ``relay_service = "on"``) until the verdict.
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
    return bool(ips) and all(is_private_address(ip) for ip in ips if ip != "0.0.0.0")


def serves(setting: str, private: bool) -> bool:
    """``relay_service`` (``on``/``off``/``auto``): relay for others? (auto: when public)."""
    return setting == "on" or (setting == "auto" and not private)


def limits_from(config: Config) -> RelayLimits:
    """The relay limits in a node's config."""
    return RelayLimits(reservations=config.relay_reservations, circuits=config.relay_circuits,
                       circuit_bytes=config.relay_circuit_bytes,
                       circuit_seconds=float(config.relay_circuit_time),
                       bandwidth=config.relay_bandwidth)
