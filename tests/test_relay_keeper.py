"""The reservation keeper with a fake host and fake relays: it holds two relays, renews
them halfway, replaces a dead one at the next step, and leaves a refusing one alone."""

from __future__ import annotations

import random

import trio

from poolai.mesh import circuit
from poolai.mesh.circuit import Granted
from poolai.mesh.errors import PeerUnreachable
from poolai.mesh.relay import ReservationKeeper


class FakeHost:
    libp2p = object()

    def __init__(self, relays: list[str]) -> None:
        self.connected = set(relays)
        self.relays = set(relays)
        self.advertised: list[str] = []

    def is_connected(self, peer: str) -> bool:
        return peer in self.connected

    def connected_peers(self) -> list[str]:
        return sorted(self.connected)

    def is_relayed(self, peer: str) -> bool:
        return False

    def supports(self, peer: str, protocol: str) -> bool:
        return peer in self.relays

    def set_circuit_addrs(self, addrs: list[str]) -> None:
        self.advertised = list(addrs)

    def dialled_addr(self, peer: str) -> str | None:
        return None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def keeper_with(monkeypatch, relays: list[str], refuse: set[str] = frozenset(), ttl: float = 600.0):
    host = FakeHost(relays)
    clock = Clock()
    asked: list[str] = []

    async def reserve(libp2p, relay: str) -> Granted:
        asked.append(relay)
        if relay in refuse:
            raise PeerUnreachable("refused")
        return Granted(relay, 0.0, (f"/ip4/203.0.113.1/tcp/4001/p2p/{relay}/p2p-circuit",), 3600, 1 << 30)

    monkeypatch.setattr(circuit, "reserve", reserve)
    monkeypatch.setattr(circuit, "remaining", lambda granted, now_wall=None: ttl)
    keeper = ReservationKeeper(host, lambda: True, rng=random.Random(1), clock=clock)  # type: ignore[arg-type]
    return keeper, host, clock, asked


async def test_holds_two_relays_and_advertises_them(monkeypatch):
    keeper, host, _, asked = keeper_with(monkeypatch, ["r1", "r2", "r3"])
    with trio.fail_after(5):
        await keeper.step()
    assert len(keeper.held) == 2 and len(asked) == 2
    assert sorted(circuit.relay_of(a) for a in host.advertised) == sorted(keeper.held)


async def test_a_dead_relay_is_replaced_at_the_next_step(monkeypatch):
    keeper, host, _, _ = keeper_with(monkeypatch, ["r1", "r2", "r3"])
    with trio.fail_after(5):
        await keeper.step()
        dead = sorted(keeper.held)[0]
        host.connected.discard(dead)
        await keeper.step()
    assert dead not in keeper.held and len(keeper.held) == 2
    assert keeper.relays_lost == 1
    assert all(f"/p2p/{dead}/" not in a for a in host.advertised)


async def test_renews_halfway_and_not_in_a_loop(monkeypatch):
    keeper, _, clock, asked = keeper_with(monkeypatch, ["r1", "r2"], ttl=20.0)
    with trio.fail_after(5):
        await keeper.step()
        for _ in range(20):  # a short TTL: renewals 10 s apart, not every step
            clock.now += 0.5
            await keeper.step()
    assert len(asked) == 2 + 2  # one renewal each at 10 s


async def test_a_refusing_relay_is_not_asked_again_for_30_s(monkeypatch):
    keeper, _, clock, asked = keeper_with(monkeypatch, ["r1", "r2", "r3"], refuse={"r1", "r2", "r3"})
    with trio.fail_after(5):
        await keeper.step()
        clock.now += 1
        await keeper.step()  # the third relay, untried so far
        assert sorted(asked) == ["r1", "r2", "r3"]
        clock.now += 10
        await keeper.step()
        assert len(asked) == 3
        clock.now += 25
        await keeper.step()
    assert len(asked) > 3 and not keeper.held


async def test_a_public_node_holds_nothing(monkeypatch):
    keeper, host, _, asked = keeper_with(monkeypatch, ["r1", "r2"])
    keeper.private = lambda: False
    with trio.fail_after(5):
        await keeper.step()
    assert not asked and not keeper.held and host.advertised == []
