"""Burst RAID put/get/repair over an in-process transport routed to real LMDB share stores.

Each fake peer owns a real ``ShareStore``; a peer can be dead (raises),
slow (waits on an event that never fires), corrupt (flips a byte of what it
returns) or given a virtual latency. Timeouts and hedging run on trio's
MockClock, so no test waits in real time.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio

from poolai.storage import erasure, placement, raid, segment_io
from poolai.storage.erasure import ErasureParams
from poolai.storage.errors import (
    FileChanged,
    NotEnoughShares,
    PeerError,
    PutFailed,
    ShareMissing,
    ShareNotFound,
    StoreError,
)
from poolai.storage.manifest import Manifest
from poolai.storage.placement import Ring
from poolai.storage.raid import RaidConfig, ShareMeta
from poolai.storage.store import ShareStore

SEG = 1000
PARAMS = ErasureParams(k=3, n=6, segment_size=SEG)
CONFIG = RaidConfig(
    peer_timeout=100.0, hedge_delay=1.0, extra_fetches=1, manifest_copies=3, manifest_happy=2
)
LEASE = 1_000_000


async def inline(fn, *args):
    """Offload that runs blocking work on the trio thread.

    Under MockClock(autojump_threshold=0) a wait on a worker thread counts as
    idle, so the clock would race ahead through every deadline while a thread
    runs; running inline keeps virtual time exact.
    """
    await trio.lowlevel.checkpoint()
    return fn(*args)


class Peers:
    """In-process stand-ins for remote peers, and the transport that reaches them."""

    def __init__(self, tmp_path, count: int) -> None:
        self.ids = [b"peer-%02d" % i for i in range(count)]
        self.stores = {
            p: ShareStore(tmp_path / p.decode(), quota_bytes=1 << 22, durable=False)
            for p in self.ids
        }
        self.dead: set[bytes] = set()
        self.slow: set[bytes] = set()
        self.corrupt: set[bytes] = set()
        self.latency = 0.0
        self.never = trio.Event()
        self.fetched: list[tuple[bytes, bytes]] = []
        self.reported: list[tuple[bytes, bytes]] = []
        self.stored: list[tuple[bytes, bytes]] = []
        self.abandoned = 0
        self.active = 0
        self.max_active = 0
        self.active_ids: list[bytes] = []
        self.on_store_start = None

    @property
    def ring(self) -> Ring:
        return Ring.from_peers(self.ids)

    def live_ring(self) -> Ring:
        return self.ring.without(self.dead)

    def close(self) -> None:
        for s in self.stores.values():
            s.close()

    async def _reach(self, peer: bytes) -> None:
        await trio.lowlevel.checkpoint()
        if peer in self.dead:
            raise PeerError(f"{peer!r} is gone")
        if peer in self.slow:
            try:
                await self.never.wait()
            finally:
                self.abandoned += 1
        if self.latency:
            await trio.sleep(self.latency)

    async def store(self, peer: bytes, share_id: bytes, data: bytes, meta: ShareMeta) -> None:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self.active_ids.append(share_id)
        if self.on_store_start:
            self.on_store_start(self.active_ids)
        try:
            await self._reach(peer)
            self.stores[peer].put(
                share_id, data, file_id=meta.file_id, lease_expiry=meta.lease_expiry
            )
            self.stored.append((peer, share_id))
        except StoreError as exc:
            raise PeerError(str(exc)) from exc
        finally:
            self.active -= 1
            self.active_ids.remove(share_id)

    async def fetch(self, peer: bytes, share_id: bytes) -> bytes:
        self.fetched.append((peer, share_id))
        await self._reach(peer)
        try:
            data = self.stores[peer].get(share_id)
        except ShareNotFound as exc:
            raise ShareMissing(str(exc)) from exc  # as the real transport's ShareNotHeld
        except StoreError as exc:
            raise PeerError(str(exc)) from exc
        if peer in self.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:] if data else b"?"
        return data

    async def has(self, peer: bytes, share_ids: Sequence[bytes]) -> Sequence[bool]:
        await self._reach(peer)
        return self.stores[peer].has(list(share_ids))

    def report_corrupt(self, peer: bytes, share_id: bytes) -> None:
        self.reported.append((peer, share_id))

    async def audit(self, peer, share_id, offset, length, nonce) -> bytes:
        await self._reach(peer)
        return self.stores[peer].audit(share_id, offset, length, nonce)


@pytest.fixture
def make_peers(tmp_path):
    made: list[Peers] = []

    def make(count: int) -> Peers:
        peers = Peers(tmp_path / f"net{len(made)}", count)
        made.append(peers)
        return peers

    yield make
    for peers in made:
        peers.close()


def write_file(tmp_path, size: int, seed: int = 0):
    data = random.Random(seed).randbytes(size)
    path = tmp_path / f"in-{size}-{seed}.bin"
    path.write_bytes(data)
    return path, data


async def put(peers: Peers, path, **kwargs) -> raid.PutResult:
    return await raid.put_file(
        path, peers, peers.ring, lease_expiry=LEASE, params=PARAMS, config=CONFIG, **kwargs
    )


async def put_new(peers: Peers, tmp_path: Path, size: int, seed: int = 0) -> tuple[raid.PutResult, bytes]:
    """A new file of ``size`` random bytes, put on ``peers``: the put's result and the bytes."""
    path, data = write_file(tmp_path, size, seed)
    return await put(peers, path), data


async def get(peers: Peers, file_id: bytes, out, ring: Ring | None = None, **kwargs):
    return await raid.get_file(
        file_id, out, peers, ring or peers.ring, config=CONFIG, **kwargs
    )


async def repair(peers: Peers, m: Manifest, ring: Ring) -> raid.RepairResult:
    return await raid.repair_file(m, peers, ring, lease_expiry=LEASE, config=CONFIG)


@pytest.mark.parametrize("size", [0, 1, SEG - 1, SEG, SEG + 1, 5 * SEG + 17])
async def test_round_trip(tmp_path, make_peers, size):
    peers = make_peers(8)
    path, data = write_file(tmp_path, size)
    put_progress, get_progress = [], []
    result = await put(peers, path, progress=lambda d, t: put_progress.append((d, t)))
    m = result.manifest
    assert (result.shares_stored, result.shares_present, result.shares_failed) == (
        m.segment_count * 6, 0, 0
    )
    assert result.manifest_copies == 3
    out = tmp_path / "out.bin"
    got = await get(peers, result.file_id, out, progress=lambda d, t: get_progress.append((d, t)))
    assert got == m
    assert out.read_bytes() == data
    for steps in (put_progress, get_progress):
        if size:
            assert steps[-1] == (size, size)
            assert [d for d, _ in steps] == sorted(d for d, _ in steps)


async def test_every_k_subset_of_holders_rebuilds(tmp_path, make_peers):
    peers = make_peers(6)  # six peers, n=6: every peer holds one share of every segment
    result, data = await put_new(peers, tmp_path, 3 * SEG + 5)
    for alive in itertools.combinations(peers.ids, 3):
        peers.dead = set(peers.ids) - set(alive)
        out = tmp_path / "out.bin"
        await get(peers, result.file_id, out, manifest=result.manifest, resume=False)
        assert out.read_bytes() == data


async def test_corrupt_holders_are_skipped(tmp_path, make_peers):
    peers = make_peers(6)
    result, data = await put_new(peers, tmp_path, 4 * SEG)
    peers.corrupt = set(peers.ids[:3])  # exactly k honest peers left
    out = tmp_path / "out.bin"
    await get(peers, result.file_id, out)
    assert out.read_bytes() == data
    bad = [(peer, sid) for peer, sid in peers.fetched if peer in peers.corrupt]
    # wrong shares go back to their holders (one still in flight when k were found may not)
    assert peers.reported and set(peers.reported) <= set(bad)


async def test_fewer_than_k_valid_shares_fail_clearly_and_write_nothing_wrong(
    tmp_path, make_peers
):
    peers = make_peers(6)
    result, data = await put_new(peers, tmp_path, 4 * SEG)
    peers.corrupt = set(peers.ids[:4])
    out = tmp_path / "out.bin"
    with pytest.raises(NotEnoughShares, match="fewer than 3 valid shares"):
        await get(peers, result.file_id, out, manifest=result.manifest)
    assert data.startswith(out.read_bytes())


async def test_manifest_is_fetched_from_any_valid_copy(tmp_path, make_peers):
    peers = make_peers(10)
    result, _ = await put_new(peers, tmp_path, 2 * SEG)
    holders = placement.manifest_holders(peers.ring, result.file_id, 3)
    peers.dead = {holders[0]}
    peers.corrupt = {holders[1]}
    m = await raid.fetch_manifest(result.file_id, peers, peers.ring, config=CONFIG)
    assert m == result.manifest
    peers.dead = set(holders)
    peers.corrupt = set()
    with pytest.raises(NotEnoughShares):
        await raid.fetch_manifest(result.file_id, peers, peers.ring, config=CONFIG)


async def test_slow_holders_are_hedged_and_cancelled(tmp_path, make_peers, autojump_clock):
    peers = make_peers(6)
    result, data = await put_new(peers, tmp_path, 4 * SEG)
    peers.slow = set(peers.ids[:3])
    config = RaidConfig(peer_timeout=100.0, hedge_delay=1.0, extra_fetches=0)
    start = trio.current_time()
    out = tmp_path / "out.bin"
    await raid.get_file(
        result.file_id, out, peers, peers.ring, config=config, manifest=result.manifest,
        offload=inline,
    )
    assert out.read_bytes() == data
    assert peers.abandoned > 0  # slow fetches were started, then cancelled
    assert trio.current_time() - start < config.peer_timeout  # hedges won, not timeouts


async def test_slow_holders_time_out_when_hedging_cannot_help(
    tmp_path, make_peers, autojump_clock
):
    peers = make_peers(6)
    result, _ = await put_new(peers, tmp_path, 2 * SEG)
    peers.slow = set(peers.ids[:4])
    start = trio.current_time()
    with pytest.raises(NotEnoughShares):
        await get(
            peers, result.file_id, tmp_path / "out.bin", manifest=result.manifest, offload=inline
        )
    assert trio.current_time() - start >= CONFIG.peer_timeout


async def test_put_falls_back_to_the_next_peer_when_a_holder_fails(tmp_path, make_peers):
    peers = make_peers(12)
    path, data = write_file(tmp_path, 6 * SEG)
    peers.dead = set(peers.ids[:2])
    result = await put(peers, path)
    assert result.shares_failed == 0
    assert result.shares_stored == 6 * 6
    assert not any(peer in peers.dead for peer, _ in peers.stored)
    out = tmp_path / "out.bin"
    await get(peers, result.file_id, out)  # dead peers still in the ring view
    assert out.read_bytes() == data


async def test_put_fails_when_too_few_shares_can_be_placed(tmp_path, make_peers):
    peers = make_peers(6)
    path, _ = write_file(tmp_path, 2 * SEG)
    peers.dead = set(peers.ids[:3])  # 3 of 6 placed, happy is 3 + 3//2 = 4
    with pytest.raises(PutFailed, match="fewer than 4 shares"):
        await put(peers, path)


async def test_put_resumes_by_skipping_shares_holders_have(tmp_path, make_peers):
    peers = make_peers(8)
    path, _ = write_file(tmp_path, 3 * SEG)
    first = await put(peers, path)
    again = await put(peers, path)
    assert (again.file_id, again.shares_stored, again.shares_present) == (first.file_id, 0, 18)
    m = first.manifest
    for seg, i in [(0, 1), (2, 5)]:
        holder = placement.segment_holders(peers.ring, first.file_id, seg, 6)[i]
        assert peers.stores[holder].delete(m.share_id(seg, i))
    peers.stored.clear()
    third = await put(peers, path)
    assert (third.shares_stored, third.shares_present) == (2, 16)
    assert {sid for _, sid in peers.stored} == {m.share_id(0, 1), m.share_id(2, 5)}


async def test_pass_one_encodes_a_window_of_segments_at_once_and_keeps_their_order(
    tmp_path, autojump_clock
):
    """Segments finish out of order (the first ones last); the manifest is the one a
    segment-at-a-time pass builds, at most ``window`` are encoded at once, and progress
    climbs to the file size."""
    path, _ = write_file(tmp_path, 7 * SEG + 123)
    count = 8
    running, most, seen = 0, 0, []

    async def slow_first(fn, *args):
        nonlocal running, most
        if fn is not segment_io.segment_hashes:
            return fn(*args)
        running += 1
        most = max(most, running)
        await trio.sleep(count - args[3])  # segment 0 takes longest
        running -= 1
        return fn(*args)

    one_by_one = await raid.build_manifest(path, PARAMS, offload=inline, window=1)
    windowed = await raid.build_manifest(
        path, PARAMS, offload=slow_first, window=3, progress=lambda done, total: seen.append(done)
    )
    assert windowed == one_by_one and windowed.file_id() == one_by_one.file_id()
    assert most == 3
    assert seen == sorted(seen) and seen[-1] == 7 * SEG + 123 and len(seen) == count


async def test_pass_one_raises_a_read_error_as_itself(tmp_path):
    path, _ = write_file(tmp_path, 5 * SEG)

    async def failing(fn, *args):
        if fn is segment_io.segment_hashes and args[3] == 2:
            raise OSError(5, "Input/output error")
        return fn(*args)

    with pytest.raises(OSError, match="Input/output"):  # not an ExceptionGroup
        await raid.build_manifest(path, PARAMS, offload=failing)


async def test_put_refuses_a_file_that_changed_after_hashing(tmp_path, make_peers):
    peers = make_peers(6)
    path, data = write_file(tmp_path, 3 * SEG)
    m = await raid.build_manifest(path, PARAMS)
    path.write_bytes(data[:1500] + b"X" + data[1501:])
    with pytest.raises(FileChanged, match="segment 1"):
        await put(peers, path, manifest=m)


async def test_put_refuses_a_file_that_grew_after_hashing(tmp_path, make_peers):
    peers = make_peers(6)
    path, data = write_file(tmp_path, 2 * SEG)
    m = await raid.build_manifest(path, PARAMS)
    path.write_bytes(data + b"more")
    with pytest.raises(FileChanged, match="no longer"):
        await put(peers, path, manifest=m)
    assert peers.stored == []


async def test_get_resumes_after_the_last_good_segment(tmp_path, make_peers):
    peers = make_peers(8)
    result, data = await put_new(peers, tmp_path, 5 * SEG + 3)
    m = result.manifest
    out = tmp_path / "out.bin"
    partial = bytearray(data[: 3 * SEG + 500])
    partial[2 * SEG + 7] ^= 1  # segment 2 is damaged: resume from there
    out.write_bytes(bytes(partial))
    peers.fetched.clear()
    await get(peers, result.file_id, out, manifest=m)
    assert out.read_bytes() == data
    early = {m.share_id(s, i) for s in (0, 1) for i in range(6)}
    fetched = {sid for _, sid in peers.fetched}
    assert fetched.isdisjoint(early)
    assert any(sid in fetched for sid in m.segment_share_ids(2))


async def test_repair_restores_full_redundancy_after_losing_n_minus_k_holders(
    tmp_path, make_peers
):
    peers = make_peers(12)
    result, data = await put_new(peers, tmp_path, 4 * SEG)
    fid, m = result.file_id, result.manifest
    peers.dead = set(placement.segment_holders(peers.ring, fid, 0, 6)[:3])
    live = peers.live_ring()
    report = await repair(peers, m, live)
    assert report.shares_missing > 0
    assert report.shares_rebuilt == report.shares_missing
    assert (report.shares_failed, report.segments_lost) == (0, 0)
    for seg in range(m.segment_count):
        for i, holder in enumerate(placement.segment_holders(live, fid, seg, 6)):
            assert peers.stores[holder].get(m.share_id(seg, i))  # hash-checked on read
    # Full redundancy again: another n-k holders may go.
    peers.dead |= set(placement.segment_holders(live, fid, 0, 6)[3:])
    out = tmp_path / "out.bin"
    await get(peers, fid, out, ring=peers.live_ring())
    assert out.read_bytes() == data
    again = await repair(peers, m, live)
    assert again.segments_lost == 0


async def test_repair_uses_fallbacks_while_dead_peers_are_still_in_the_ring(
    tmp_path, make_peers
):
    peers = make_peers(10)
    result, data = await put_new(peers, tmp_path, 3 * SEG)
    fid, m = result.file_id, result.manifest
    peers.dead = set(placement.segment_holders(peers.ring, fid, 1, 6)[:2])
    report = await repair(peers, m, peers.ring)
    assert report.shares_rebuilt == report.shares_missing > 0
    assert report.shares_failed == 0
    peers.dead |= set(placement.segment_holders(peers.ring, fid, 1, 6)[2:4])
    out = tmp_path / "out.bin"
    await get(peers, fid, out)  # segment 1 now needs the rebuilt copies on fallbacks
    assert out.read_bytes() == data


async def test_peers_without_a_copy_are_expected_misses_logged_at_debug(tmp_path, make_peers, caplog):
    peers = make_peers(12)
    path, data = write_file(tmp_path, 4 * SEG)
    small = Ring.from_peers(peers.ids[:6])
    result = await raid.put_file(path, peers, small, lease_expiry=LEASE, params=PARAMS, config=CONFIG)
    # then six more peers join the ring: walks meet peers that never had a share
    peers.dead = {peers.ids[0]}
    caplog.set_level("DEBUG", logger="poolai.storage")
    out = tmp_path / "out.bin"
    await get(peers, result.file_id, out)
    assert out.read_bytes() == data
    misses = [r for r in caplog.records if "has no copy" in r.getMessage()]
    assert misses and {r.levelname for r in misses} == {"DEBUG"}
    failed = [r.getMessage() for r in caplog.records if r.levelname == "INFO" and "failed" in r.getMessage()]
    assert len(failed) == 1 and "is gone" in failed[0]  # a dead peer is news, once per operation
    again = [r for r in caplog.records if r.levelname == "DEBUG" and "is gone" in r.getMessage()]
    assert again  # its other failures in the same get


async def test_repair_reports_segments_it_cannot_rebuild(tmp_path, make_peers):
    peers = make_peers(6)
    result, _ = await put_new(peers, tmp_path, 2 * SEG)
    peers.dead = set(peers.ids[:4])
    report = await repair(peers, result.manifest, peers.live_ring())
    assert report.segments_lost == 2
    assert report.shares_rebuilt == 0


async def test_transfers_and_segments_in_memory_are_bounded(tmp_path, make_peers, autojump_clock):
    peers = make_peers(12)
    peers.latency = 1.0
    path, _ = write_file(tmp_path, 10 * SEG)
    m = await raid.build_manifest(path, PARAMS, offload=inline)
    segment_of = {m.share_id(s, i): s for s in range(m.segment_count) for i in range(6)}
    most_segments = 0

    def watch(active_ids):
        nonlocal most_segments
        most_segments = max(most_segments, len({segment_of.get(s) for s in active_ids}))

    peers.on_store_start = watch
    config = RaidConfig(max_transfers=4, segments_in_flight=2, manifest_copies=3)
    await raid.put_file(
        path, peers, peers.ring, lease_expiry=LEASE, config=config, manifest=m, offload=inline
    )
    assert peers.max_active == 4
    assert most_segments <= 2


async def test_put_on_an_empty_ring_is_refused(tmp_path):
    path, _ = write_file(tmp_path, 10)
    with pytest.raises(PutFailed, match="no peers"):
        await raid.put_file(path, None, Ring.from_peers([]), lease_expiry=LEASE)


async def test_stream_hands_segments_in_order_from_any_segment_and_stops_at_a_failing_sink(
    tmp_path, make_peers
):
    peers = make_peers(6)
    result, data = await put_new(peers, tmp_path, 7 * SEG + 5)
    got: list[tuple[int, bytes]] = []

    async def collect(offset: int, blocks: list[bytes]) -> None:
        got.append((offset, b"".join(blocks)))

    await raid.stream_file(result.file_id, peers, peers.ring, collect, config=CONFIG, first_segment=2)
    assert [offset for offset, _ in got] == [seg * SEG for seg in range(2, 8)]
    assert b"".join(chunk for _, chunk in got) == data[2 * SEG :]

    async def full_disk(offset: int, blocks: list[bytes]) -> None:
        if offset >= 3 * SEG:
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):  # the sink's error itself, not a group
        await raid.stream_file(result.file_id, peers, peers.ring, full_disk, config=CONFIG)


async def test_only_zfec_decoding_goes_to_a_thread_on_a_read_and_is_tallied(tmp_path, make_peers):
    peers = make_peers(6)
    result, data = await put_new(peers, tmp_path, 3 * SEG + 5)
    m = result.manifest
    where = {m.share_id(seg, i): (seg, i) for seg in range(m.segment_count) for i in range(m.n)}
    config = RaidConfig(peer_timeout=100.0, hedge_delay=1.0, extra_fetches=0)
    handed: list[str] = []
    got: list[bytes] = []

    async def counting(fn, *args):
        handed.append(getattr(fn, "__name__", repr(fn)))
        return await inline(fn, *args)

    async def collect(offset: int, blocks: list[bytes]) -> None:
        got.append(b"".join(blocks))

    # Without share 0 the first two segments must be rebuilt by zfec; the load rule may
    # send others to a parity share too. Which shares were used is in peers.fetched.
    peers.dead = {placement.segment_holders(peers.ring, result.file_id, seg, 6)[0] for seg in (0, 1)}
    peers.fetched.clear()
    tally = raid.ReadTally()
    await raid.stream_file(result.file_id, peers, peers.ring, collect, config=config,
                           manifest=m, offload=counting, tally=tally)
    assert b"".join(got) == data
    used: dict[int, set[int]] = {}
    for peer, sid in peers.fetched:
        if peer not in peers.dead:
            seg, i = where[sid]
            used.setdefault(seg, set()).add(i)
    decoded = [seg for seg, indices in used.items() if not erasure.primaries_only(indices, m.k)]
    assert {0, 1} <= set(decoded)
    assert handed == ["segment_blocks"] * len(decoded)  # hashing small shares stays on the loop
    assert (tally.segments, tally.decoded) == (m.segment_count, len(decoded))


async def test_a_busy_primary_holder_is_spared_for_a_parity_share(tmp_path, make_peers):
    """fetch_segment asks primaries (no decoding) unless a primary's holder already carries
    more of the operation's fetches than a parity holder; then it asks the parity share,
    unless the reading thread is itself the limit of the read."""
    from poolai.storage.transfers import PRIMARY_EDGE, Transfers

    peers = make_peers(6)
    result, data = await put_new(peers, tmp_path, SEG)
    m, ring = result.manifest, peers.ring
    holders = placement.segment_holders(ring, result.file_id, 0, m.n)

    class LoadedLoop:
        """A reading thread that is the limit of the read: rebuilds would only slow it."""

        def busy(self) -> bool:
            return True

    async def asked(busy: dict[bytes, int], loop_load: LoadedLoop | None = None) -> set[int]:
        peers.fetched.clear()
        session = Transfers(peers, CONFIG, inline, loop_load)  # type: ignore[arg-type]
        session.busy.update(busy)
        shares = await session.fetch_segment(ring, result.file_id, m, 0)
        assert shares is not None and len(shares) == m.k
        index = {m.share_id(0, i): i for i in range(m.n)}
        return {index[sid] for _, sid in peers.fetched}

    k = m.k
    idle = await asked({})
    assert set(range(k)) <= idle <= set(range(k + CONFIG.extra_fetches))  # primaries first
    assert 0 in await asked({holders[0]: PRIMARY_EDGE})  # busier, but within the edge
    spared = await asked({holders[0]: PRIMARY_EDGE + 1})
    assert 0 not in spared and spared & set(range(k, m.n))
    assert 0 in await asked({holders[0]: PRIMARY_EDGE + 1}, LoadedLoop())  # no rebuild then


async def test_a_read_after_holders_left_asks_only_peers_that_have_the_shares(tmp_path, make_peers):
    """n = 6 on 6 peers, and two leave. A ring of the present peers computes other holders
    for shares that stayed, and the read asks peers that lack them; the reading ring keeps
    the two as absent: no fetch goes to a peer that left, and once the first segments showed
    that the file was put on that ring, every fetch is a hit."""
    peers = make_peers(6)
    result, data = await put_new(peers, tmp_path, 8 * SEG + 5, seed=7)
    peers.dead = set(peers.ids[1:3])
    segments = result.manifest.segment_count

    def misses() -> int:
        return sum(1 for peer, sid in peers.fetched
                   if peer in peers.dead or not peers.stores[peer].has([sid])[0])

    await get(peers, result.file_id, tmp_path / "shrunk.bin", ring=peers.live_ring(), offload=inline)
    assert (tmp_path / "shrunk.bin").read_bytes() == data
    shrunk = misses()
    assert shrunk > segments  # more than one wasted request per segment
    peers.fetched.clear()
    reading = Ring.from_peers(peers.ids, absent=peers.dead)
    await get(peers, result.file_id, tmp_path / "reading.bin", ring=reading, offload=inline,
              manifest=result.manifest)
    assert (tmp_path / "reading.bin").read_bytes() == data
    assert not any(peer in peers.dead for peer, _ in peers.fetched)
    # misses: only until the get has learned (from the shares it found) where the file was put
    assert misses() < shrunk
