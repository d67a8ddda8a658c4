"""The share protocol between two in-process libp2p hosts, and its server fed hostile bytes.

Host A serves its ``ShareStore``; host B talks to it through the libp2p
``ShareTransport``. Malformed, truncated, oversized and lying uploads are sent
on raw streams; each must be refused with a clear reason, leave the store
untouched, and leave the server serving the next request.
"""

from __future__ import annotations

import hashlib
import random

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from polling import poll_until

from poolai.mesh import wire
from poolai.mesh.errors import TruncatedFrame
from poolai.mesh.host import open_host
from poolai.mesh.peer_ids import peer_id_bytes
from poolai.storage import integrity, raid
from poolai.storage.errors import PeerError, ShareMissing, StoreWriteFailed
from poolai.storage.protocol import (
    PROTOCOL,
    FetchRequest,
    PutRequest,
    Reader,
    ShareRefused,
    pack_bits,
    unpack_bits,
)
from poolai.storage.raid import ShareMeta
from poolai.storage.server import ServerConfig, ShareServer
from poolai.storage.store import ShareStore
from poolai.storage.transport import Libp2pShareTransport

pytestmark = pytest.mark.timeout(60)
LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
FILE = hashlib.sha256(b"file").digest()
LEASE = 4_000_000_000


def share(seed: int, size: int = 300_000) -> tuple[bytes, bytes]:
    data = random.Random(seed).randbytes(size)
    return integrity.share_id(data), data


class Pair:
    """Host A serving a store, host B holding a transport to it."""

    def __init__(self, a, b, store: ShareStore, server: ShareServer) -> None:
        self.a, self.b, self.store, self.server = a, b, store, server
        self.transport = Libp2pShareTransport(b)
        self.peer = peer_id_bytes(a.peer_id)

    async def raw(self, *chunks: bytes) -> object:
        """Send raw bytes on a fresh stream, half-close, return the decoded reply (or None)."""
        stream = await self.b.open_stream(self.a.peer_id, PROTOCOL)
        for chunk in chunks:
            await stream.send_all(chunk)
        await stream.send_eof()
        body = await Reader(stream).frame()
        await stream.aclose()
        return None if body is None else wire.decode(body, wire.ErrorReply)


@pytest.fixture
async def pair(tmp_path):
    store = ShareStore(tmp_path / "a", quota_bytes=2_000_000, durable=False)
    server = ShareServer(store, config=ServerConfig(header_timeout=2, body_timeout=2))
    async with open_host(create_new_key_pair(), LOOPBACK) as a, open_host(
        create_new_key_pair(), LOOPBACK
    ) as b:
        a.set_handler(PROTOCOL, lambda s: server.handle(s, s.peer_id))
        with trio.fail_after(10):
            await b.connect(a.peer_id, a.transport_addrs())
        yield Pair(a, b, store, server)
    store.close()


async def wait_for(condition) -> None:
    """The server's counters (the caller's fail_after bounds it)."""
    await poll_until(condition, interval=0.01)

def test_bitmaps_round_trip_and_reject_stray_bits():
    flags = [True, False, True] * 5
    assert unpack_bits(pack_bits(flags), len(flags)) == flags
    with pytest.raises(Exception, match="past the last"):
        unpack_bits(b"\xff\xff", 15)
    with pytest.raises(Exception, match="bitmap"):
        unpack_bits(b"\x00", 15)


def test_refusal_reason_is_parsed_from_the_message():
    refused = ShareRefused.from_remote("refused", "quota: share of 5 bytes refused")
    assert (refused.code, refused.reason, str(refused)) == (
        "refused", "quota", "quota: share of 5 bytes refused"
    )
    assert ShareRefused.from_remote("busy", "no reason word here").reason == "busy"


def test_a_holder_without_the_share_is_a_miss_not_a_fault():
    missing = ShareRefused.from_remote("not_found", "not_found: no share 00ff")
    assert isinstance(missing, ShareMissing) and isinstance(missing, ShareRefused)
    assert (missing.code, missing.reason) == ("not_found", "not_found")
    assert missing.to_wire().message == "not_found: no share 00ff"  # on the wire as before
    rotten = ShareRefused.from_remote("not_found", "corrupt: share 00ff failed its hash check")
    assert not isinstance(rotten, ShareMissing)  # a holder that lost a share to rot is news


@pytest.mark.live
async def test_store_fetch_has_audit_renew(pair):
    t, peer = pair.transport, pair.peer
    sid, data = share(1)
    with trio.fail_after(10):
        await t.store(peer, sid, data, ShareMeta(FILE, 1000))
        assert await t.fetch(peer, sid) == data
        assert await t.fetch_range(peer, sid, 1000, 5000) == data[1000:6000]
        assert await t.fetch_range(peer, sid, 299_000, 0) == data[299_000:]
        other = hashlib.sha256(b"absent").digest()
        assert await t.has(peer, [sid, other, sid]) == [True, False, True]
        nonce = bytes(range(32))
        proof = await t.audit(peer, sid, 123, 4567, nonce)
        assert proof == integrity.audit_digest(nonce, data[123 : 123 + 4567])
        assert await t.renew(peer, [other, sid], 5000) == [False, True]
        # storing again is accepted and keeps one copy
        await t.store(peer, sid, data, ShareMeta(FILE, 10))
    record = pair.store.record(sid)
    assert (record.lease_expiry, record.file_id, record.size) == (5000, FILE, len(data))
    assert pair.store.statistics().shares == 1
    stats = pair.server.statistics()
    assert (stats.stored, stats.fetched, stats.bytes_in) == (2, 3, 2 * len(data))


@pytest.mark.live
async def test_missing_share_and_bad_range_are_clear_refusals(pair):
    t, peer = pair.transport, pair.peer
    sid, data = share(2)
    with trio.fail_after(10):
        with pytest.raises(ShareRefused) as missing:
            await t.fetch(peer, sid)
        assert missing.value.code == "not_found"
        await t.store(peer, sid, data, ShareMeta(FILE, LEASE))
        with pytest.raises(ShareRefused) as bad_range:
            await t.fetch_range(peer, sid, len(data) - 10, 100)
        assert bad_range.value.reason == "range"


@pytest.mark.live
async def test_quota_refusal_comes_before_the_body_and_stores_nothing(pair):
    t, peer = pair.transport, pair.peer
    big = random.Random(3).randbytes(1_500_000)
    with trio.fail_after(10):
        await t.store(peer, integrity.share_id(big), big, ShareMeta(FILE, LEASE))
        sid, data = share(4, 600_000)
        with pytest.raises(ShareRefused) as refused:
            await t.store(peer, sid, data, ShareMeta(FILE, LEASE))
    assert (refused.value.code, refused.value.reason) == ("refused", "quota")
    assert "quota" in str(refused.value)
    stats = pair.store.statistics()
    assert (stats.shares, stats.bytes) == (1, len(big))
    assert pair.server.statistics().bytes_in == len(big)  # the refused body was never read
    assert t.statistics().refusals == {"quota": 1}
    # the refused exchange's stream is not kept (nor retried); the next store opens a fresh one
    small, tiny = share(5, 1000)
    with trio.fail_after(10):
        await t.store(peer, small, tiny, ShareMeta(FILE, LEASE))
    assert (t.statistics().reused_streams, t.statistics().stale_streams) == (1, 0)
    assert pair.store.statistics().shares == 2


@pytest.mark.live
async def test_wrong_hash_upload_is_refused_and_nothing_stored(pair):
    sid, data = share(5)
    lying = PutRequest(id=hashlib.sha256(b"other").digest(), file=FILE, lease=LEASE, size=len(data))
    with trio.fail_after(10):
        reply = await pair.raw(wire.frame(wire.encode(lying)), data)
        assert reply.code == "bad_request" and reply.message.startswith("hash:")
        with pytest.raises(PeerError):
            await pair.transport.fetch(pair.peer, lying.id)
    assert pair.store.statistics().shares == 0


@pytest.mark.live
async def test_truncated_upload_is_refused_and_nothing_stored(pair):
    sid, data = share(6)
    header = PutRequest(id=sid, file=FILE, lease=LEASE, size=len(data))
    with trio.fail_after(10):
        reply = await pair.raw(wire.frame(wire.encode(header)), data[: len(data) // 2])
    assert reply.code == "bad_request" and reply.message.startswith("truncated:")
    assert pair.store.statistics().shares == 0
    assert pair.store.has([sid]) == [False]


@pytest.mark.live
async def test_oversized_and_malformed_headers_are_refused(pair):
    too_big = PutRequest(id=FILE, file=FILE, lease=LEASE, size=1)
    fields = wire.to_wire(too_big) | {"size": 64 << 20}
    import msgpack

    cases = [
        wire.encode_varint(10 << 20) + b"x" * 100,  # frame length far over the 64 KiB limit
        wire.frame(msgpack.packb(fields, use_bin_type=True)),  # share over 16 MiB
        wire.frame(msgpack.packb(wire.to_wire(too_big) | {"extra": 1}, use_bin_type=True)),
        wire.frame(wire.encode(FetchRequest(id=b"short", offset=0, length=0))),
        wire.frame(b"\xc1 not msgpack"),
    ]
    with trio.fail_after(20):
        for raw in cases:
            reply = await pair.raw(raw)
            assert reply is not None and reply.code == "bad_request", raw[:20]
        # the server is still serving
        sid, data = share(7, 1000)
        await pair.transport.store(pair.peer, sid, data, ShareMeta(FILE, LEASE))
    assert pair.store.statistics().shares == 1
    assert pair.server.statistics().bad_requests == len(cases)


@pytest.mark.live
async def test_full_server_answers_busy(tmp_path):
    store = ShareStore(tmp_path / "a", quota_bytes=1 << 24, durable=False)
    server = ShareServer(store, config=ServerConfig(max_transfers=1, body_timeout=5))
    async with open_host(create_new_key_pair(), LOOPBACK) as a, open_host(
        create_new_key_pair(), LOOPBACK
    ) as b:
        a.set_handler(PROTOCOL, lambda s: server.handle(s, s.peer_id))
        transport = Libp2pShareTransport(b)
        with trio.fail_after(10):
            await b.connect(a.peer_id, a.transport_addrs())
            sid, data = share(8)
            # an upload that announces its body and stalls holds the only transfer slot
            stalled = await b.open_stream(a.peer_id, PROTOCOL)
            header = PutRequest(id=sid, file=FILE, lease=LEASE, size=len(data))
            await stalled.send_all(wire.frame(wire.encode(header)))
            await wait_for(lambda: server.statistics().transfers == 1)
            with pytest.raises(ShareRefused) as busy:
                await transport.store(peer_id_bytes(a.peer_id), sid, data, ShareMeta(FILE, 1))
            assert busy.value.code == "busy"
            await stalled.reset()
            await wait_for(lambda: server.statistics().transfers == 0)  # stalled upload dropped
            await transport.store(peer_id_bytes(a.peer_id), sid, data, ShareMeta(FILE, 1))
    assert store.statistics().shares == 1
    store.close()


@pytest.mark.live
async def test_cancelled_exchanges_leave_the_connection_usable(pair):
    """Callers cancel fetches all the time (a get drops the ones it no longer needs)."""
    t, peer = pair.transport, pair.peer
    sid, data = share(12, 1_500_000)
    rng = random.Random(0)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(t.run)
            await t.store(peer, sid, data, ShareMeta(FILE, LEASE))
            for _ in range(20):
                with trio.move_on_after(rng.uniform(0, 0.05)):
                    await t.fetch(peer, sid)
            assert await t.fetch(peer, sid) == data
            nursery.cancel_scope.cancel()
    assert pair.b.connected_peers() == [pair.a.peer_id]


def rot(store: ShareStore, share_id: bytes) -> bytes:
    """Flip one byte of a held share inside LMDB, as disk rot would; return the rotten bytes."""
    with store._env.begin(write=True, db=store._shares) as txn:
        value = bytearray(txn.get(share_id))
        value[len(value) // 2] ^= 0xFF
        txn.put(share_id, bytes(value))
    return bytes(value)


@pytest.mark.live
async def test_a_rotten_share_is_served_as_stored_and_dropped_once_reported(pair):
    t, peer = pair.transport, pair.peer
    sid, data = share(13)
    good, good_data = share(14)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(t.run)
            await t.store(peer, sid, data, ShareMeta(FILE, LEASE))
            await t.store(peer, good, good_data, ShareMeta(FILE, LEASE))
            rotten = rot(pair.store, sid)
            # Holders do not hash what they serve: the reader does, and reports.
            assert await t.fetch(peer, sid) == rotten != data
            t.report_corrupt(peer, sid)
            await wait_for(lambda: pair.server.statistics().corrupt == 1)
            assert pair.store.has([sid, good]) == [False, True]
            assert pair.store.statistics().hash_failures == 1
            assert t.statistics().corrupt_reports == 1
            # A check of a whole share leaves it; of one not held says so.
            assert await t.check(peer, good) is True
            assert await t.check(peer, sid) is False
            assert pair.server.statistics().corrupt == 1
            # Audits still hash first: a rotten share cannot be proven.
            await t.store(peer, sid, data, ShareMeta(FILE, LEASE))
            rot(pair.store, sid)
            with pytest.raises(ShareRefused) as refused:
                await t.audit(peer, sid, 0, 100, bytes(32))
            assert refused.value.reason == "corrupt"
            nursery.cancel_scope.cancel()


async def test_local_requests_use_the_same_checks(tmp_path):
    store = ShareStore(tmp_path / "a", quota_bytes=500_000, durable=False)
    server = ShareServer(store)
    async with open_host(create_new_key_pair(), LOOPBACK) as a:
        transport = Libp2pShareTransport(a, local=server)
        me = transport.me
        sid, data = share(9)
        with trio.fail_after(10):
            await transport.store(me, sid, data, ShareMeta(FILE, LEASE))
            assert await transport.fetch(me, sid) == data
            assert await transport.has(me, [sid]) == [True]
            with pytest.raises(ShareRefused) as refused:
                await transport.store(me, *share(10), ShareMeta(FILE, LEASE))
            assert refused.value.reason == "quota"
            with pytest.raises(ShareRefused):
                await transport.store(me, FILE, data, ShareMeta(FILE, LEASE))
    assert store.statistics().shares == 1
    store.close()


class FullDisk(ShareStore):
    """A store whose disk is full: LMDB's commit fails, as measured on a full tmpfs."""

    def put(self, *args, **kwargs):
        raise StoreWriteFailed("share store write failed: mdb_txn_commit: Input/output error")


async def test_a_full_disk_is_a_refusal_the_putting_node_routes_around(tmp_path):
    store = FullDisk(tmp_path / "a", quota_bytes=500_000, durable=False)
    server = ShareServer(store)
    sid, data = share(11)
    with pytest.raises(ShareRefused) as refused:  # a PeerError: raid tries the next holder
        await server.put_local(sid, data, FILE, LEASE)
    assert refused.value.code == "refused" and refused.value.reason == "disk"
    assert server.statistics().disk_refusals == 1 and server.statistics().stored == 0
    store.close()


@pytest.mark.live
async def test_raid_round_trip_over_libp2p(tmp_path):
    """put_file/get_file over three real hosts, each serving its own store."""
    params = raid.erasure.ErasureParams(k=2, n=3, segment_size=100_000)
    src = tmp_path / "src"
    src.write_bytes(random.Random(11).randbytes(350_000))
    stores = [ShareStore(tmp_path / f"s{i}", quota_bytes=1 << 24, durable=False) for i in range(3)]
    servers = [ShareServer(s) for s in stores]
    async with open_host(create_new_key_pair(), LOOPBACK) as h0, open_host(
        create_new_key_pair(), LOOPBACK
    ) as h1, open_host(create_new_key_pair(), LOOPBACK) as h2:
        hosts = [h0, h1, h2]
        for host, server in zip(hosts, servers, strict=True):
            host.set_handler(PROTOCOL, lambda s, srv=server: srv.handle(s, s.peer_id))
        with trio.fail_after(30):
            for other in hosts[1:]:
                await h0.connect(other.peer_id, other.transport_addrs())
            transport = Libp2pShareTransport(h0, local=servers[0])
            ring = raid.Ring.from_peers(peer_id_bytes(h.peer_id) for h in hosts)
            config = raid.RaidConfig(manifest_copies=3)
            # The transport must own its exchanges (as the node runs it): a get cancels the
            # fetches it no longer needs, and a cancelled py-libp2p write can break the whole
            # connection, after which every later exchange with that holder fails.
            async with trio.open_nursery() as nursery:
                await nursery.start(transport.run)
                put = await raid.put_file(src, transport, ring, lease_expiry=LEASE, params=params,
                                          config=config)
                out = tmp_path / "out"
                await raid.get_file(put.file_id, out, transport, ring, config=config)
                nursery.cancel_scope.cancel()
    assert out.read_bytes() == src.read_bytes()
    assert all(s.statistics().shares > 0 for s in stores)
    for s in stores:
        s.close()


@pytest.mark.live
async def test_a_holder_that_is_not_connected_is_dialled(tmp_path):
    store = ShareStore(tmp_path / "s", quota_bytes=1 << 24, durable=False)
    server = ShareServer(store)
    async with open_host(create_new_key_pair(), LOOPBACK) as a, open_host(
        create_new_key_pair(), LOOPBACK
    ) as b:
        b.set_handler(PROTOCOL, lambda s: server.handle(s, s.peer_id))
        asked: list[str] = []

        def addresses(name: str) -> list[str]:
            asked.append(name)
            return b.transport_addrs()

        transport = Libp2pShareTransport(a, addresses=addresses)
        sid, data = share(3)
        with trio.fail_after(30):
            assert not a.is_connected(b.peer_id)
            await transport.store(peer_id_bytes(b.peer_id), sid, data, ShareMeta(FILE, LEASE))
            assert a.is_connected(b.peer_id) and asked == [b.peer_id]
            assert await transport.has(peer_id_bytes(b.peer_id), [sid]) == [True]
        assert asked == [b.peer_id]  # connected now: no second dial
    store.close()


@pytest.mark.live
async def test_a_holder_that_cannot_be_dialled_is_not_dialled_again_at_once():
    """A read asks a holder that has gone for a share of every segment: one dial fails
    (py-libp2p takes ~0.7 s for it), and the exchanges waiting on it and those that follow
    within ``redial_after`` fail at once instead of dialling again."""
    async with open_host(create_new_key_pair(), LOOPBACK) as a:
        async with open_host(create_new_key_pair(), LOOPBACK) as b:
            gone, addrs = b.peer_id, b.transport_addrs()
        failed: list[str] = []

        async def fetch_fails(t: Libp2pShareTransport) -> None:
            with pytest.raises(PeerError):
                await t.fetch(peer_id_bytes(gone), share(5)[0])

        transport = Libp2pShareTransport(a, addresses=lambda name: addrs, dial_failed=failed.append)
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for _ in range(4):
                    nursery.start_soon(fetch_fails, transport)
            await fetch_fails(transport)
        assert failed == [gone]
        eager = Libp2pShareTransport(a, addresses=lambda name: addrs, dial_failed=failed.append,
                                     redial_after=0)
        with trio.fail_after(30):
            for _ in range(2):
                await fetch_fails(eager)
        assert failed == [gone] * 3


@pytest.mark.live
async def test_one_stream_carries_many_exchanges_until_the_holder_closes_it_idle(tmp_path):
    store = ShareStore(tmp_path / "s", quota_bytes=1 << 24, durable=False)
    server = ShareServer(store, config=ServerConfig(idle_timeout=0.3))
    async with open_host(create_new_key_pair(), LOOPBACK) as a, open_host(
        create_new_key_pair(), LOOPBACK
    ) as b:
        a.set_handler(PROTOCOL, lambda s: server.handle(s, s.peer_id))
        t, peer = Libp2pShareTransport(b), peer_id_bytes(a.peer_id)
        sid, data = share(4)
        with trio.fail_after(30):
            await b.connect(a.peer_id, a.transport_addrs())
            await t.store(peer, sid, data, ShareMeta(FILE, LEASE))  # opens the stream
            for _ in range(3):
                assert await t.fetch(peer, sid) == data
            assert await t.has(peer, [sid]) == [True]
            assert t.statistics().reused_streams == 4
            assert server.statistics().requests == 5
            await wait_for(lambda: server.statistics().idle_closed == 1)
            # the kept stream is closed by now: the store notices and runs on a fresh one
            other, more = share(5)
            await t.store(peer, other, more, ShareMeta(FILE, LEASE))
            assert await t.fetch(peer, other) == more
        stats = t.statistics()
        assert (stats.stale_streams, stats.failures, stats.reused_streams) == (1, 0, 5)
        assert store.get(other) == more
    store.close()


class _Chunks:
    """A byte stream that hands out the given chunks one read at a time, then EOF."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = list(chunks)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return self._chunks.pop(0) if self._chunks else b""


async def test_reader_splits_frames_and_counted_bytes_across_reads():
    body = wire.frame(wire.encode(wire.ErrorReply(code="x", message="y")), 1 << 16)
    raw = bytes(range(256)) * 40
    tail = wire.frame(wire.encode(wire.ErrorReply(code="z", message="w")), 1 << 16)
    stream = body + raw + tail
    cuts = [0, 3, len(body) + 7, len(body) + 4000, len(body) + len(raw) + 2, len(stream)]
    reader = Reader(_Chunks([stream[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]))
    assert await reader.frame() == body[1:]
    got = await reader.exactly(len(raw))
    assert got == raw and type(got) is bytes
    assert await reader.frame() == tail[1:]
    assert await reader.frame() is None
    assert reader.pending == 0 and reader.received == len(stream)


async def test_reader_reports_a_short_body_as_truncated():
    reader = Reader(_Chunks([b"abc", b"defg"]))
    with pytest.raises(TruncatedFrame):
        await reader.exactly(10)
    assert reader.pending == 7
