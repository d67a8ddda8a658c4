"""What a submitter does with the runs of one job (node/jobs/runs.py, pure), fed by the credits
service's real replica check; and how reputation moves a peer in the capacity ranking."""

from __future__ import annotations

import random

import trio
from test_adverts import advert
from test_jobs import FakeRunner, MemoryFiles, Submitter, offer_to, until

from poolai.node.capacity import rules as cap
from poolai.node.credits import policy as cp
from poolai.node.jobs import protocol as jp
from poolai.node.jobs.executor import Executor
from poolai.node.jobs.queue import WorkerLimits
from poolai.node.jobs.runs import Check, Report, RunEnd, RunPlan, StartRun
from poolai.node.jobs.spec import FileRef, JobResult, JobStatus

GOOD, BAD = "a" * 64, "b" * 64


def ok(digest: str = GOOD) -> JobResult:
    return JobResult("j", JobStatus.OK, FileRef("output.safetensors", digest, 10))


def voter():  # type: ignore[no-untyped-def]
    """The credits service's side: a payer book that votes on each passed check."""
    book = cp.PayerBook(cp.RedundancyPolicy(fraction=1.0))

    def vote(worker: str, digest: str) -> cp.Verdict | None:
        return book.checked("j", worker, cp.Expectation(bytes.fromhex(digest), "cpu", 10.0),
                            replicated=True)[0]

    return book, vote


def test_an_unreplicated_job_reports_its_one_run():
    plan = RunPlan("j", replicated=False)
    assert plan.active() == [0]
    report = plan.run_ended(RunEnd(0, "w", ok(), Check.PASSED), None)
    assert report == Report(0, ok()) and plan.done


def test_an_output_that_fails_its_check_runs_again_elsewhere_then_ends_crashed():
    plan = RunPlan("j", replicated=False, max_runs=2)
    again = plan.run_ended(RunEnd(0, "w1", ok(), Check.FAILED, "hash differs"), None)
    assert again == StartRun(frozenset({"w1"})) and plan.active() == [1]
    report = plan.run_ended(RunEnd(1, "w2", ok(), Check.FAILED, "missing"), None)
    assert isinstance(report, Report) and report.run is None
    assert report.result.status is JobStatus.CRASHED and "failed the submitter's check" in report.result.error


def test_a_failed_result_is_reported_as_it_is():
    failed = JobResult("j", JobStatus.FAILED, error="bad shapes")
    assert RunPlan("j", replicated=False).run_ended(RunEnd(0, "w", failed, Check.NONE), None) == \
        Report(0, failed)


def test_replicas_that_agree_report_one_result():
    _, vote = voter()
    plan = RunPlan("j", replicated=True)
    assert plan.active() == [0, 1]
    assert plan.run_ended(RunEnd(1, "b", ok(), Check.PASSED), vote("b", GOOD)) is None
    report = plan.run_ended(RunEnd(0, "a", ok(), Check.PASSED), vote("a", GOOD))
    assert report == Report(0, ok())  # the first run, though run 1 ended first


def test_a_wrong_output_calls_a_third_run_which_decides():
    book, vote = voter()
    plan = RunPlan("j", replicated=True)
    assert plan.run_ended(RunEnd(0, "cheat", ok(BAD), Check.PASSED), vote("cheat", BAD)) is None
    again = plan.run_ended(RunEnd(1, "honest", ok(), Check.PASSED), vote("honest", GOOD))
    assert again == StartRun(frozenset({"cheat", "honest"}))
    report = plan.run_ended(RunEnd(2, "third", ok(), Check.PASSED), vote("third", GOOD))
    assert report == Report(1, ok())  # the honest run's result, never the cheat's
    assert book.faulty("j", "cheat") and book.expectation("j", "third") is not None


def test_three_different_outputs_end_the_job_failed():
    _, vote = voter()
    plan = RunPlan("j", replicated=True)
    plan.run_ended(RunEnd(0, "a", ok("1" * 64), Check.PASSED), vote("a", "1" * 64))
    plan.run_ended(RunEnd(1, "b", ok("2" * 64), Check.PASSED), vote("b", "2" * 64))
    report = plan.run_ended(RunEnd(2, "c", ok("3" * 64), Check.PASSED), vote("c", "3" * 64))
    assert isinstance(report, Report) and report.run is None
    assert report.result.status is JobStatus.FAILED and "disagree" in report.result.error


def test_a_replica_that_finds_no_worker_leaves_the_other_result_paid_as_unchecked():
    _, vote = voter()
    plan = RunPlan("j", replicated=True)
    refused = JobResult("j", JobStatus.REFUSED, error="no capable peer accepted the job")
    assert plan.run_ended(RunEnd(1, "", refused, Check.NONE), None) is None  # run 0 still going
    assert plan.abandoned
    report = plan.run_ended(RunEnd(0, "a", ok(), Check.PASSED), vote("a", GOOD))
    assert report == Report(0, ok(), pay=(0,))


def test_a_replica_whose_output_fails_its_check_is_replaced():
    _, vote = voter()
    plan = RunPlan("j", replicated=True)
    assert plan.run_ended(RunEnd(0, "a", ok(), Check.PASSED), vote("a", GOOD)) is None
    again = plan.run_ended(RunEnd(1, "b", ok(), Check.FAILED, "missing"), None)
    assert again == StartRun(frozenset({"a", "b"}))
    assert plan.run_ended(RunEnd(2, "c", ok(), Check.PASSED), vote("c", GOOD)) == Report(0, ok())


def test_cancel_stops_every_run_and_later_ends_change_nothing():
    plan = RunPlan("j", replicated=True)
    assert plan.cancel() == Report(None, None, stop=(0, 1))
    assert plan.run_ended(RunEnd(0, "a", ok(), Check.PASSED), None) is None
    assert plan.cancel() is None


# ----------------------------------------------------------------------------- capacity ranking


def test_distrusted_peers_rank_last_and_excluded_ones_not_at_all():
    table = cap.CapacityTable()
    for peer in ("near-cheat", "far", "outcast"):
        table.apply(advert(peer, gpus=()), 0.0)
    rtts = {"near-cheat": 1.0, "far": 300.0, "outcast": 1.0}
    cheat = cp.Standing(mismatched=1)
    outcast = cp.Standing(mismatched=5)
    scores = {"near-cheat": cp.reputation(cheat), "far": 0.5, "outcast": cp.reputation(outcast)}
    ranked = table.capable(cap.Requirements(), now=1.0, rtt=rtts.get, rng=random.Random(1),
                           reputation=scores.__getitem__)
    assert [c.peer_id for c in ranked] == ["far", "near-cheat"]
    assert ranked[1].cost_ms == 1.0 + cp.reputation_cost_ms(scores["near-cheat"]) > 300.0
    assert ranked[1].to_json()["reputation"] == round(scores["near-cheat"], 4)
    neutral = table.capable(cap.Requirements(), now=1.0, rtt=rtts.get, rng=random.Random(1))
    assert [c.peer_id for c in neutral][-1] == "far"  # without reputations, distance decides
    assert cap.distrust_ms(0.5) == 0.0 and cap.distrust_ms(0.05) is None


def test_a_failed_check_refuses_the_workers_claim():
    book = cp.PayerBook(cp.RedundancyPolicy())
    book.checked("j", "w", cp.Expectation(b"h" * 32, "cpu", 1.0), replicated=False)
    book.failed("j", "w")
    assert book.expectation("j", "w") is None and book.faulty("j", "w")


# ----------------------------------------------------------------------------- the worker's claim


async def test_the_worker_claims_only_for_results_its_submitter_accepted(tmp_path):
    files, runner = MemoryFiles(), FakeRunner()
    claims: list[tuple[str, str]] = []

    class Judge(Submitter):
        async def call(self, peer, request, reply_types, _timeout):  # type: ignore[no-untyped-def]
            reply = await super().call(peer, request, reply_types, _timeout)
            if isinstance(request, jp.Result):  # only "mine" is taken as its job's result
                return jp.ResultAck(job_id=request.job_id, accepted=request.job_id == "mine")
            return reply

    sub = Judge()

    async def on_accepted(submitter: str, msg: jp.Result) -> None:
        claims.append((submitter, msg.job_id))

    ex = Executor("W", tmp_path, files, sub.call, lambda: WorkerLimits(slots=1, max_queued=4),
                  runner=runner, on_accepted=on_accepted)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(ex.run)
            await offer_to(ex, files, "mine")
            await offer_to(ex, files, "stale")
            await sub.wait_for(lambda: len(sub.results) == 2)
            await until(lambda: not ex.pending)
            nursery.cancel_scope.cancel()
    assert claims == [("S", "mine")]
