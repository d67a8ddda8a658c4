"""Credit rules: receipts need two distinct signers, count once, and add up the same anywhere;
redundant runs catch a wrong output; priority follows balance without starving anyone."""

from __future__ import annotations

import itertools
import random

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from poolai.mesh import wire
from poolai.mesh.adverts import peer_id_from_public_key
from poolai.node.credits import policy as cp
from poolai.node.credits.balances import Tally, compute_balances
from poolai.node.credits.receipts import (
    CPU_WEIGHT,
    EPOCH_S,
    GIB,
    MAX_RECEIPT,
    MILLI,
    PAYER_DOMAIN,
    UNKNOWN_GPU_WEIGHT,
    AuditEvidence,
    JobClaim,
    Receipt,
    ReceiptRejected,
    SigningKey,
    StorageClaim,
    add_signature,
    check_receipt,
    credit_of,
    device_of,
    device_weight,
    start_receipt,
)
from poolai.node.jobs.queue import WorkerLimits, WorkItem, WorkQueue
from poolai.node.jobs.spec import Requirements


def key(seed: int) -> SigningKey:
    private = Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return SigningKey(peer_id_from_public_key(public), public, private.sign)


WORKER, SUBMITTER, OTHER = key(1), key(2), key(3)
H100 = "NVIDIA H100 80GB HBM3"


def job_claim(worker: SigningKey = WORKER, submitter: SigningKey = SUBMITTER, *, job_id: str = "j1",
              seconds: float = 100.0, device: str = "gpu", device_class: str = H100,
              finished_at: float = 1_700_000_000.0) -> JobClaim:
    return JobClaim(version=1, job_id=job_id, worker=worker.peer_id, submitter=submitter.peer_id,
                    device=device, device_class=device_class, seconds=seconds,
                    result_hash=bytes(range(32)), finished_at=finished_at)


def both_signed(claim: JobClaim | StorageClaim, first: SigningKey = WORKER,
                second: SigningKey = SUBMITTER) -> bytes:
    return add_signature(start_receipt(claim, first), second)


def storage_claim(*, epoch: int = 472_222, audits: int = 2, bytes_held: int = 3 * GIB) -> StorageClaim:
    evidence = tuple(AuditEvidence(share_id=bytes([i]) * 32, offset=0, length=65536,
                                   nonce=bytes([100 + i]) * 32, digest=bytes([200 + i]) * 32,
                                   at=float(epoch * EPOCH_S + 60 * i)) for i in range(audits))
    return StorageClaim(version=1, owner=SUBMITTER.peer_id, holder=WORKER.peer_id, epoch=epoch,
                        bytes_held=bytes_held, shares=4, audits=evidence)


def tamper(data: bytes, **changes: bytes) -> bytes:
    receipt = wire.decode(data, Receipt)
    fields = {f: getattr(receipt, f) for f in ("body", "earner_key", "earner_sig", "payer_key", "payer_sig")}
    return wire.encode(Receipt(**{**fields, **changes}))


# ----------------------------------------------------------------------------- formula


def test_device_weights_follow_the_table():
    assert device_weight("gpu", H100) == 3.17
    assert device_weight("gpu", "NVIDIA H100 PCIe") == 2.42
    assert device_weight("gpu", "NVIDIA A100-SXM4-80GB") == 1.0
    assert device_weight("gpu", "NVIDIA A10G") == 0.40  # "A100" is tried first, "A10" still matches
    assert device_weight("gpu", "NVIDIA L4") == 0.39
    assert device_weight("gpu", "NVIDIA L40S") == 1.16
    assert device_weight("gpu", "Some Future GPU") == UNKNOWN_GPU_WEIGHT
    assert device_weight("cpu", "cpu") == CPU_WEIGHT


def test_device_text_of_the_worker_is_parsed():
    assert device_of(f"cuda:0 ({H100})") == ("gpu", H100)
    assert device_of("cpu (4 threads)") == ("cpu", "cpu")
    assert device_of("cpu (2 threads) [simulated GPU 0: NVIDIA A100]") == ("cpu", "cpu")


def test_credit_formula_in_millicredits():
    assert credit_of(job_claim(seconds=100.0)) == 317 * MILLI
    assert credit_of(job_claim(seconds=2.0, device="cpu", device_class="cpu")) == 30
    assert credit_of(storage_claim(bytes_held=3 * GIB)) == 120  # 3 GiB-hours at 0.04 credit


# ----------------------------------------------------------------------------- what counts


def test_a_receipt_signed_by_both_moves_credit_from_payer_to_earner():
    data = both_signed(job_claim())
    checked = check_receipt(data)
    assert (checked.kind, checked.earner, checked.payer) == ("job", WORKER.peer_id, SUBMITTER.peer_id)
    balances = compute_balances([data])
    assert balances.account(WORKER.peer_id).earned == 317_000
    assert balances.account(SUBMITTER.peer_id).spent == 317_000
    assert balances.account(SUBMITTER.peer_id).balance == -317_000
    assert balances.account(OTHER.peer_id).balance == 0


def test_signing_order_does_not_matter():
    claim = job_claim()
    assert check_receipt(both_signed(claim, WORKER, SUBMITTER)).credit == \
        check_receipt(both_signed(claim, SUBMITTER, WORKER)).credit


def test_one_signature_alone_mints_nothing():
    half = start_receipt(job_claim(), WORKER)
    assert check_receipt(half, complete=False).complete is False
    with pytest.raises(ReceiptRejected) as info:
        check_receipt(half)
    assert info.value.reason == "unsigned"
    assert compute_balances([half]).accounts == {}
    assert compute_balances([half]).rejected == {"unsigned": 1}


def test_a_node_cannot_pay_itself():
    with pytest.raises(ValueError, match="same peer"):
        start_receipt(job_claim(worker=WORKER, submitter=WORKER), WORKER)
    # Built by hand and signed in both roles by the one key: still refused.
    body = wire.encode(job_claim(worker=WORKER, submitter=WORKER))
    forged = wire.encode(Receipt(body, WORKER.public_key, WORKER.sign(b"x"), WORKER.public_key,
                                 WORKER.sign(PAYER_DOMAIN + body)))
    with pytest.raises(ReceiptRejected) as info:
        check_receipt(forged)
    assert info.value.reason == "self_signed"
    assert compute_balances([forged]).accounts == {}


@pytest.mark.parametrize("signer", [WORKER, OTHER], ids=["worker", "third-party"])
def test_a_payer_signature_by_anyone_but_the_submitter_is_refused(signer):
    half = start_receipt(job_claim(), WORKER)
    body = wire.decode(half, Receipt).body
    # The payer role signed with a valid signature, but by a key that is not the submitter's.
    forged = tamper(half, payer_key=signer.public_key, payer_sig=signer.sign(PAYER_DOMAIN + body))
    with pytest.raises(ReceiptRejected) as info:
        check_receipt(forged)
    assert info.value.reason == "key_mismatch"


def test_a_third_party_cannot_countersign():
    with pytest.raises(ValueError, match="not a party"):
        add_signature(start_receipt(job_claim(), WORKER), OTHER)


def test_forged_signatures_and_edited_bodies_are_refused():
    data = both_signed(job_claim(seconds=10.0))
    receipt = wire.decode(data, Receipt)
    flipped = bytes([receipt.payer_sig[0] ^ 1]) + receipt.payer_sig[1:]
    inflated = wire.encode(job_claim(seconds=10_000.0))
    for bad in (tamper(data, payer_sig=flipped), tamper(data, body=inflated)):
        with pytest.raises(ReceiptRejected) as info:
            check_receipt(bad)
        assert info.value.reason == "bad_signature"
    assert compute_balances([tamper(data, body=inflated)]).accounts == {}


def test_replays_count_once():
    data = both_signed(job_claim())
    balances = compute_balances([data, data, data])
    assert balances.account(WORKER.peer_id).earned == 317_000
    assert balances.replays == 2


def test_two_receipts_for_one_claim_count_once_whatever_the_order():
    # The pair signs the same job twice with different figures (or re-encodes it): one counts,
    # the cheaper one, so colluding on a second signature gains nothing.
    small = both_signed(job_claim(seconds=10.0, finished_at=1.0))
    large = both_signed(job_claim(seconds=20.0, finished_at=2.0))
    other_job = both_signed(job_claim(job_id="j2", seconds=5.0))
    results = set()
    for order in itertools.permutations([small, large, other_job, small]):
        b = compute_balances(order)
        results.add((b.account(WORKER.peer_id), b.account(SUBMITTER.peer_id)))
    assert len(results) == 1
    worker, _ = results.pop()
    assert worker.earned == 31_700 + 15_850 and worker.receipts == 2


def test_tally_posts_and_reverses_when_a_cheaper_receipt_arrives():
    tally = Tally()
    assert tally.add(check_receipt(both_signed(job_claim(seconds=20.0, finished_at=2.0))))
    assert tally.add(check_receipt(both_signed(job_claim(seconds=10.0, finished_at=1.0))))
    assert tally.account(WORKER.peer_id).earned == 31_700
    assert tally.account(SUBMITTER.peer_id).spent == 31_700
    assert len(tally) == 1 and tally.superseded == 1
    with pytest.raises(ValueError):
        tally.add(check_receipt(start_receipt(job_claim(), WORKER), complete=False))


def test_storage_receipts_need_audits_in_their_epoch():
    data = both_signed(storage_claim(), SUBMITTER, WORKER)
    assert compute_balances([data]).account(WORKER.peer_id).earned == 120
    with pytest.raises(ValueError, match="at least one passed audit"):
        start_receipt(storage_claim(audits=0), SUBMITTER)
    late = storage_claim()
    late = StorageClaim(**{**{f: getattr(late, f) for f in ("version", "owner", "holder", "bytes_held",
                                                              "shares", "audits")}, "epoch": late.epoch + 1})
    with pytest.raises(ValueError, match="outside the receipt's epoch"):
        start_receipt(late, SUBMITTER)
    claim = storage_claim()
    repeated = StorageClaim(1, claim.owner, claim.holder, claim.epoch, claim.bytes_held, 4,
                            (claim.audits[0], claim.audits[0]))
    with pytest.raises(ValueError, match="nonce is repeated"):
        start_receipt(repeated, SUBMITTER)


def test_one_storage_receipt_per_owner_holder_and_hour():
    a = both_signed(storage_claim(bytes_held=3 * GIB), SUBMITTER, WORKER)
    b = both_signed(storage_claim(bytes_held=30 * GIB), SUBMITTER, WORKER)
    assert compute_balances([a, b]).account(WORKER.peer_id).earned == 120


def test_malformed_envelopes_are_rejected_with_a_reason():
    good = both_signed(job_claim())
    body = wire.decode(good, Receipt).body
    raw = wire.unpack(body)
    cases = {
        "oversize": b"\x00" * (MAX_RECEIPT + 1),
        "malformed": b"\xc1",
        "schema": tamper(good, body=wire.encode(wire.ErrorReply("x", "y"))),
        "version": tamper(good, body=msgpack.packb({**raw, "version": 2})),
    }
    for reason, data in cases.items():
        with pytest.raises(ReceiptRejected) as info:
            check_receipt(data)
        assert info.value.reason == reason
    assert compute_balances(cases.values()).rejected == {r: 1 for r in cases}


# ----------------------------------------------------------------------------- what a payer signs


def test_payer_refuses_claims_that_do_not_match_its_check():
    expected = cp.Expectation(result_hash=bytes(range(32)), device="gpu", max_seconds=100.0)
    ok = job_claim(seconds=100.0, finished_at=1000.0)
    assert cp.payer_refusal(ok, expected, now=1000.0, advertised={H100}) is None
    assert cp.payer_refusal(ok, expected, now=1000.0, advertised=None) is None
    cases = {
        "result hash": JobClaim(**{**_fields(ok), "result_hash": b"\x01" * 32}),
        "ran on gpu": JobClaim(**{**_fields(ok), "device": "cpu", "device_class": "cpu"}),
        "claimed": JobClaim(**{**_fields(ok), "seconds": 200.0}),
        "future": JobClaim(**{**_fields(ok), "finished_at": 5000.0}),
        "advertises": JobClaim(**{**_fields(ok), "device_class": "NVIDIA H200"}),
    }
    for words, claim in cases.items():
        assert words in (cp.payer_refusal(claim, expected, now=1000.0, advertised={H100}) or "")


def _fields(claim: JobClaim) -> dict:
    return {f: getattr(claim, f) for f in JobClaim.__dataclass_fields__}


# ----------------------------------------------------------------------------- redundancy


def test_replicas_that_agree_are_both_credited():
    check = cp.ReplicaCheck("j", cp.RedundancyPolicy(fraction=1.0))
    assert check.add("a", b"h1").outcome is cp.Outcome.PENDING
    verdict = check.add("b", b"h1")
    assert (verdict.outcome, verdict.credited, verdict.faulty) == (cp.Outcome.AGREED, {"a", "b"}, set())


def test_a_mismatch_runs_a_tie_breaker_and_withholds_from_the_odd_one_out():
    check = cp.ReplicaCheck("j", cp.RedundancyPolicy(fraction=1.0))
    check.add("honest", b"good")
    verdict = check.add("cheat", b"bad")
    assert verdict.outcome is cp.Outcome.RUN_AGAIN
    assert verdict.exclude == {"honest", "cheat"} and not verdict.credited
    assert check.add("cheat", b"good").outcome is cp.Outcome.RUN_AGAIN  # a changed answer is ignored
    verdict = check.add("third", b"good")
    assert verdict.outcome is cp.Outcome.AGREED and verdict.result_hash == b"good"
    assert verdict.credited == {"honest", "third"} and verdict.faulty == {"cheat"}


def test_without_a_quorum_nobody_is_credited():
    check = cp.ReplicaCheck("j", cp.RedundancyPolicy(fraction=1.0))
    for worker, digest in (("a", b"1"), ("b", b"2"), ("c", b"3")):
        verdict = check.add(worker, digest)
    assert verdict.outcome is cp.Outcome.INCONCLUSIVE
    assert verdict.faulty == {"a", "b", "c"} and not verdict.credited
    two_runs = cp.ReplicaCheck("j", cp.RedundancyPolicy(fraction=1.0, quorum=2, max_runs=2))
    two_runs.add("a", b"1")
    assert two_runs.add("b", b"2").outcome is cp.Outcome.INCONCLUSIVE


def test_redundancy_fraction_is_drawn_from_the_submitters_rng():
    rng = random.Random(11)
    chosen = sum(cp.RedundancyPolicy(fraction=0.1).choose(rng) for _ in range(10_000))
    assert 900 < chosen < 1100
    assert not any(cp.RedundancyPolicy(fraction=0.0).choose(rng) for _ in range(100))
    assert all(cp.RedundancyPolicy(fraction=1.0).choose(rng) for _ in range(100))
    with pytest.raises(ValueError):
        cp.RedundancyPolicy(fraction=1.5)


def test_reputation_drops_with_a_mismatch_and_costs_routing():
    stranger = cp.Standing()
    assert cp.reputation(stranger) == 0.5 and cp.reputation_cost_ms(0.5) == 0.0
    good = stranger
    for _ in range(5):
        good = good.after(cp.Event.AGREED)
    cheat = good.after(cp.Event.MISMATCHED).after(cp.Event.MISMATCHED)
    assert cp.reputation(good) > 0.8
    assert cp.reputation(cheat) < 0.5 < cp.reputation(good)
    assert cp.reputation_cost_ms(cp.reputation(cheat)) > 0
    many_verified = stranger
    for _ in range(20):
        many_verified = many_verified.after(cp.Event.VERIFIED)
    assert cp.reputation(many_verified.after(cp.Event.FAILED)) < 0.5
    assert cp.excluded(0.05) and not cp.excluded(0.5)


# ----------------------------------------------------------------------------- priority


def test_priority_grows_with_balance_and_is_bounded():
    values = [cp.priority_for(b * MILLI) for b in (-10**9, -5, -1, 0, 1, 2, 4, 1000, 10**12)]
    assert values == sorted(values)
    assert values[3] == 0 and values[2] == -1 and values[4] == 1 and values[6] == 3
    assert values[0] == cp.PRIORITY_FLOOR and values[-1] == cp.PRIORITY_CEILING


def first_start_of_poor(aging_s: float, horizon: float = 400.0) -> float | None:
    """One slot and 1-second jobs; rich jobs arrive twice as fast as they run (an overloaded
    worker). When does a poor submitter's job, queued at t=0, start?"""
    queue = WorkQueue(WorkerLimits(slots=1, max_queued=10_000, aging_s=aging_s))
    queue.admit(WorkItem("poor", "p", 1, cp.priority_for(-50 * MILLI), Requirements(), enqueued_at=0.0))
    rich = cp.priority_for(10**9 * MILLI)
    now, n = 0.0, 0
    while now < horizon:
        for _ in range(2):
            n += 1
            queue.admit(WorkItem("rich", f"r{n}", 1, rich, Requirements(), enqueued_at=now))
        started = queue.start_next(now)
        assert started is not None
        if started.item.submitter == "poor":
            return now
        queue.finish(started.item.key)
        now += 1.0
    return None


def test_no_submitter_starves_behind_rich_ones():
    aging = 1.0
    bound = cp.max_overtake_s(aging)
    started = first_start_of_poor(aging)
    # Only jobs that arrived within ``bound`` of it (2 per second) may run before it.
    assert started is not None and started <= 2 * (bound + 1)
    # Without aging the same worker never gets to it.
    assert first_start_of_poor(aging_s=1e12) is None


def test_run_order_lets_an_old_job_pass_newer_richer_ones():
    aging = 1.0
    poor = WorkItem("poor", "p", 1, cp.PRIORITY_FLOOR, Requirements(), enqueued_at=0.0, seq=1)
    bound = cp.max_overtake_s(aging)
    soon = WorkItem("rich", "r1", 1, cp.PRIORITY_CEILING, Requirements(), enqueued_at=bound - 1, seq=2)
    late = WorkItem("rich", "r2", 1, cp.PRIORITY_CEILING, Requirements(), enqueued_at=bound + 1, seq=3)
    now = bound + 5
    assert cp.run_order([late, poor, soon], now, aging) == [soon, poor, late]


def test_payer_book_remembers_checks_and_votes():
    book = cp.PayerBook(cp.RedundancyPolicy(fraction=1.0), max_entries=3)
    expected = cp.Expectation(b"h" * 32, "cpu", 10.0)
    assert book.checked("j", "w", expected, replicated=False) == (None, [("w", cp.Event.VERIFIED)])
    assert book.expectation("j", "w") == expected
    wrong = cp.Expectation(b"x" * 32, "cpu", 10.0)
    assert book.checked("r", "a", expected, replicated=True)[1] == []
    verdict, events = book.checked("r", "b", wrong, replicated=True)
    assert verdict.outcome is cp.Outcome.RUN_AGAIN and events == []
    assert book.expectation("r", "a") is None  # nobody is paid before the vote
    verdict, events = book.checked("r", "c", expected, replicated=True)
    assert verdict.outcome is cp.Outcome.AGREED
    assert events == [("a", cp.Event.AGREED), ("b", cp.Event.MISMATCHED), ("c", cp.Event.AGREED)]
    assert book.expectation("r", "c") == expected and book.faulty("r", "b")
    assert book.checked("r", "c", expected, replicated=True)[1] == []  # judged once
    for i in range(5):  # bounded: the oldest checks are forgotten
        book.checked(f"k{i}", "w", expected, replicated=False)
    assert book.expectation("j", "w") is None and book.expectation("k4", "w") == expected
