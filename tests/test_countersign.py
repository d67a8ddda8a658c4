"""The countersigning rule (pure): who may ask this node to sign a receipt, and when."""

from __future__ import annotations

from test_credits import OTHER, SUBMITTER, WORKER, both_signed, job_claim, storage_claim

from poolai.node.credits.policy import MAX_SKEW_S, Countersign, countersign_rule
from poolai.node.credits.receipts import EPOCH_S, check_receipt, start_receipt

EPOCH = 472_222
NOW = EPOCH * EPOCH_S + 3600.0


def half(claim, first):
    return check_receipt(start_receipt(claim, first), complete=False)


def test_a_payer_checks_the_job_before_it_countersigns_a_workers_claim():
    claim = half(job_claim(), WORKER)
    assert countersign_rule(claim, me=SUBMITTER.peer_id, peer=WORKER.peer_id, held=None,
                            now=NOW) == (Countersign.CHECK_JOB, "")


def test_a_holder_countersigns_an_owners_storage_claim_once_its_epoch_began():
    claim = half(storage_claim(epoch=EPOCH), SUBMITTER)
    assert countersign_rule(claim, me=WORKER.peer_id, peer=SUBMITTER.peer_id, held=None,
                            now=NOW) == (Countersign.SIGN, "")
    early = EPOCH * EPOCH_S - MAX_SKEW_S - 1.0
    action, reason = countersign_rule(claim, me=WORKER.peer_id, peer=SUBMITTER.peer_id, held=None, now=early)
    assert (action, reason) == (Countersign.REFUSED, "the epoch has not begun")
    within_skew = EPOCH * EPOCH_S - MAX_SKEW_S + 1.0
    assert countersign_rule(claim, me=WORKER.peer_id, peer=SUBMITTER.peer_id, held=None,
                            now=within_skew)[0] is Countersign.SIGN


def test_only_the_other_party_may_ask():
    claim = half(job_claim(), WORKER)
    for me, peer in ((OTHER.peer_id, WORKER.peer_id), (SUBMITTER.peer_id, OTHER.peer_id)):
        action, reason = countersign_rule(claim, me=me, peer=peer, held=None, now=NOW)
        assert action is Countersign.REFUSED and "other party" in reason


def test_each_role_signs_in_its_turn():
    # The worker signs job claims first and never countersigns one; the owner likewise for storage.
    job = half(job_claim(), SUBMITTER)
    assert countersign_rule(job, me=WORKER.peer_id, peer=SUBMITTER.peer_id, held=None,
                            now=NOW)[0] is Countersign.REFUSED
    storage = half(storage_claim(epoch=EPOCH), WORKER)
    assert countersign_rule(storage, me=SUBMITTER.peer_id, peer=WORKER.peer_id, held=None,
                            now=NOW)[0] is Countersign.REFUSED


def test_a_paid_claim_is_sent_back_when_identical_and_refused_otherwise():
    paid = check_receipt(both_signed(job_claim()))
    same = half(job_claim(), WORKER)
    assert countersign_rule(same, me=SUBMITTER.peer_id, peer=WORKER.peer_id, held=paid,
                            now=NOW) == (Countersign.RESEND, "")
    other = half(job_claim(seconds=99.0), WORKER)
    action, reason = countersign_rule(other, me=SUBMITTER.peer_id, peer=WORKER.peer_id, held=paid, now=NOW)
    assert action is Countersign.REFUSED and "already paid" in reason


def test_a_complete_receipt_is_not_signed_again():
    complete = check_receipt(both_signed(job_claim()))
    action, reason = countersign_rule(complete, me=SUBMITTER.peer_id, peer=WORKER.peer_id, held=None, now=NOW)
    assert action is Countersign.REFUSED and "already signed by both" in reason
