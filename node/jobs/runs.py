"""The runs of one submitted job, and which result its submitter reports: pure.

A job normally runs once, on one worker. Each run is driven by its own
:class:`~poolai.node.jobs.dispatch.Dispatch`; this module decides what happens when a run ends.

* **Checked output.** The submitter fetches every ``ok`` run's output from storage and
  hashes it (``Check.PASSED``) before it believes the result. An output that is missing or
  not the bytes the result names (``Check.FAILED``) is never reported: the job runs again on
  a peer that has not run it, up to ``max_runs`` runs; after that it ends ``crashed``.
* **Replicated job** (BOINC-style, chosen by ``credit_policy.RedundancyPolicy``): two runs
  start at once on two different peers. Every passed check is a vote in the credits
  service's replica check, whose :class:`~poolai.node.credits.policy.Verdict` decides:
  AGREED reports the first agreeing run (runs still going are stopped), RUN_AGAIN starts
  one more run on a peer outside ``verdict.exclude``, INCONCLUSIVE ends the job ``failed``
  (no two outputs agree). Exactly one result is reported, whatever the number of runs.
* **A check that cannot finish.** When a replicated job's run ends without a vote (its
  result is not ``ok``, or no further run is allowed) the check is abandoned: once no run
  is going, the outputs that passed are reported if they agree (their workers are paid as
  for an unreplicated job, ``Report.pay``), a disagreement ends the job ``failed``, and
  with no output at all the first run's own result is the job's.

No I/O and no clock: the driver (:mod:`poolai.node.jobs.service`) reports each run's end
with :meth:`RunPlan.run_ended` and does what the returned decision says.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from poolai.mesh.short_ids import short_id
from poolai.node.credits.policy import Outcome, Verdict
from poolai.node.jobs.spec import JobResult, JobStatus

MAX_RUNS = 3  # runs of one job, all reasons together (credit_policy.RedundancyPolicy.max_runs)


class Check(StrEnum):
    """What the submitter found when it checked a run's output."""

    PASSED = "passed"  # fetched from storage, size and sha256 as the result names
    FAILED = "failed"  # missing, or other bytes than the result names
    OWN = "own"  # this node ran it itself: nothing to check
    NONE = "none"  # no output to check (the run's result is not ok, or it was cancelled)


@dataclass(frozen=True, slots=True)
class RunEnd:
    """How run ``run`` ended: its worker, its result (None: cancelled) and the check."""

    run: int
    worker: str
    result: JobResult | None
    check: Check
    detail: str = ""  # why the check failed

    @property
    def usable(self) -> bool:
        """An ``ok`` result whose output this node may hand to the user."""
        return (self.result is not None and self.result.status is JobStatus.OK
                and self.check in (Check.PASSED, Check.OWN))

    @property
    def output_hash(self) -> str:
        output = self.result.output if self.result is not None else None
        return output.sha256 if output is not None else ""


@dataclass(frozen=True, slots=True)
class StartRun:
    """Run the job once more, on a peer not in ``exclude`` (workers of earlier runs)."""

    exclude: frozenset[str]


@dataclass(frozen=True, slots=True)
class Report:
    """The job is over. ``run`` is the run whose result it is (None: ``result`` was composed
    here, or the job was cancelled when ``result`` is None too). ``pay``: runs whose workers
    are paid as for an unreplicated job; ``stop``: runs still going, to cancel."""

    run: int | None
    result: JobResult | None
    pay: tuple[int, ...] = ()
    stop: tuple[int, ...] = ()


Decision = StartRun | Report | None  # None: wait for the runs still going


class RunPlan:
    """The submitter's plan for one job's runs (see the module docstring for the rules)."""

    def __init__(self, job_id: str, *, replicated: bool, max_runs: int = MAX_RUNS) -> None:
        if max_runs < (2 if replicated else 1):
            raise ValueError("max_runs is too small for this job")
        self.job_id = job_id
        self.replicated = replicated
        self.max_runs = max_runs
        self.started = 2 if replicated else 1  # runs 0 .. started-1 exist
        self.ends: dict[int, RunEnd] = {}
        self.abandoned = False  # a replicated job whose check cannot finish
        self.report: Report | None = None

    @property
    def done(self) -> bool:
        return self.report is not None

    def active(self) -> list[int]:
        """Runs started and not ended."""
        return [i for i in range(self.started) if i not in self.ends]

    def workers(self) -> frozenset[str]:
        return frozenset(e.worker for e in self.ends.values() if e.worker)

    def cancel(self) -> Report | None:
        """The user cancelled: every run still going stops. None when the job had ended."""
        if self.report is not None:
            return None
        return self._report(Report(None, None, stop=tuple(self.active())))

    def run_ended(self, end: RunEnd, verdict: Verdict | None) -> Decision:
        """Run ``end.run`` ended. ``verdict`` is the replica check's answer to its vote
        (replicated jobs, passed checks only)."""
        if end.run in self.ends or not 0 <= end.run < self.started:
            return None
        self.ends[end.run] = end
        if self.report is not None or end.result is None:
            return None  # a run stopped after the job ended (or by a cancel)
        ok = end.result.status is JobStatus.OK
        if not self.replicated:
            if ok and end.check is Check.FAILED:
                return self._again() or self._report(Report(None, _unchecked(end)))
            return self._report(Report(end.run, end.result))
        if verdict is not None and verdict.outcome is Outcome.AGREED:
            pick = min(e.run for e in self.ends.values()
                       if e.worker in verdict.credited and e.usable)
            return self._report(Report(pick, self.ends[pick].result, stop=tuple(self.active())))
        if verdict is not None and verdict.outcome is Outcome.INCONCLUSIVE:
            return self._report(Report(None, self._disagreed(), stop=tuple(self.active())))
        voted = ok and end.check is Check.PASSED and verdict is not None
        wants_more = (voted and verdict.outcome is Outcome.RUN_AGAIN) or (ok and end.check is Check.FAILED)
        if wants_more and not self.abandoned:
            again = self._again()
            if again is not None:
                return again
        if not voted or wants_more:
            self.abandoned = True
        if self.active():
            return None
        return self._settle()

    # ------------------------------------------------------------------ helpers
    def _again(self) -> StartRun | None:
        if self.started >= self.max_runs:
            return None
        self.started += 1
        return StartRun(self.workers())

    def _settle(self) -> Report:
        """Nothing runs any more and the vote did not finish: report what can be trusted."""
        usable = [self.ends[i] for i in sorted(self.ends) if self.ends[i].usable]
        hashes = {e.output_hash for e in usable}
        if len(hashes) == 1:
            first = usable[0]
            return self._report(Report(first.run, first.result,
                                       pay=tuple(e.run for e in usable if e.check is Check.PASSED)))
        if len(hashes) > 1:
            return self._report(Report(None, self._disagreed()))
        ended = [self.ends[i] for i in sorted(self.ends) if self.ends[i].result is not None]
        own = [e for e in ended if e.result is not None and e.result.status is not JobStatus.OK]
        if own:
            return self._report(Report(own[0].run, own[0].result))
        return self._report(Report(None, _unchecked(ended[-1])))

    def _disagreed(self) -> JobResult:
        votes = sum(e.usable for e in self.ends.values())
        return JobResult(self.job_id, JobStatus.FAILED,
                         error=f"the outputs of {votes} runs on different peers disagree, so none "
                               "is reported (is the program deterministic?)")

    def _report(self, report: Report) -> Report:
        self.report = report
        return report


def _unchecked(end: RunEnd) -> JobResult:
    return JobResult(end.result.job_id if end.result else "", JobStatus.CRASHED,
                     error=f"the output of {short_id(end.worker)} failed the submitter's check: "
                           f"{end.detail}"[:2000])
