"""The ledger: append-only LMDB that survives SIGKILL, and /poolai/ledger/1.0.0 between hosts."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import trio
from creditmesh import credit_mesh
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fulldisk import small_disk

from poolai.mesh.adverts import peer_id_from_public_key
from poolai.mesh.errors import RemoteError
from poolai.node.credits import ledger as lg
from poolai.node.credits.policy import Event, Standing
from poolai.node.credits.receipts import (
    JobClaim,
    SigningKey,
    add_signature,
    check_receipt,
    job_claim_key,
    start_receipt,
)

pytestmark = pytest.mark.timeout(60)
HASH = bytes(range(32))


def key(seed: int) -> SigningKey:
    private = Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return SigningKey(peer_id_from_public_key(public), public, private.sign)


A, B, C = key(1), key(2), key(3)


def receipt(i: int, worker: SigningKey = A, submitter: SigningKey = B, *, seconds: float = 1.0):
    claim = JobClaim(1, f"job-{i}", worker.peer_id, submitter.peer_id, "cpu", "cpu", seconds, HASH,
                     1_700_000_000.0 + i)
    return check_receipt(add_signature(start_receipt(claim, worker), submitter))


# ----------------------------------------------------------------------------- the store


def test_receipts_are_appended_once_and_paged_in_arrival_order(tmp_path):
    with lg.Ledger(tmp_path, durable=False) as ledger:
        first = [receipt(i) for i in range(5)]
        assert [ledger.add(r) for r in first] == [True] * 5
        assert ledger.add(first[2]) is False  # same receipt id: nothing is overwritten
        assert ledger.add_many([receipt(5, A, C), first[0]]) == 1
        assert len(ledger) == 6 and ledger.next_seq == 6
        assert ledger.get(first[3].receipt_id) == first[3].raw
        page, cursor, more = ledger.page(0, limit=4)
        assert page == [r.raw for r in first[:4]] and (cursor, more) == (4, True)
        page, cursor, more = ledger.page(cursor, limit=4)
        assert len(page) == 2 and (cursor, more) == (6, False)
        assert ledger.page(6) == ([], 6, False)
        only_c = ledger.page(0, party=C.peer_id)
        assert len(only_c[0]) == 1 and only_c[1:] == (6, False)
        assert len(ledger.page(0, party=A.peer_id)[0]) == 6
        # A byte limit stops a page early, but never before one receipt.
        assert len(ledger.page(0, max_bytes=1)[0]) == 1


def test_a_full_disk_is_a_ledger_error_and_writes_resume_once_there_is_room(tmp_path):
    """Found by the chaos soak: on a full disk LMDB's commit failed with lmdb.DiskError,
    which crossed the credits service and ended the node. Now it is a LedgerError (the
    service retries later) and nothing half-written is left."""
    with small_disk(tmp_path, "1m") as disk:
        (disk / "ballast").write_bytes(bytes(256 << 10))
        with lg.Ledger(disk / "ledger", durable=False) as ledger:
            added = 0
            with pytest.raises(lg.LedgerError, match="could not be written"):
                for i in range(0, 10_000, 100):
                    added += ledger.add_many([receipt(j) for j in range(i, i + 100)])
            assert 0 < added < 10_000 and len(ledger) == added == ledger.next_seq
            with pytest.raises(lg.LedgerError):
                ledger.put_standings({f"peer-{i}" * 4: Standing(i, 0, 0, 0) for i in range(20_000)})
            (disk / "ballast").unlink()
            assert ledger.add(receipt(20_000)) and len(ledger) == added + 1


def test_only_receipts_signed_by_both_parties_get_in(tmp_path):
    half = check_receipt(start_receipt(receipt(0).claim, A), complete=False)
    with lg.Ledger(tmp_path, durable=False) as ledger:
        with pytest.raises(ValueError):
            ledger.add(half)
        ledger.put_pending(half)
        assert ledger.pending() == [half.raw]
        ledger.add(receipt(0))  # the countersigned receipt settles the pending claim
        assert ledger.pending() == []


def test_standings_survive_a_reopen(tmp_path):
    with lg.Ledger(tmp_path, durable=False) as ledger:
        ledger.put_standings({"peer": Standing().after(Event.AGREED).after(Event.MISMATCHED)})
    with lg.Ledger(tmp_path, durable=False) as ledger:
        assert ledger.standings() == {"peer": Standing(agreed=1, mismatched=1)}
        assert ledger.standing("nobody") == Standing()


WRITER = textwrap.dedent("""
    import sys
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    from poolai.mesh.adverts import peer_id_from_public_key
    from poolai.node.credits.receipts import JobClaim, SigningKey, add_signature, check_receipt, start_receipt
    from poolai.node.credits.ledger import Ledger

    def key(seed):
        private = Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
        public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return SigningKey(peer_id_from_public_key(public), public, private.sign)

    a, b = key(1), key(2)
    with Ledger(sys.argv[1], durable=False) as ledger:
        i = 0
        while True:  # until killed
            batch = []
            for _ in range(1 + i % 3):
                claim = JobClaim(1, f"job-{i}", a.peer_id, b.peer_id, "cpu", "cpu", 1.0, bytes(32), 1.0)
                batch.append(check_receipt(add_signature(start_receipt(claim, a), b)))
                i += 1
            ledger.add_many(batch)
            print(i, flush=True)
""")


def test_a_writer_killed_mid_stream_leaves_whole_receipts(tmp_path):
    path = tmp_path / "ledger"
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        for line in child.stdout:  # wait until it has committed a few hundred receipts
            if int(line) >= 300:
                break
        child.kill()  # SIGKILL, at whatever point of a transaction it is in
    finally:
        child.kill()
        child.wait()
    with lg.Ledger(path, durable=False) as ledger:
        n = len(ledger)
        assert n >= 300 and ledger.next_seq == n
        receipts, cursor, more = ledger.page(0, limit=10**9, max_bytes=10**12)
        assert (len(receipts), cursor, more) == (n, n, False)
        checked = [check_receipt(raw) for raw in receipts]  # every one whole and verifiable
        assert sorted(c.claim.job_id for c in checked) == sorted(f"job-{i}" for i in range(n))
        for party in (A.peer_id, B.peer_id):
            assert ledger.page(0, party=party, limit=10**9, max_bytes=10**12)[0] == receipts
        assert ledger.add(receipt(10**6))  # and it goes on appending
        assert ledger.next_seq == n + 1


# ----------------------------------------------------------------------------- the protocol


@pytest.mark.live
async def test_countersigning_and_fetching_between_hosts(tmp_path):
    async with credit_mesh(tmp_path, 3) as (worker, submitter, observer):
        submitter.job_checked(job_id="j1", worker=worker.peer_id, result_hash=HASH, device="cpu",
                              max_seconds=30.0)
        with trio.fail_after(15):
            claim_key = await worker.claim_job(job_id="j1", submitter=submitter.peer_id,
                                               device="cpu (2 threads)", seconds=20.0, result_hash=HASH)
            signed = await worker.wait_signed(claim_key)
        assert claim_key == job_claim_key(submitter.peer_id, "j1", worker.peer_id)
        assert signed.complete and submitter.tally.counted(claim_key).raw == signed.raw
        assert worker.balance_of(worker.peer_id) == 300 == -submitter.balance_of(submitter.peer_id)
        # A second claim for the same job is answered with the receipt already signed.
        assert await worker.claim_job(job_id="j1", submitter=submitter.peer_id, device="cpu",
                                      seconds=20.0, result_hash=HASH) == claim_key
        assert worker.ledger is not None and len(worker.ledger) == 1

        with trio.fail_after(15):
            assert await observer.sync_now() == 1
            assert await observer.sync_now() == 0  # cursors: nothing fetched twice
        assert observer.tally.accounts() == worker.tally.accounts() == submitter.tally.accounts()


@pytest.mark.live
async def test_fetch_is_paged_and_bounded(tmp_path):
    async with credit_mesh(tmp_path, 2) as (server, client):
        assert server.ledger is not None
        server.ledger.add_many([receipt(i) for i in range(5)])
        host = client.host
        with trio.fail_after(15):
            page = await host.request(server.peer_id, lg.PROTOCOL, lg.Fetch(since=0, limit=2),
                                      (lg.Page,), timeout=5, max_frame=lg.MAX_FRAME)
            assert (len(page.receipts), page.next, page.more) == (2, 2, True)
            page = await host.request(server.peer_id, lg.PROTOCOL, lg.Fetch(since=2, limit=256),
                                      (lg.Page,), timeout=5, max_frame=lg.MAX_FRAME)
            assert (len(page.receipts), page.next, page.more) == (3, 5, False)
            page = await host.request(server.peer_id, lg.PROTOCOL, lg.Fetch(party=C.peer_id),
                                      (lg.Page,), timeout=5, max_frame=lg.MAX_FRAME)
            assert page.receipts == ()
            with pytest.raises(RemoteError) as info:
                await host.request(server.peer_id, lg.PROTOCOL, lg.Fetch(limit=10_000), (lg.Page,),
                                   timeout=5, max_frame=lg.MAX_FRAME)
            assert info.value.code == "bad_request"


@pytest.mark.live
async def test_signing_is_refused_without_a_matching_check(tmp_path):
    async with credit_mesh(tmp_path, 3) as (worker, submitter, stranger):
        submitter.sign_wait_s = 0.2
        submitter.job_checked(job_id="j", worker=worker.peer_id, result_hash=HASH, device="cpu",
                              max_seconds=10.0)

        async def ask(asker, target, claim: JobClaim) -> str:
            half = start_receipt(claim, asker.key)
            with pytest.raises(RemoteError) as info:
                await asker.host.request(target.peer_id, lg.PROTOCOL, lg.SignRequest(half), (lg.Signed,),
                                         timeout=5, max_frame=lg.MAX_FRAME)
            return info.value.code

        def claim(job_id: str = "j", *, seconds: float = 5.0, result: bytes = HASH,
                  worker_id: str = worker.peer_id) -> JobClaim:
            return JobClaim(1, job_id, worker_id, submitter.peer_id, "cpu", "cpu", seconds, result, 1.0)

        with trio.fail_after(20):
            assert await ask(worker, submitter, claim("never-ran")) == "not_found"
            assert await ask(worker, submitter, claim(seconds=100.0)) == "refused"
            assert await ask(worker, submitter, claim(result=b"\x09" * 32)) == "refused"
            # Somebody else's claim, or one where the asker is no party.
            assert await ask(stranger, submitter, claim(worker_id=stranger.peer_id)) == "not_found"
            third = JobClaim(1, "j", worker.peer_id, stranger.peer_id, "cpu", "cpu", 1.0, HASH, 1.0)
            half = start_receipt(third, worker.key)
            with pytest.raises(RemoteError) as info:
                await stranger.host.request(submitter.peer_id, lg.PROTOCOL, lg.SignRequest(half),
                                            (lg.Signed,), timeout=5, max_frame=lg.MAX_FRAME)
            assert info.value.code == "refused"
            # Through the service: a refused claim is dropped, not retried forever.
            key_ = await worker.claim_job(job_id="j", submitter=submitter.peer_id, device="cpu",
                                          seconds=100.0, result_hash=HASH)
            with pytest.raises(LookupError):
                await worker.wait_signed(key_)
        assert worker.ledger is not None and worker.ledger.pending() == []
        assert submitter.reputation_of(worker.peer_id) < 0.5  # the wrong hash counted against it
        assert worker.tally.accounts() == {} == submitter.tally.accounts()
