"""What a submitter keeps about one job it submitted: its runs, and its status document.

A job runs as one or more *runs* (:mod:`poolai.node.jobs.runs`), each driven by its own
:class:`~poolai.node.jobs.dispatch.Dispatch`. On the wire, run ``r``'s ``n``-th offer is attempt
``r * RUN_STRIDE + n``, so a job that runs once numbers its attempts 1, 2, … as before and
a worker's report names the run it belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import trio

from poolai.node.jobs.dispatch import Dispatch, Phase
from poolai.node.jobs.runs import RunPlan
from poolai.node.jobs.spec import JobResult, JobSpec, JobStatus, result_to_dict

RUN_STRIDE = 16384  # wire attempt = run * RUN_STRIDE + the run's own attempt number


@dataclass
class Run:
    """One run of a job: its dispatch machine and what its worker returned."""

    index: int
    dispatch: Dispatch
    worker: str = ""  # peer whose result this run accepted
    output: str = ""  # the output's storage id
    log_tail: str = ""
    gpu_s: float = 0.0
    received_at: float | None = None  # trio clock, when the accepted result arrived
    check: str = ""  # "", then a job_runs.Check value (with the reason when it failed)
    wake: trio.Event = field(default_factory=trio.Event)

    def wire(self, attempt: int) -> int:
        return self.index * RUN_STRIDE + attempt

    def local(self, attempt: int) -> int:
        """This run's own number for wire ``attempt`` (0, which no attempt has, if not ours)."""
        n = attempt - self.index * RUN_STRIDE
        return n if 1 <= n <= RUN_STRIDE else 0


@dataclass
class Submission:
    """A job this node submitted, and everything its status page shows."""

    spec: JobSpec
    files: dict[str, str]
    plan: RunPlan
    runs: list[Run]
    submitted_at: float  # wall clock
    running_at: float | None = None  # when a worker first said "running"
    finished_at: float | None = None
    result: JobResult | None = None  # the job's one reported result
    chosen: int = 0  # the run it came from
    finished: trio.Event = field(default_factory=trio.Event)

    @property
    def done(self) -> bool:
        return self.finished.is_set()

    @property
    def dispatch(self) -> Dispatch:
        """The dispatch machine shown: the reported run's, or the first run's until then."""
        return self.runs[self.chosen].dispatch

    @property
    def worker(self) -> str:
        return self.runs[self.chosen].worker if self.done else ""

    @property
    def output(self) -> str:
        ok = self.result is not None and self.result.status is JobStatus.OK
        return self.runs[self.chosen].output if ok else ""

    def run_of(self, attempt: int) -> Run | None:
        index = (attempt - 1) // RUN_STRIDE
        return self.runs[index] if 0 <= index < len(self.runs) else None

    def taken(self, run: Run) -> set[str]:
        """Peers another run of this job holds, held, or is offering it to: a worker keys a
        job by (submitter, job id), so no peer may hold two runs of one job."""
        peers = set(self.plan.workers())
        for other in self.runs:
            if other is not run:
                peers |= {a.peer for a in other.dispatch.attempts if a.accepted_at is not None}
                if (cur := other.dispatch.current) is not None:
                    peers.add(cur.peer)
        return peers

    def to_json(self, clock: float, wall: float) -> dict[str, Any]:
        d = self.dispatch
        chosen = self.runs[self.chosen]

        def at(t: float | None) -> float | None:  # dispatch times are on trio's clock
            return None if t is None else round(wall - (clock - t), 3)

        if self.done:
            phase = state = "done" if self.result is not None else "cancelled"
        elif not d.done:
            phase = d.phase.value
            state = d.worker_state.value if d.phase is Phase.ASSIGNED and d.worker_state else phase
        else:
            phase = state = "checking"  # the output is being checked or other runs go on
        return {
            "job_id": self.spec.job_id, "state": state, "phase": phase,
            "submitted_at": self.submitted_at, "running_at": self.running_at,
            "finished_at": self.finished_at, "worker": self.worker or
            (d.current.peer if d.current else ""),
            "retries_used": sum(r.dispatch.retries_used for r in self.runs),
            "retry_budget": d.retry_budget,
            "duplicates": sum(r.dispatch.duplicates for r in self.runs),
            "attempts": [{"attempt": chosen.wire(a.number), "peer": a.peer,
                          "offered_at": at(a.offered_at), "accepted_at": at(a.accepted_at),
                          "outcome": a.outcome} for a in d.attempts[-16:]],
            "refusals": dict(list(d.refusals.items())[:16]),
            "result": None if self.result is None else result_to_dict(self.result),
            "output_id": self.output, "log_tail": chosen.log_tail, "gpu_s": chosen.gpu_s,
            "replicated": self.plan.replicated,
            "runs": [{"run": r.index, "worker": r.worker or
                      (r.dispatch.current.peer if r.dispatch.current else ""),
                      "phase": r.dispatch.phase.value, "attempts": len(r.dispatch.attempts),
                      "result": r.dispatch.result.status.value if r.dispatch.result else None,
                      "check": r.check} for r in self.runs],
            "requirements": {"device": self.spec.requirements.device.value,
                             "min_gpu_memory_mib": self.spec.requirements.min_gpu_memory_mib},
        }
