"""Circuit relay v2 between three real hosts on 127.0.0.1: a relay, a peer that reserves a
slot on it, and a peer that dials that one through it. The relay's limits hold: a circuit
past its byte limit or its time limit (idle) is closed, and a relay at its bandwidth cap
relays no more than the cap."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from polling import poll_until

from poolai.mesh import circuit
from poolai.mesh.errors import MeshError
from poolai.mesh.host import MeshHost, open_host
from poolai.mesh.relay import RelayServer, StopService
from poolai.mesh.relay_rules import RelayLimits

pytestmark = [pytest.mark.live, pytest.mark.timeout(120)]

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
SINK = "/test/sink/1"


@asynccontextmanager
async def relayed(limits: RelayLimits) -> AsyncIterator[tuple[MeshHost, MeshHost, RelayServer]]:
    """(source, destination, relay server): the destination holds a slot on the relay and
    the source is connected to it through the relay only."""
    async with open_host(create_new_key_pair(), LOOPBACK) as relay, \
            open_host(create_new_key_pair(), LOOPBACK) as dst, \
            open_host(create_new_key_pair(), LOOPBACK) as src, trio.open_nursery() as nursery:
        server = RelayServer(relay, limits)
        await nursery.start(server.run)
        await nursery.start(StopService(dst).run)
        await nursery.start(StopService(src).run)

        async def sink(stream) -> None:
            got = 0
            while chunk := await stream.receive_some(1 << 16):
                got += len(chunk)
            await stream.send_all(got.to_bytes(8, "big"))
            await stream.aclose()

        dst.set_handler(SINK, sink)
        with trio.fail_after(20):
            await dst.connect(relay.peer_id, relay.transport_addrs())
            granted = await circuit.reserve(dst.libp2p, relay.peer_id)
            assert granted.circuit_addrs and granted.limit_bytes == limits.circuit_bytes
            # The circuit address only: the source must go through the relay.
            await src.connect(dst.peer_id, list(granted.circuit_addrs))
        assert src.is_relayed(dst.peer_id) and dst.is_relayed(src.peer_id)
        yield src, dst, server
        nursery.cancel_scope.cancel()


async def send(src: MeshHost, dst: MeshHost, n: int) -> int:
    """Send ``n`` bytes to the sink; what it says it got."""
    stream = await src.open_stream(dst.peer_id, SINK)
    block = b"x" * (64 << 10)
    for _ in range(n // len(block)):
        await stream.send_all(block)
    await stream.send_eof()
    answer = b""
    while len(answer) < 8 and (chunk := await stream.receive_some(8 - len(answer))):
        answer += chunk
    return int.from_bytes(answer, "big")


async def test_a_peer_reached_only_through_a_relay():
    async with relayed(RelayLimits()) as (src, dst, server):
        with trio.fail_after(20):
            assert await send(src, dst, 1 << 20) == 1 << 20
            assert await src.ping(dst.peer_id) > 0
        stats = server.status()
        assert stats["reservations"] == 1 and stats["circuits"] == 1
        assert stats["bytes_relayed"] > 1 << 20


async def test_a_circuit_past_its_byte_limit_is_closed():
    async with relayed(RelayLimits(circuit_bytes=256 << 10)) as (src, dst, server):
        with trio.fail_after(30):
            try:
                got: int | None = await send(src, dst, 1 << 20)
            except (trio.BrokenResourceError, MeshError):  # the relay reset the circuit
                got = None
            assert got != 1 << 20
            await poll_until(lambda: not src.is_connected(dst.peer_id))
        assert server.status()["closed_by_bytes"] == 1


async def test_an_idle_circuit_past_its_time_limit_is_closed():
    async with relayed(RelayLimits(circuit_seconds=2.0)) as (src, dst, server):
        start = time.monotonic()
        with trio.fail_after(15):
            await poll_until(lambda: not src.is_connected(dst.peer_id), interval=0.1)
        assert 1.5 < time.monotonic() - start < 6
        assert server.status()["closed_by_time"] == 1


async def test_a_relay_at_its_bandwidth_cap_relays_no_more_than_the_cap():
    cap = 256 << 10
    async with relayed(RelayLimits(bandwidth=cap)) as (src, dst, server):
        before = server.status()["bytes_relayed"]
        start = time.monotonic()
        with trio.fail_after(30):
            assert await send(src, dst, 1 << 20) == 1 << 20
        elapsed = time.monotonic() - start
        moved = server.status()["bytes_relayed"] - before
        burst = cap // 4
        assert moved <= cap * elapsed + burst + (64 << 10), (moved, elapsed)
        assert elapsed > (1 << 20) / cap * 0.8  # and it did not let 1 MiB through in a blink
