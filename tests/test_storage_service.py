"""The storage service on real libp2p hosts in this process: overlay ring, dialling, credits,
resume, quota persistence.

Each node is a :class:`StorageService` over a real host, LMDB store and zfec,
with a small fake node around it (host, config, data dir, peer book, service
lookup). The credits service is a recording fake of its one storage call.
"""

from __future__ import annotations

import random
import time
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from polling import poll_until

from poolai.mesh.errors import PeerUnreachable
from poolai.mesh.host import open_host
from poolai.mesh.links import DEFAULT_CONFIG
from poolai.mesh.overlay_net import DriverConfig, OverlayNode, scaled
from poolai.mesh.peer_ids import peer_id_bytes, peer_id_text
from poolai.mesh.peers import PeerBook
from poolai.node.context import NodeContext
from poolai.node.credits.receipts import EPOCH_S, MAX_AUDITS
from poolai.node.files.ring import RingSource, ring_of
from poolai.node.files.service import StorageService
from poolai.storage import integrity, placement
from poolai.storage.erasure import ErasureParams

pytestmark = pytest.mark.timeout(120)
LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
PARAMS = ErasureParams(k=2, n=4, segment_size=64_000)


@dataclass(frozen=True)
class FakeConfig:
    storage_quota: int = 64 << 20
    storage_lease: int = 86400
    storage_interval: int = 3600  # tests run upkeep themselves


class RecordingCredits:
    name = "credits"

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def storage_audited(self, **kwargs: Any) -> bytes:
        self.calls.append(kwargs)
        return b"k" * 32


def context(host, data_dir: Path, config: FakeConfig = FakeConfig()) -> NodeContext:
    return NodeContext(config, data_dir, host, PeerBook(host.peer_id))  # type: ignore[arg-type]


@asynccontextmanager
async def storage_mesh(tmp_path: Path, count: int, *, overlay: bool = False, star: bool = False,
                       configs: dict[int, FakeConfig] | None = None):
    """``count`` running storage services; all hosts connected to each other, or with
    ``star`` only to host 0 (then run ``overlay`` so the others find each other)."""
    async with AsyncExitStack() as stack:
        hosts = [await stack.enter_async_context(open_host(create_new_key_pair(), LOOPBACK))
                 for _ in range(count)]
        nodes = [context(h, tmp_path / f"n{i}", (configs or {}).get(i, FakeConfig()))
                 for i, h in enumerate(hosts)]
        with trio.fail_after(30):
            for i, a in enumerate(hosts):
                for b in hosts[i + 1 :] if not star or i == 0 else []:
                    await a.connect(b.peer_id, b.transport_addrs())
                    nodes[hosts.index(b)].book.add(a.peer_id, a.transport_addrs())
                    nodes[i].book.add(b.peer_id, b.transport_addrs())
            for i, a in enumerate(hosts):  # the ring takes members only: identified peers
                for b in hosts[i + 1 :] if not star or i == 0 else []:
                    await a.wait_identified(b.peer_id)
                    await b.wait_identified(a.peer_id)
        async with trio.open_nursery() as nursery:
            overlays: list[OverlayNode | None] = [None] * len(nodes)
            if overlay:
                for i, node in enumerate(nodes):
                    assert node.book is not None
                    overlays[i] = OverlayNode(node.host, node.book, config=scaled(DEFAULT_CONFIG, 0.05),
                                              driver=DriverConfig(tick=0.1))
                    await nursery.start(overlays[i].run)
            services = [StorageService(node, overlay=o) for node, o in zip(nodes, overlays, strict=True)]
            for service in services:
                await nursery.start(service.run)
            try:
                yield nodes, services
            finally:
                nursery.cancel_scope.cancel()


async def wait_for(condition) -> None:
    """Overlay state, which has no event to wait on (the caller's fail_after bounds it)."""
    await poll_until(condition)

def write(tmp_path: Path, name: str, size: int, seed: int) -> Path:
    path = tmp_path / name
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


@pytest.mark.live
async def test_ring_comes_from_the_overlay_and_unconnected_holders_are_dialled(tmp_path):
    """Star-connected hosts: the overlay tells each node about all the others, a put
    from a leaf stores on holders it was not connected to, and another leaf reads it back."""
    async with storage_mesh(tmp_path, 6, overlay=True, star=True) as (nodes, services):
        everyone = ring_of(services[0].rings.me, (s.rings.me for s in services))
        with trio.fail_after(60):
            await wait_for(lambda: all(s.ring_view() == everyone for s in services))
            src = write(tmp_path, "src", 200_000, 1)
            put = await services[5].put(src, params=PARAMS)
            holders = {p for seg in range(put.manifest.segment_count)
                       for p in placement.segment_holders(everyone, put.file_id, seg, PARAMS.n)}
            assert len(holders) > 2  # more than the putter and the hub it was connected to
            stored = [s.rings.me for s in services if s.store.statistics().shares]
            assert holders <= set(stored)
            out = tmp_path / "out"
            await services[4].get(put.file_id, out)
        assert out.read_bytes() == src.read_bytes()


class WalkHost:
    def __init__(self, me: bytes, dead: frozenset[bytes] = frozenset()) -> None:
        self.peer_id = peer_id_text(me)
        self.dead, self.dialled = dead, []

    def connected_peers(self) -> list[str]:
        return []

    def member_peers(self) -> list[str]:
        return []

    def peer_addrs(self, peer: str) -> list[str]:
        return ["/ip4/127.0.0.1/tcp/1"]

    async def connect(self, peer: str, addrs: list[str]) -> None:
        self.dialled.append(peer)
        if peer_id_bytes(peer) in self.dead:
            raise PeerUnreachable("connection refused")


class WalkOverlay:
    """An overlay that knows its 3 successors; ``neighbours_of`` answers from the full ring."""

    def __init__(self, ring: placement.Ring, me: bytes, dead: set[bytes]) -> None:
        self.ring, self.dead, self.asked = ring, dead, []
        me_at = ring.peers.index(me)
        near = [ring.peers[(me_at + j) % len(ring)] for j in (1, 2, 3)]
        self.table = type("T", (), {"members": lambda _: [_Info(p) for p in near]})()

    async def neighbours_of(self, peer: bytes):
        self.asked.append(peer)
        if peer in self.dead:
            return ()
        at = self.ring.peers.index(peer)
        return tuple(_Info(self.ring.peers[(at + j) % len(self.ring)]) for j in range(1, 9)
                     if self.ring.peers[(at + j) % len(self.ring)] not in self.dead)


@dataclass(frozen=True)
class _Info:
    peer_id: bytes

    @property
    def position(self) -> int:
        return placement.ring_position(self.peer_id)


async def test_ring_walk_finds_every_peer_with_few_requests_and_skips_dead_ones():
    ids = [peer_id_bytes(peer_id_text_of(i)) for i in range(60)]
    full = ring_of(ids[0], ids)
    dead = {full.peers[20], full.peers[21]}
    overlay = WalkOverlay(full, ids[0], dead)
    source = RingSource(WalkHost(ids[0]), overlay, None)  # type: ignore[arg-type]
    assert len(source.view()) == 4  # before the walk: itself and its successor list
    with trio.fail_after(10):
        ring = await source.refresh()
    assert set(ring.peers) == set(full.peers) - dead
    assert len(overlay.asked) <= 60 // 8 + 4
    again = len(overlay.asked)
    await source.refresh()  # cached
    assert len(overlay.asked) == again
    with trio.fail_after(10):
        await source.refresh(force=True)
    assert not dead & set(overlay.asked[again:])  # marked unreachable: not asked again


async def test_members_that_do_not_answer_are_left_out_until_their_time_is_up():
    """The overlay still lists two killed peers; a verifying refresh dials the members it
    is not connected to and leaves out those that fail, for ``unreachable_s``."""
    ids = [peer_id_bytes(peer_id_text_of(i)) for i in range(12)]
    full = ring_of(ids[0], ids)
    dead = frozenset({full.peers[3], full.peers[7]})
    now = [1000.0]
    host = WalkHost(ids[0], dead)
    source = RingSource(host, WalkOverlay(full, ids[0], set()), None,  # type: ignore[arg-type]
                        clock=lambda: now[0], unreachable_s=60)
    with trio.fail_after(10):
        assert len(await source.refresh()) == 12  # the overlay's word alone
        ring = await source.refresh(force=True, verify=True)
    assert set(ring.peers) == set(full.peers) - dead and len(host.dialled) == 11
    now[0] += 61
    assert len(source.view()) == 12  # forgiven: the overlay may know better by now


async def test_reads_keep_peers_that_left_as_absent_for_departed_s():
    """Two members stop answering: writes leave them out at once; reads keep them on the
    ring, marked absent, for ``departed_s`` (so holders are computed as when the shares
    were put), then forget them too."""
    ids = [peer_id_bytes(peer_id_text_of(i)) for i in range(12)]
    full = ring_of(ids[0], ids)
    dead = frozenset({full.peers[3], full.peers[7]})
    now = [1000.0]
    source = RingSource(WalkHost(ids[0], dead), WalkOverlay(full, ids[0], set()), None,  # type: ignore[arg-type]
                        clock=lambda: now[0], unreachable_s=3600, departed_s=600)
    with trio.fail_after(10):
        assert source.reading_view() == source.view()  # nobody has left
        await source.refresh()
        assert source.reading_view().absent == frozenset()
        live = await source.refresh(force=True, verify=True)
    reading = source.reading_view()
    assert set(live.peers) == set(full.peers) - dead and not live.absent
    assert reading.peers == full.peers and reading.absent == dead
    assert reading.present() == live
    overlay = source.overlay
    overlay.asked.clear()
    with trio.fail_after(10):
        assert await source.refresh(force=True) == live
    assert overlay.asked and not dead & set(overlay.asked)  # the walk steps over them
    now[0] += 601
    assert source.reading_view() == source.view() == live


def peer_id_text_of(i: int) -> str:
    from libp2p.crypto.ed25519 import create_new_key_pair as make
    from libp2p.peer.id import ID

    return str(ID.from_pubkey(make(i.to_bytes(32, "big")).public_key))


@pytest.mark.live
async def test_passed_audits_are_reported_once_per_holder_after_the_epoch(tmp_path):
    async with storage_mesh(tmp_path, 5) as (nodes, services):
        owner = services[0]
        credits = RecordingCredits()
        services[0].credits = credits
        epoch = 500_000
        owner.clock = lambda: epoch * EPOCH_S + 10.0
        with trio.fail_after(60):
            put = await owner.put(write(tmp_path, "src", 300_000, 2), params=PARAMS)
            for _ in range(3):
                await owner.upkeep()
            assert credits.calls == []  # the epoch is not over
            services[1].clock = owner.clock
            await services[1].upkeep()  # a node with no credits service and no files: no error
            owner.clock = lambda: (epoch + 1) * EPOCH_S + 1.0
            await owner.upkeep()
        by_holder = {c["holder"]: c for c in credits.calls}
        assert len(by_holder) == len(credits.calls) >= 2  # once per holder
        stores = {n.host.peer_id: s.store for n, s in zip(nodes, services, strict=True)}
        for call in credits.calls:
            assert call["holder"] != nodes[0].host.peer_id and call["epoch"] == epoch
            assert 1 <= len(call["audits"]) <= MAX_AUDITS and call["shares"] >= 1
            assert call["bytes_held"] >= call["shares"]
            held = stores[call["holder"]]
            for ev in call["audits"]:
                assert epoch * EPOCH_S <= ev.at < (epoch + 1) * EPOCH_S
                share = held.get(ev.share_id)
                assert ev.digest == integrity.audit_digest(ev.nonce, share[ev.offset : ev.offset + ev.length])
                assert ev.share_id in {put.manifest.share_id(s, i) for s in range(put.manifest.segment_count)
                                       for i in range(PARAMS.n)}
        with trio.fail_after(30):
            await owner.upkeep()  # the epoch was reported: nothing again
        assert len(credits.calls) == len(by_holder)


@pytest.mark.live
async def test_get_resumes_from_a_verified_prefix_and_from_an_offset(tmp_path):
    async with storage_mesh(tmp_path, 4) as (nodes, services):
        src = write(tmp_path, "src", 400_000, 3)
        with trio.fail_after(60):
            put = await services[0].put(src, params=PARAMS)
            out = tmp_path / "out"
            out.write_bytes(src.read_bytes()[:150_000] + b"garbage")  # 2 good segments, then junk
            done: list[int] = []
            await services[1].get(put.file_id, out, resume=True,
                                  progress=lambda phase, d, t: done.append(d))
            assert out.read_bytes() == src.read_bytes()
            assert done[0] == 2 * PARAMS.segment_size  # started after the verified prefix
            tail = tmp_path / "tail"
            await services[2].get(put.file_id, tail, from_offset=300_000)
        data = tail.read_bytes()
        assert data[256_000:] == src.read_bytes()[256_000:]  # from the segment holding the offset


async def test_set_quota_holds_across_restart_until_the_configured_quota_changes(tmp_path):
    async with storage_mesh(tmp_path, 1) as (nodes, services):
        await services[0].set_quota(5 << 20)
    async with AsyncExitStack() as stack:
        host = await stack.enter_async_context(open_host(create_new_key_pair(), LOOPBACK))
        for config, expected in ((FakeConfig(), 5 << 20), (FakeConfig(storage_quota=9 << 20), 9 << 20)):
            service = StorageService(context(host, tmp_path / "n0", config))
            async with trio.open_nursery() as nursery:
                await nursery.start(service.run)
                assert service.quota == service.store.quota_bytes == expected
                assert service.status()["quota_bytes"] == expected
                nursery.cancel_scope.cancel()


async def test_audits_not_yet_claimed_survive_a_restart(tmp_path):
    async with storage_mesh(tmp_path, 4) as (nodes, services):
        owner = services[0]
        owner.clock = lambda: 500_000 * EPOCH_S + 10.0
        with trio.fail_after(60):
            await owner.put(write(tmp_path, "src", 300_000, 4), params=PARAMS)
            await owner.upkeep()
        saved = owner.ledger.to_bytes()
        assert len(owner.ledger) >= 1  # holders audited in an epoch not over yet
    async with AsyncExitStack() as stack:
        host = await stack.enter_async_context(open_host(create_new_key_pair(), LOOPBACK))
        service = StorageService(context(host, tmp_path / "n0"))
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            assert service.ledger.to_bytes() == saved
            nursery.cancel_scope.cancel()


@pytest.mark.live
async def test_cli_get_resumes_a_partial_download_through_the_api(tmp_path, capsys):
    """Two in-process nodes with their local APIs; ``poolai get`` finds a part file and asks
    only for the rest (HTTP Range), which the node fetches from the segment holding it."""
    from poolai.node import config as config_mod
    from poolai.node.cli import main as cli
    from poolai.node.node import open_node

    def config(name: str, **flags: Any):
        return config_mod.load(tmp_path / name, {"listen": LOOPBACK, "api_port": 0, "overlay_scale": 0.05,
                                                 **flags}, environ={})

    src = write(tmp_path, "src", 600_000, 4)
    data = src.read_bytes()
    with trio.fail_after(90):
        async with open_node(config("a")) as a, open_node(config("b", bootstrap=[a.host.addrs()[0]])) as b:
            await wait_for(lambda: len(b.files.ring_view()) == 2)
            put = await a.files.put(src, params=PARAMS)
            file_id = integrity.to_hex(put.file_id)
            out = tmp_path / "out"
            part = tmp_path / f"out.{file_id[:16]}.part"
            # A part file whose first byte differs from the file: if the CLI kept it (resumed)
            # rather than downloading everything again, that byte is still different.
            part.write_bytes(bytes([data[0] ^ 1]) + data[1:200_000])
            argv = ["--data-dir", str(tmp_path / "b"), "get", file_id, "-o", str(out)]
            assert await trio.to_thread.run_sync(cli.main, argv) == 0
            assert out.read_bytes() == bytes([data[0] ^ 1]) + data[1:] and not part.exists()

            part.write_bytes(data + b"x")  # longer than the file: not this file's prefix
            assert await trio.to_thread.run_sync(cli.main, argv) == cli.EXIT_ERROR
            assert "longer than the file" in capsys.readouterr().err
            assert not part.exists()
            assert await trio.to_thread.run_sync(cli.main, argv) == 0
            assert out.read_bytes() == data


@pytest.mark.live
async def test_api_download_sends_a_range_from_memory_and_stops_when_its_client_leaves(tmp_path):
    """``GET /api/files/{id}`` hands verified segments over without a scratch file: a Range
    starting inside a segment gets exactly the bytes from there; a client that leaves after
    its first chunk stops the get long before the file's shares are all fetched."""
    import httpx

    from poolai.node import config as config_mod
    from poolai.node.node import open_node

    def config(name: str, **flags: Any):
        return config_mod.load(tmp_path / name, {"listen": LOOPBACK, "api_port": 0, "overlay_scale": 0.05,
                                                 **flags}, environ={})

    src = write(tmp_path, "src", 3_000_000, 6)  # 47 segments of PARAMS.segment_size
    data = src.read_bytes()

    def download(url: str, headers: dict[str, str]) -> tuple[int, bytes]:
        reply = httpx.get(url, headers=headers, timeout=30)
        return reply.status_code, reply.content

    def leave_after_one_chunk(url: str) -> int:
        with httpx.stream("GET", url, timeout=30) as reply:
            return len(next(reply.iter_raw(PARAMS.segment_size)))

    with trio.fail_after(90):
        async with open_node(config("a")) as a, open_node(config("b", bootstrap=[a.host.addrs()[0]])) as b:
            storage = b.files
            await wait_for(lambda: len(storage.ring_view()) == 2)
            put = await a.files.put(src, params=PARAMS)
            url = f"{b.api_url}/api/files/{integrity.to_hex(put.file_id)}"
            offset = 5 * PARAMS.segment_size + 12_345
            status, body = await trio.to_thread.run_sync(download, url, {"Range": f"bytes={offset}-"})
            assert status == 206 and body == data[offset:]
            assert not (tmp_path / "b" / "storage" / "downloads").exists()

            before = storage.transport.statistics().requests
            assert await trio.to_thread.run_sync(leave_after_one_chunk, url) > 0
            await wait_for(lambda: storage.gets_running == 0)
            fetched = storage.transport.statistics().requests - before
            assert fetched < put.manifest.segment_count * PARAMS.k // 2
            gets = [op for op in storage.recent_ops if op["op"] == "get"]
            assert [(op["bytes"], op["segments"]) for op in gets] == \
                [(len(data) - 5 * 64_000, put.manifest.segment_count - 5)]


@pytest.mark.live
async def test_api_check_reads_the_whole_file_and_names_a_segment_it_cannot_rebuild(tmp_path):
    """``GET /api/files/{id}/check`` fetches and verifies k shares of every segment, sends no
    file byte to its client, and fails (503, the segment named) once a segment is lost."""
    import json

    import httpx

    from poolai.node import config as config_mod
    from poolai.node.node import open_node

    def config(name: str, **flags: Any):
        return config_mod.load(tmp_path / name, {"listen": LOOPBACK, "api_port": 0, "overlay_scale": 0.05,
                                                 **flags}, environ={})

    src = write(tmp_path, "src", 1_000_000, 7)  # 16 segments of PARAMS.segment_size

    def get(url: str) -> httpx.Response:
        return httpx.get(url, timeout=30)

    with trio.fail_after(90):
        async with open_node(config("a")) as a, open_node(config("b", bootstrap=[a.host.addrs()[0]])) as b:
            storage = b.files
            await wait_for(lambda: len(storage.ring_view()) == 2)
            put = await a.files.put(src, params=PARAMS)
            m = put.manifest
            url = f"{b.api_url}/api/files/{integrity.to_hex(put.file_id)}/check"
            fetched = storage.transport.statistics().requests
            reply = await trio.to_thread.run_sync(get, url)
            assert reply.status_code == 200, reply.text
            body = reply.json()
            assert (body["size"], body["segments"], body["k"], body["n"]) == (
                1_000_000, m.segment_count, 2, 4)
            assert body["seconds"] > 0 and body["MBps"] > 0
            # b holds half the shares; the rest came from a, every one hashed on arrival
            assert storage.transport.statistics().requests - fetched >= m.segment_count

            lines = (await trio.to_thread.run_sync(get, url + "?progress=1")).text.splitlines()
            done = json.loads(lines[-1])
            assert done["event"] == "done"
            assert (done["file_id"], done["size"]) == (body["file_id"], body["size"])

            for node in (a, b):  # segment 5 loses every share
                for share_id in m.segment_share_ids(5):
                    await trio.to_thread.run_sync(node.files.store.delete, share_id)
            reply = await trio.to_thread.run_sync(get, url)
            assert reply.status_code == 503
            assert reply.json()["error"]["code"] == "unavailable"
            assert "segment 5" in reply.json()["error"]["message"]


@pytest.mark.live
async def test_a_credits_service_that_refuses_does_not_stop_upkeep(tmp_path):
    from poolai.node.credits.receipts import ReceiptRejected

    class Refusing(RecordingCredits):
        async def storage_audited(self, **kwargs: Any) -> bytes:
            self.calls.append(kwargs)
            raise ReceiptRejected("invalid_claim", "refused for the test")

    async with storage_mesh(tmp_path, 3) as (nodes, services):
        owner, credits = services[0], Refusing()
        services[0].credits = credits
        owner.clock = lambda: 500_000 * EPOCH_S + 5.0
        with trio.fail_after(60):
            await owner.put(write(tmp_path, "src", 100_000, 5), params=PARAMS)
            await owner.upkeep()
            owner.clock = lambda: 500_001 * EPOCH_S + 5.0
            report = await owner.upkeep()
        assert credits.calls and report.credit_claims == 0 and owner.credit_claims == 0


@pytest.mark.live
async def test_a_holder_grants_what_peers_keep_for_it_and_a_refused_share_goes_elsewhere(tmp_path):
    """Node 3 (4 MiB quota) grants each peer 256 KiB until it keeps node 3's shares: node
    0's put of 2 MiB (1 MiB of shares per holder) is refused there with ``grant`` and
    succeeds on the others; once node 3 has put a file of its own and found its holders,
    they earn twice what they keep for it, and node 0's next put fits."""
    small = FakeConfig(storage_quota=4 << 20)
    async with storage_mesh(tmp_path, 4, configs={3: small}) as (nodes, services):
        holder, putter = services[3], services[0]
        me = nodes[0].host.peer_id
        with trio.fail_after(90):
            first = await putter.put(write(tmp_path, "a", 2 << 20, 10), params=PARAMS)
            assert first.shares_failed > 0 and holder.server.statistics().grant_refusals > 0
            assert putter.transport.statistics().refusals.get("grant", 0) > 0
            await holder.refresh_statistics()
            grants = holder.status()["grants"]
            row = next(r for r in grants["top"] if r["peer"] == me)
            assert row["used_bytes"] <= row["grant_bytes"] == (4 << 20) // 16 and row["credit_bytes"] == 0
            await putter.get(first.file_id, tmp_path / "a.out")
            assert (tmp_path / "a.out").read_bytes() == (tmp_path / "a").read_bytes()
            own = await holder.put(write(tmp_path, "b", 600_000, 11), params=PARAMS)
            await holder.upkeep()
            grants = holder.status()["grants"]
            row = next(r for r in grants["top"] if r["peer"] == me)
            kept = _kept(services[0].store, own.manifest)
            assert row["credit_bytes"] == kept > 0
            assert row["grant_bytes"] == (4 << 20) // 16 + 2 * kept
        # what node 0 keeps there is charged to it, each lease capped at 31 days
        m = first.manifest
        ids = [m.file_id()] + [m.share_id(s, i) for s in range(m.segment_count) for i in range(m.n)]
        records = [holder.store.record(i) for i in ids]
        held = [r for r in records if r is not None]
        assert held and {r.owner for r in held} == {me}
        assert sum(r.size for r in held) == row["used_bytes"]
        assert all(r.lease_expiry <= int(time.time()) + 31 * 86400 for r in held)


def _kept(store, m) -> int:
    ids = [m.share_id(s, i) for s in range(m.segment_count) for i in range(m.n)]
    return sum(store.record(i).size for i, held in zip(ids, store.has(ids), strict=True) if held)
