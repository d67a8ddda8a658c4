"""The connection manager's log of peers that come and go, against a fake host."""

from __future__ import annotations

import logging

import trio

from poolai.mesh.admission import ConnFacts
from poolai.mesh.discovery import ConnectionManager
from poolai.mesh.errors import PeerUnreachable
from poolai.mesh.peers import PeerBook


class FakeHost:
    peer_id = "me"

    def __init__(self) -> None:
        self.peers: dict[str, bool] = {}  # peer -> inbound

    def connected_peers(self) -> list[str]:
        return sorted(self.peers)

    def member_peers(self) -> list[str]:  # every fake peer has identified as a node
        return sorted(self.peers)

    def supports(self, peer: str, protocol: str) -> bool:
        return False

    def connection_facts(self) -> list[ConnFacts]:
        return [ConnFacts(p, inbound, 0.0, 0.0, 0) for p, inbound in self.peers.items()]

    def peer_addrs(self, peer: str) -> list[str]:
        return [f"/ip4/127.0.0.1/tcp/4003/p2p/{peer}"]

    async def connect(self, peer: str, addrs: list[str]) -> None:
        raise PeerUnreachable("gone")  # the manager redials a peer that left


async def test_a_peer_that_joins_or_leaves_is_one_line(caplog):
    caplog.set_level(logging.INFO, logger="poolai.mesh.discovery")
    host = FakeHost()
    manager = ConnectionManager(host, PeerBook("me"), clock=lambda: 0.0)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        host.peers["12D3KooWjoiner"] = True
        manager._round(nursery)
        manager._round(nursery)  # still there: nothing more to say
        del host.peers["12D3KooWjoiner"]
        manager._round(nursery)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["peer 12D3KooWjoiner connected (inbound, /ip4/127.0.0.1/tcp/4003)",
                     "peer 12D3KooWjoiner disconnected"]
