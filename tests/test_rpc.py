"""Request/response over in-memory streams: replies, error replies, deadlines and load shedding."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from poolai.mesh import rpc, wire
from poolai.mesh.errors import ProtocolError, RemoteError, TruncatedFrame


@wire.message("test.ping")
class Ping:
    n: int = wire.field(min=0, max=1000)


@wire.message("test.pong")
class Pong:
    n: int


async def double(peer, request: Ping) -> Pong:
    if request.n == 13:
        raise rpc.RemoteFault("refused", "unlucky number")
    if request.n == 666:
        raise RuntimeError("handler bug")
    return Pong(n=request.n * 2)


def make_service(**overrides) -> rpc.Service:
    return rpc.Service("test", double, rpc.ServiceConfig(request_types=(Ping,), **overrides))


async def call(service: rpc.Service, request) -> Pong:
    client, server = trio.testing.memory_stream_pair()
    outcome: list = []

    async def client_side():
        try:
            outcome.append(await rpc.exchange(client, request, (Pong,)))
        except RemoteError as exc:
            outcome.append(exc)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service.handle, server, "peer")
            nursery.start_soon(client_side)
    if isinstance(outcome[0], Exception):
        raise outcome[0]
    return outcome[0]


async def test_request_gets_reply():
    service = make_service()
    assert await call(service, Ping(n=21)) == Pong(n=42)
    assert service.stats.served == 1


async def test_handler_fault_becomes_error_reply():
    with pytest.raises(RemoteError) as info:
        await call(make_service(), Ping(n=13))
    assert info.value.code == "refused"


async def test_handler_bug_is_contained_as_internal_error():
    service = make_service()
    with pytest.raises(RemoteError) as info:
        await call(service, Ping(n=666))
    assert info.value.code == "internal"
    assert service.stats.handler_errors == 1
    assert await call(service, Ping(n=1)) == Pong(n=2)  # the service still serves


async def test_schema_violation_gets_bad_request():
    service = make_service()
    with pytest.raises(RemoteError) as info:
        await call(service, Pong(n=1))  # wrong message type for this protocol
    assert info.value.code == "bad_request"
    assert service.stats.bad_requests == 1


async def test_oversized_request_gets_bad_request_and_no_allocation():
    service = make_service(max_frame=64)
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(service.handle, server, "peer")
        await client.send_all(wire.encode_varint(1 << 30))  # claims 1 GiB
        await client.send_eof()
        body = await rpc.read_frame(client, wire.FrameDecoder())
    assert wire.decode(body, wire.ErrorReply).code == "bad_request"


async def test_truncated_request_is_dropped():
    service = make_service()
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(service.handle, server, "peer")
        await client.send_all(wire.frame(wire.encode(Ping(n=1)))[:-2])
        await client.send_eof()
        body = await rpc.read_frame(client, wire.FrameDecoder())
    assert wire.decode(body, wire.ErrorReply).code == "bad_request"
    assert service.stats.bad_requests == 1


async def test_silent_peer_times_out(autojump_clock):
    service = make_service(read_timeout=3)
    client, server = trio.testing.memory_stream_pair()
    with trio.fail_after(10):
        await service.handle(server, "peer")  # client never sends
    assert service.stats.timeouts == 1


async def test_busy_service_sheds_load():
    gate = trio.Event()

    async def slow(peer, request):
        await gate.wait()
        return Pong(n=0)

    service = rpc.Service("slow", slow, rpc.ServiceConfig(request_types=(Ping,), max_concurrent=1))
    async with trio.open_nursery() as nursery:
        c1, s1 = trio.testing.memory_stream_pair()
        nursery.start_soon(service.handle, s1, "p1")
        await c1.send_all(wire.frame(wire.encode(Ping(n=1))))
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(RemoteError) as info:
            c2, s2 = trio.testing.memory_stream_pair()
            nursery.start_soon(service.handle, s2, "p2")
            await rpc.exchange(c2, Ping(n=2), (Pong,))
        assert info.value.code == "busy"
        gate.set()
    assert service.stats.rejected_busy == 1


async def test_client_rejects_malformed_reply():
    client, server = trio.testing.memory_stream_pair()

    async def bad_server():
        await rpc.read_frame(server, wire.FrameDecoder())
        await server.send_all(wire.frame(b"\xc1"))
        await server.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(bad_server)
        with pytest.raises(ProtocolError):
            await rpc.exchange(client, Ping(n=1), (Pong,))


async def test_client_sees_truncated_reply():
    client, server = trio.testing.memory_stream_pair()

    async def bad_server():
        await rpc.read_frame(server, wire.FrameDecoder())
        await server.send_all(wire.frame(wire.encode(Pong(n=1)))[:-1])
        await server.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(bad_server)
        with pytest.raises(TruncatedFrame):
            await rpc.exchange(client, Ping(n=1), (Pong,))
