"""Upkeep (locate, prove, heal, renew) and the node's file registry, without a network.

The transport routes each peer to an in-process ``ShareServer`` through its
``*_local`` entry points, so the same checks run as on the wire. A peer can
"forget" shares while still claiming them in ``has`` (what a rotted or lying
holder looks like to everyone else).
"""

from __future__ import annotations

import random
import time

import pytest
import trio
from racing import race

from poolai.node.files.catalog import FileEntry, FileRegistry
from poolai.storage import integrity, raid, upkeep
from poolai.storage.erasure import ErasureParams
from poolai.storage.placement import Ring
from poolai.storage.raid import RaidConfig, ShareMeta
from poolai.storage.server import ShareServer
from poolai.storage.store import ShareStore

pytestmark = pytest.mark.timeout(60)
PARAMS = ErasureParams(k=2, n=4, segment_size=20_000)
CONFIG = RaidConfig(manifest_copies=3)
LEASE = int(time.time()) + 30 * 86400  # holders cap leases at 400 days from now


async def inline(fn, *args):
    await trio.lowlevel.checkpoint()
    return fn(*args)


class LocalNet:
    def __init__(self, tmp_path, count: int) -> None:
        self.ids = [b"peer-%02d" % i for i in range(count)]
        self.stores = {p: ShareStore(tmp_path / p.decode(), quota_bytes=1 << 24, durable=False)
                       for p in self.ids}
        self.servers = {p: ShareServer(s, offload=inline) for p, s in self.stores.items()}
        self.forgetful: dict[bytes, set[bytes]] = {}

    @property
    def ring(self) -> Ring:
        return Ring.from_peers(self.ids)

    def forget(self, peer: bytes, share_id: bytes) -> None:
        self.stores[peer].delete(share_id)
        self.forgetful.setdefault(peer, set()).add(share_id)

    async def store(self, peer, share_id, data, meta: ShareMeta) -> None:
        self.forgetful.get(peer, set()).discard(share_id)
        await self.servers[peer].admit_local(share_id, len(data))
        await self.servers[peer].put_local(share_id, data, meta.file_id, meta.lease_expiry)

    async def fetch(self, peer, share_id) -> bytes:
        return (await self.servers[peer].fetch_local(share_id))[1]

    async def has(self, peer, share_ids):
        held = await self.servers[peer].has_local(share_ids)
        lies = self.forgetful.get(peer, set())
        return [h or sid in lies for h, sid in zip(held, share_ids, strict=True)]

    async def audit(self, peer, share_id, offset, length, nonce) -> bytes:
        return await self.servers[peer].audit_local(share_id, offset, length, nonce)

    def report_corrupt(self, peer, share_id) -> None:
        raise AssertionError(f"{peer!r} sent a corrupt share: these holders never do")

    async def renew(self, peer, share_ids, lease_expiry):
        return await self.servers[peer].renew_local(share_ids, lease_expiry)

    def close(self) -> None:
        for store in self.stores.values():
            store.close()


@pytest.fixture
async def stored(tmp_path):
    net = LocalNet(tmp_path, 6)
    src = tmp_path / "src"
    src.write_bytes(random.Random(5).randbytes(70_000))  # 4 segments, the last one short
    result = await raid.put_file(src, net, net.ring, lease_expiry=1000, params=PARAMS, config=CONFIG,
                                 offload=inline)
    yield net, result.manifest
    net.close()


async def test_locate_finds_every_share_and_follows_the_walk(stored):
    net, m = stored
    found = await upkeep.locate(net, net.ring, m)
    assert len(found) == m.segment_count * m.n
    holder = found[(1, 0)]
    other = next(p for p in net.ids if p not in {found[(1, i)] for i in range(m.n)})
    data = await net.fetch(holder, m.share_id(1, 0))
    net.stores[holder].delete(m.share_id(1, 0))
    assert (1, 0) not in await upkeep.locate(net, net.ring, m)
    await net.store(other, m.share_id(1, 0), data, ShareMeta(m.file_id(), LEASE))
    assert (await upkeep.locate(net, net.ring, m))[(1, 0)] == other  # found further along


async def test_verify_proves_every_holder_and_heals_one_that_forgot(stored):
    net, m = stored
    found = await upkeep.locate(net, net.ring, m)
    holders = tuple(found[(0, i)] for i in range(m.n))
    check = await upkeep.verify_segment(net, m, 0, holders, rng=random.Random(1), offload=inline,
                                        clock=lambda: 7200.5)
    assert check.verified == (True,) * m.n and check.health(m.k) == "healthy"
    assert [(p.index, p.holder) for p in check.proofs] == list(enumerate(holders))
    for p in check.proofs:  # every holder was challenged, and each proof checks out
        held = net.stores[p.holder].get(p.share_id)
        assert p.passed and p.at == 7200.5 and p.share_size == len(held)
        assert p.digest == integrity.audit_digest(p.nonce, held[p.offset : p.offset + p.length])

    net.forget(holders[3], m.share_id(0, 3))  # still claims it in `has`
    check = await upkeep.verify_segment(net, m, 0, holders, rng=random.Random(2), offload=inline,
                                        heal_lease=LEASE)
    assert check.verified[3] is False and check.healed == (3,)
    assert [p.passed for p in check.proofs] == [True, True, True, False]
    assert check.health(m.k) == "degraded"
    assert net.stores[holders[3]].has([m.share_id(0, 3)]) == [True]
    again = await upkeep.verify_segment(net, m, 0, holders, rng=random.Random(3), offload=inline)
    assert again.verified == (True,) * m.n


async def test_segment_with_fewer_than_k_shares_is_lost(stored):
    net, m = stored
    holders = (None, None, None, (await upkeep.locate(net, net.ring, m))[(2, 3)])
    check = await upkeep.verify_segment(net, m, 2, holders, rng=random.Random(4), offload=inline)
    assert check.verified == (None, None, None, True) and check.health(m.k) == "lost"


@pytest.mark.parametrize("holders, health, spread, most", [
    ((b"a", b"b", b"c", b"d"), "healthy", 4, 1),
    ((b"a", b"b", b"a", b"b"), "concentrated", 2, 2),  # 2-of-4 on two peers
    ((b"me",) * 4, "concentrated", 1, 4),  # put while alone: every share on this node
    ((b"a", b"b", None, b"c"), "degraded", 3, 1),
    ((b"a", None, None, None), "lost", 1, 1),
])
def test_health_counts_distinct_holders_not_shares(holders, health, spread, most):
    check = upkeep.SegmentCheck(0, holders, (None,) * 4)
    assert (check.health(2), check.spread, check.most_on_one) == (health, spread, most)


async def test_renew_extends_every_lease_and_never_shortens(stored):
    net, m = stored
    renewed = await upkeep.renew_file(net, net.ring, m, LEASE, manifest_copies=CONFIG.manifest_copies)
    held = [(p, sid) for p in net.ids for sid in net.stores[p].share_ids()]
    assert renewed == len(held)
    assert all(net.stores[p].record(sid).lease_expiry == LEASE for p, sid in held)
    await upkeep.renew_file(net, net.ring, m, 5, manifest_copies=CONFIG.manifest_copies)
    assert all(net.stores[p].record(sid).lease_expiry == LEASE for p, sid in held)


async def test_registry_survives_a_reload_and_skips_a_bad_entry(stored, tmp_path):
    _, m = stored
    registry = FileRegistry(tmp_path / "files")
    registry.load()
    registry.put(FileEntry(m.file_id(), m, pinned=True, lease_expiry=LEASE, added=1))
    other = FileRegistry(tmp_path / "files")
    assert other.load() == 1 and other.get(m.file_id()) == registry.get(m.file_id())
    (tmp_path / "files" / f"{m.file_id().hex()}.manifest").write_bytes(b"not a manifest")
    assert FileRegistry(tmp_path / "files").load() == 0
    registry.remove(m.file_id())
    assert list((tmp_path / "files").iterdir()) == []


async def test_concurrent_puts_and_a_pin_of_one_file_all_succeed(stored, tmp_path):
    """The service writes entries from worker threads: a put racing a put (or a pin) of the
    same file id must not collide on a temporary file."""
    _, m = stored
    registry = FileRegistry(tmp_path / "files")
    registry.load()
    plain = FileEntry(m.file_id(), m, pinned=False, lease_expiry=LEASE, added=1)
    pinned = FileEntry(m.file_id(), m, pinned=True, lease_expiry=LEASE + 1, added=1)

    def writer(entry: FileEntry) -> None:
        for _ in range(10):
            registry.put(entry)

    assert race(writer, [(pinned if i == 0 else plain,) for i in range(6)]) == []
    reloaded = FileRegistry(tmp_path / "files")
    assert reloaded.load() == 1 and reloaded.get(m.file_id()) in (plain, pinned)
    assert sorted(p.suffix for p in (tmp_path / "files").iterdir()) == [".json", ".manifest"]


async def test_a_file_entry_keeps_its_name_and_an_older_entry_reads_without_one(tmp_path, stored):
    _, m = stored
    registry = FileRegistry(tmp_path / "files")
    registry.load()
    registry.put(FileEntry(m.file_id(), m, pinned=False, lease_expiry=LEASE, added=1,
                           name="demo job inputs.safetensors"))
    again = FileRegistry(tmp_path / "files")
    again.load()
    assert again.get(m.file_id()).name == "demo job inputs.safetensors"
    meta = tmp_path / "files" / f"{m.file_id().hex()}.json"
    meta.write_text('{"pinned": false, "lease_expiry": 5, "added": 1}')  # written by a release before names
    older = FileRegistry(tmp_path / "files")
    older.load()
    assert older.get(m.file_id()).name == ""
