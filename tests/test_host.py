"""Real libp2p hosts on 127.0.0.1: Noise+yamux only, requests, and misbehaving peers contained."""

from __future__ import annotations

import multiaddr
import pytest
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
from polling import poll_until

from poolai.mesh import rpc, wire
from poolai.mesh.errors import PeerUnreachable, RemoteError
from poolai.mesh.host import open_host
from poolai.mesh.latency import EmulatedLatency

ECHO = "/poolai/test-echo/1.0.0"
SINK = "/poolai/test-sink/1.0.0"
LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
pytestmark = pytest.mark.timeout(60)


@wire.message("test.echo")
class Echo:
    text: str = wire.field(max_len=64)


async def echo(peer, request: Echo) -> Echo:
    if request.text == "crash":
        raise RuntimeError("handler bug")
    return Echo(text=request.text.upper())


def echo_service() -> rpc.Service:
    return rpc.Service("echo", echo, rpc.ServiceConfig(request_types=(Echo,), read_timeout=2))


@pytest.mark.live
async def test_request_between_two_hosts():
    async with open_host(create_new_key_pair(), LOOPBACK) as a, open_host(
        create_new_key_pair(), LOOPBACK
    ) as b:
        a.serve(ECHO, echo_service())
        with trio.fail_after(10):
            await b.connect(a.peer_id, a.transport_addrs())
        reply = await b.request(a.peer_id, ECHO, Echo(text="hi"), (Echo,), timeout=5)
        assert reply == Echo(text="HI")
        assert a.connected_peers() == [b.peer_id]
        assert await b.ping(a.peer_id) > 0


@pytest.mark.live
async def test_unencrypted_dialer_is_refused():
    async with open_host(create_new_key_pair(), LOOPBACK) as a:
        a.serve(ECHO, echo_service())
        keys = create_new_key_pair()
        plain = new_host(
            key_pair=keys,
            sec_opt={TProtocol(PLAINTEXT_PROTOCOL_ID): InsecureTransport(keys)},
            listen_addrs=[multiaddr.Multiaddr(LOOPBACK[0])],
        )
        async with plain.run(listen_addrs=[multiaddr.Multiaddr(LOOPBACK[0])]):
            info = PeerInfo(ID.from_base58(a.peer_id), [multiaddr.Multiaddr(a.transport_addrs()[0])])
            with pytest.raises(Exception), trio.fail_after(15):  # noqa: B017 - any libp2p failure
                await plain.connect(info)
            assert str(plain.get_id()) not in a.connected_peers()
        # the refused dial left the host serving
        async with open_host(create_new_key_pair(), LOOPBACK) as b:
            with trio.fail_after(10):
                await b.connect(a.peer_id, a.transport_addrs())
            assert await b.request(a.peer_id, ECHO, Echo(text="ok"), (Echo,), timeout=5) == Echo(text="OK")


@pytest.mark.live
async def test_misbehaving_peer_loses_only_its_stream():
    async with open_host(create_new_key_pair(), LOOPBACK) as a, open_host(
        create_new_key_pair(), LOOPBACK
    ) as b:
        service = echo_service()
        a.serve(ECHO, service)
        with trio.fail_after(10):
            await b.connect(a.peer_id, a.transport_addrs())

        abuses = [
            wire.encode_varint(1 << 31),  # absurd frame length
            wire.frame(b"\xc1\x00\x00"),  # not msgpack
            wire.frame(wire.encode(wire.ErrorReply(code="internal", message="x"))),  # wrong type
            wire.frame(wire.encode(Echo(text="hi")))[:-3],  # truncated, then half-close
        ]
        for junk in abuses:
            stream = await b.open_stream(a.peer_id, ECHO)
            with trio.fail_after(5):
                await stream.send_all(junk)
                await stream.send_eof()
                body = await rpc.read_frame(stream, wire.FrameDecoder())
            assert wire.decode(body, wire.ErrorReply).code == "bad_request"
            await stream.aclose()

        # a stream that opens and then goes silent is timed out, not held forever
        silent = await b.open_stream(a.peer_id, ECHO)
        with trio.fail_after(10):
            await poll_until(lambda: service.stats.timeouts > 0)
        await silent.reset()

        # a handler bug becomes an error reply; the connection survives
        with pytest.raises(RemoteError, match="internal"):
            await b.request(a.peer_id, ECHO, Echo(text="crash"), (Echo,), timeout=5)
        assert await b.request(a.peer_id, ECHO, Echo(text="still"), (Echo,), timeout=5) == Echo(
            text="STILL"
        )
        assert service.stats.bad_requests == 4
        assert a.connected_peers() == [b.peer_id]


@pytest.mark.live
async def test_unknown_protocol_and_dead_peer_are_clean_errors():
    async with open_host(create_new_key_pair(), LOOPBACK) as a:
        async with open_host(create_new_key_pair(), LOOPBACK) as b:
            with trio.fail_after(10):
                await a.connect(b.peer_id, b.transport_addrs())
            with pytest.raises(PeerUnreachable):
                await a.request(b.peer_id, "/poolai/nothing/1.0.0", Echo(text="x"), (Echo,), timeout=5)
        async with open_host(create_new_key_pair(), LOOPBACK) as gone:
            dead_id, dead_addrs = gone.peer_id, gone.transport_addrs()
        with pytest.raises((PeerUnreachable, trio.TooSlowError)), trio.fail_after(10):
            await a.connect(dead_id, dead_addrs)


# ----------------------------------------------------------------------------- emulated latency


def pid_of(keys) -> str:  # type: ignore[no-untyped-def]
    return ID.from_pubkey(keys.public_key).to_base58()


@pytest.mark.live
async def test_emulated_latency_delays_requests_and_pings_but_not_bulk_reads():
    ka, kb, kc = create_new_key_pair(), create_new_key_pair(), create_new_key_pair()
    # a holds back what b sends by 0.3 s, b what a sends by 0.2 s; c is not listed anywhere
    a_table = EmulatedLatency({pid_of(kb): 0.3})
    b_table = EmulatedLatency({pid_of(ka): 0.2})
    async with open_host(ka, LOOPBACK, latency=a_table) as a, open_host(
        kb, LOOPBACK, latency=b_table
    ) as b, open_host(kc, LOOPBACK) as c:
        a.serve(ECHO, echo_service())
        received = trio.Event()
        got = []

        async def sink(stream) -> None:  # type: ignore[no-untyped-def]
            while chunk := await stream.receive_some(65536):
                got.append(len(chunk))
            await stream.send_all(str(sum(got)).encode())
            await stream.aclose()
            received.set()

        a.set_handler(SINK, sink)
        with trio.fail_after(10):
            await b.connect(a.peer_id, a.transport_addrs())
            await c.connect(a.peer_id, a.transport_addrs())
        with trio.fail_after(20):
            start = trio.current_time()
            assert await b.request(a.peer_id, ECHO, Echo(text="x"), (Echo,), timeout=5) == Echo(text="X")
            slow = trio.current_time() - start
            start = trio.current_time()
            assert await c.request(a.peer_id, ECHO, Echo(text="y"), (Echo,), timeout=5) == Echo(text="Y")
            fast = trio.current_time() - start
            pinged = await b.ping(a.peer_id)
            unlisted = await c.ping(a.peer_id)

            # 40 writes in one turn: a delays the first read only, not every chunk
            stream = await b.open_stream(a.peer_id, SINK)
            start = trio.current_time()
            for _ in range(40):
                await stream.send_all(b"z" * 16384)
            await stream.send_eof()
            reply = b""
            while chunk := await stream.receive_some():
                reply += chunk
            bulk = trio.current_time() - start
            await received.wait()
        assert slow >= 0.5, slow  # both one-way delays, once each
        assert fast < 0.3, fast  # c is not in a's table: no delay at all
        assert pinged >= 500, pinged
        assert unlisted < 300, unlisted
        assert reply == str(40 * 16384).encode() and len(got) > 1
        assert 0.5 <= bulk < 0.5 + 0.3 * (len(got) - 1), (bulk, len(got))


async def _send_over_one_stream(payload: bytes, write_size: int) -> bytes:
    """Serve ``payload`` from one host to another over one stream, written ``write_size``
    bytes at a time and read 1 MiB at a time; the bytes that arrived."""
    async with open_host(create_new_key_pair(), LOOPBACK) as a, open_host(
        create_new_key_pair(), LOOPBACK
    ) as b:

        async def serve(stream) -> None:
            for at in range(0, len(payload), write_size):
                await stream.send_all(payload[at : at + write_size])
            await stream.aclose()

        a.set_handler(SINK, serve)
        with trio.fail_after(30):
            await b.connect(a.peer_id, a.transport_addrs())
            stream = await b.open_stream(a.peer_id, SINK)
            received = bytearray()
            while data := await stream.receive_some(1 << 20):
                received += data
    return bytes(received)


@pytest.mark.live
async def test_bulk_reads_give_credit_back_once_per_quarter_window(monkeypatch):
    """8 MiB over one stream arrive intact, with one WINDOW_UPDATE frame per quarter of the
    receive window (py-libp2p 0.8.1's own policy sends one per 64 KiB data frame: 190 here;
    see mesh/patches/yamux_tuning.py)."""
    import random

    from libp2p.stream_muxer.yamux.yamux import YamuxStream

    from poolai.mesh.patches import yamux_tuning

    payload = random.Random(5).randbytes(8 << 20)
    updates: list[int] = []
    send_update = YamuxStream.send_window_update

    async def counted(stream, increment, skip_lock=False):
        updates.append(increment)
        await send_update(stream, increment, skip_lock=skip_lock)

    monkeypatch.setattr(YamuxStream, "send_window_update", counted)
    assert await _send_over_one_stream(payload, 256 << 10) == payload
    assert 0 < len(updates) <= len(payload) // (yamux_tuning.RECEIVE_WINDOW // 4) + 2
    assert sum(updates) >= len(payload) - yamux_tuning.RECEIVE_WINDOW


@pytest.mark.live
async def test_bulk_writes_send_each_yamux_frame_in_one_socket_write(monkeypatch):
    """8 MiB over one stream arrive intact through py-libp2p's own reader, while the sender
    makes one socket write per yamux frame of four Noise messages instead of one per
    message (at least 128 here; see mesh/patches/noise_writes.py)."""
    import random

    from libp2p.network.connection.raw_connection import RawConnection
    from libp2p.security.noise.io import MAX_PLAINTEXT_LENGTH

    payload = random.Random(9).randbytes(8 << 20)
    bulk_writes: list[int] = []
    write = RawConnection.write

    async def counted(conn, data):
        if len(data) > 1000:  # leaves out window updates and protocol negotiation
            bulk_writes.append(len(data))
        await write(conn, data)

    monkeypatch.setattr(RawConnection, "write", counted)
    assert await _send_over_one_stream(payload, len(payload)) == payload
    messages = len(payload) // MAX_PLAINTEXT_LENGTH
    assert len(bulk_writes) <= messages // 2, (len(bulk_writes), messages)
    assert max(bulk_writes) > 2 * MAX_PLAINTEXT_LENGTH


async def test_raw_connections_read_ahead_and_keep_every_byte_in_order(monkeypatch):
    """Over a real socket with the bytes already queued: py-libp2p's pattern (a 2-byte length,
    then that many bytes) is served from one socket read per READ_AHEAD instead of two per
    message, and the bytes come out exactly as sent (see mesh/patches/read_ahead.py)."""
    import random

    from libp2p.io.trio import TrioTCPStream
    from libp2p.io.utils import read_exactly
    from libp2p.network.connection.raw_connection import RawConnection

    from poolai.mesh.patches import read_ahead

    rng = random.Random(7)
    bodies = [rng.randbytes(rng.choice([1, 17, 1500, 6000])) for _ in range(16)]  # < 64 KiB
    wire_bytes = b"".join(len(b).to_bytes(2, "big") + b for b in bodies)
    reads = [0]
    read = TrioTCPStream.read

    async def counted(stream, n=None):
        reads[0] += 1
        return await read(stream, n)

    monkeypatch.setattr(TrioTCPStream, "read", counted)

    async def receive_all(install: bool) -> list[bytes]:
        (read_ahead.PATCH.apply if install else read_ahead.PATCH.remove)()
        reads[0] = 0
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        async with listeners[0], await trio.open_tcp_stream("127.0.0.1", port) as sender:
            receiver = await listeners[0].accept()
            await sender.send_all(wire_bytes)  # fits the socket buffers: all queued at once
            await sender.send_eof()
            conn = RawConnection(TrioTCPStream(receiver), initiator=False)
            got = []
            for _ in bodies:
                length = int.from_bytes(await read_exactly(conn, 2), "big")
                got.append(await read_exactly(conn, length))
            assert await conn.read(10) == b""  # the end of the stream still reads as such
            await receiver.aclose()
        return got

    try:
        with trio.fail_after(10):
            assert await receive_all(install=False) == bodies
            plain = reads[0]
            assert await receive_all(install=True) == bodies
    finally:
        read_ahead.PATCH.apply()
    assert plain >= 2 * len(bodies)
    assert reads[0] <= 3, (reads[0], plain)  # one read for all, one for the end of stream
