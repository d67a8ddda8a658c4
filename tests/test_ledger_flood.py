"""A bounded ledger: eviction in LMDB, and a node under a flood of valid third-party receipts.

The flood comes from ``tests/evil_node.py`` in flood mode (a real node process): every
ledger page it serves is fresh receipts between itself and throwaway keys, and between
throwaway keys alone. The victim is a credits service on a real libp2p host with a real
LMDB ledger, with receipts of its own and an honest peer's receipts to keep.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import evil_node
import lmdb
import pytest
import trio
from creditmesh import LOOPBACK, FakeConfig
from libp2p.crypto.ed25519 import create_new_key_pair
from test_ledger import A, B, C, key, receipt

from poolai.mesh.host import MeshHost, open_host
from poolai.node.context import NodeContext
from poolai.node.credits import ledger as lg
from poolai.node.credits.balances import compute_balances
from poolai.node.credits.receipts import SigningKey, check_receipt
from poolai.node.credits.retention import DISK_BOUND, Bounds, Held
from poolai.node.credits.service import CreditsService
from poolai.node.launcher import NodeProcess

HASH = bytes(range(32))
LOAD_BOUND_S = 5.0  # a restart's ledger load, with the default bounds, on a loaded 2-core machine


def _held(c) -> Held:
    return Held(c.receipt_id, (c.earner, c.payer), len(c.raw), c.claim_key)


# ----------------------------------------------------------------------------- the store


def test_evicted_receipts_leave_no_index_entry_and_cursors_stay_valid(tmp_path):
    with lg.Ledger(tmp_path, durable=False) as ledger:
        rs = [receipt(i, A, B) for i in range(4)] + [receipt(9, A, C)]
        ledger.add_many(rs)
        ledger.add_many([receipt(10, B, C)], evict=[_held(rs[0]), _held(rs[4])])
        assert len(ledger) == 4 and ledger.next_seq == 6  # sequence numbers are never reused
        assert rs[0].receipt_id not in ledger and ledger.get(rs[4].receipt_id) is None
        assert ledger.page(0, limit=2) == ([rs[1].raw, rs[2].raw], 3, True)
        assert ledger.page(3)[0] == [rs[3].raw, receipt(10, B, C).raw]
        assert ledger.page(0, party=C.peer_id)[0] == [receipt(10, B, C).raw]
        ledger.evict([_held(rs[0])])  # evicting again changes nothing
        assert ledger.add(rs[0])  # an evicted receipt may come back, as a new arrival
        assert ledger.page(5)[0] == [receipt(10, B, C).raw, rs[0].raw]


def test_a_schema_1_ledger_is_upgraded_in_place(tmp_path):
    rs = [receipt(i) for i in range(3)]
    with lg.Ledger(tmp_path, durable=False) as ledger:  # make it look like schema 1
        ledger.add_many(rs)
        with ledger._env.begin(write=True) as txn:
            txn.drop(ledger._seqs, delete=True)
            txn.put(b"schema", (1).to_bytes(4, "big"), db=ledger._info)
    with lg.Ledger(tmp_path, durable=False) as ledger:
        ledger.evict([_held(rs[1])])
        assert ledger.receipts() == [rs[0].raw, rs[2].raw]
        assert ledger.page(0, party=A.peer_id)[0] == [rs[0].raw, rs[2].raw]
    env = lmdb.open(str(tmp_path), max_dbs=8, readonly=True)
    with env.begin() as txn:
        info = env.open_db(b"info", txn=txn)
        assert txn.get(b"schema", db=info) == (lg.SCHEMA_VERSION).to_bytes(4, "big")
    env.close()


# ----------------------------------------------------------------------------- a node under a flood


@asynccontextmanager
async def running(ctx: NodeContext, bounds: Bounds | None = None) -> AsyncIterator[CreditsService]:
    async with trio.open_nursery() as nursery:
        service = CreditsService(ctx, durable=False, bounds=bounds)
        await nursery.start(service.run)
        yield service
        nursery.cancel_scope.cancel()


async def earn(worker: CreditsService, submitter: CreditsService, job_id: str, seconds: float) -> bytes:
    submitter.job_checked(job_id=job_id, worker=worker.peer_id, result_hash=HASH, device="cpu",
                          max_seconds=seconds)
    key = await worker.claim_job(job_id=job_id, submitter=submitter.peer_id, device="cpu",
                                 seconds=seconds, result_hash=HASH)
    return (await worker.wait_signed(key)).receipt_id


def disk_bytes(path: Path) -> int:
    return (path / "data.mdb").stat().st_size


@pytest.mark.live
@pytest.mark.timeout(180)
async def test_a_receipt_flood_leaves_the_ledger_within_its_bounds(tmp_path):
    bounds = Bounds()  # the defaults a node runs with
    evil = NodeProcess(tmp_path / "evil", env={evil_node.FLOOD: "1", "POOLAI_CREDITS_SYNC_INTERVAL": "3600"},
                       program=evil_node.command())
    await trio.to_thread.run_sync(evil.start)
    try:
        async with AsyncExitStack() as stack:
            hosts: list[MeshHost] = [
                await stack.enter_async_context(open_host(create_new_key_pair(), LOOPBACK)) for _ in range(3)]
            victim_host, honest_host, other_host = hosts
            with trio.fail_after(20):
                for a, b in ((victim_host, honest_host), (honest_host, other_host)):
                    await a.connect(b.peer_id, b.transport_addrs())
                await victim_host.connect(evil.peer_id, [evil.addr.rsplit("/p2p/", 1)[0]])
            ctx = NodeContext(FakeConfig(), tmp_path / "victim", victim_host)  # type: ignore[arg-type]
            honest = await stack.enter_async_context(running(
                NodeContext(FakeConfig(), tmp_path / "honest", honest_host)))  # type: ignore[arg-type]
            other = await stack.enter_async_context(running(
                NodeContext(FakeConfig(), tmp_path / "other", other_host)))  # type: ignore[arg-type]
            async with running(ctx, bounds) as victim:
                with trio.fail_after(30):
                    own = [await earn(victim, honest, f"own-{i}", 10.0 * (i + 1)) for i in range(3)]
                    own.append(await earn(honest, victim, "paid", 5.0))
                    theirs = await earn(other, honest, "theirs", 7.0)  # third-party to the victim
                    assert await victim.sync_now([honest.peer_id]) == 1
                balance = victim.balance_of(victim.peer_id)
                assert balance == 900 - 75 and victim.balance_of(other.peer_id) == 105

                # ---- the flood: each round the evil node serves 16 pages of 256 fresh receipts
                ledger = victim.ledger
                assert ledger is not None
                path = ledger.path
                offered = 0
                with trio.fail_after(120):
                    for _ in range(4):
                        await victim.sync_now([evil.peer_id])
                        offered += 16 * 256
                        third = len(ledger) - len(own)
                        assert len(victim.retention) == third <= bounds.max_receipts
                        assert victim.retention.bytes <= bounds.max_bytes
                        assert victim.retention.count(evil.peer_id) <= bounds.per_peer
                assert victim.retention.count(evil.peer_id) == bounds.per_peer  # the flood got in ...
                status = victim.status()["ledger"]["others"]
                assert status["not_kept"]["untracked"] >= offered // 2  # ... only the receipts naming it
                assert status["evicted"] >= offered // 2 - bounds.per_peer
                assert len(ledger) == len(own) + 1 + bounds.per_peer
                assert disk_bytes(path) <= DISK_BOUND
                # Its own receipts, the honest third-party one and the balances are intact.
                assert all(rid in ledger for rid in [*own, theirs])
                assert victim.balance_of(victim.peer_id) == balance
                assert victim.balance_of(other.peer_id) == 105
                held = victim.tally.accounts()
                assert compute_balances(ledger.receipts()).accounts == held
                # What it serves on is what it keeps: no receipt between two throwaway keys.
                served = [check_receipt(raw) for raw in ledger.receipts()]
                assert all(evil.peer_id in (c.earner, c.payer) or victim.peer_id in (c.earner, c.payer)
                           or c.receipt_id == theirs for c in served)

            # ---- a restart loads the bounded ledger quickly and finds everything again
            start = time.monotonic()
            async with running(ctx, bounds) as again:
                loaded_s = time.monotonic() - start
                assert again.ledger is not None and len(again.ledger) == len(own) + 1 + bounds.per_peer
                assert again.tally.accounts() == held
                assert again.balance_of(again.peer_id) == balance
            assert loaded_s < LOAD_BOUND_S
    finally:
        await trio.to_thread.run_sync(evil.kill)


async def test_a_restart_with_smaller_bounds_compacts_the_ledger(tmp_path):
    """A ledger that outgrew its bounds (written before them, or with larger ones) is
    compacted at start, in one transaction; its own receipts all stay."""
    d = key(4)
    async with AsyncExitStack() as stack:
        host = await stack.enter_async_context(open_host(create_new_key_pair(), LOOPBACK))
        ctx = NodeContext(FakeConfig(), tmp_path / "n", host)  # type: ignore[arg-type]
        pair = host.key_pair
        me = SigningKey(host.peer_id, pair.public_key.to_bytes(), pair.private_key.sign)
        own = [receipt(i, me, A) for i in range(1000, 1150)]
        with lg.Ledger(tmp_path / "n" / "ledger", durable=False) as ledger:
            ledger.add_many([receipt(i, A, B) for i in range(300)] + own[:75]
                            + [receipt(i, C, d) for i in range(300, 320)] + own[75:])
        small = Bounds(per_peer=100, max_receipts=110, max_bytes=1 << 20)
        with trio.fail_after(20):
            async with running(ctx, small) as service:
                assert service.ledger is not None
                kept = [check_receipt(raw) for raw in service.ledger.receipts()]
                assert service.balance_of(me.peer_id) == sum(c.credit for c in own)
        assert len(kept) == 110 + len(own)
        assert [c.receipt_id for c in kept if me.peer_id == c.earner] == [c.receipt_id for c in own]
        assert [c.claim.job_id for c in kept if c.earner == A.peer_id and c.payer == B.peer_id] == [
            f"job-{i}" for i in range(210, 300)]  # the newest of the pair the bounds pressed hardest
        assert [c.claim.job_id for c in kept if c.earner == C.peer_id] == [
            f"job-{i}" for i in range(300, 320)]
