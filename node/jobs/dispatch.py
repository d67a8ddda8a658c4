"""Jobs on the mesh, the pure parts: the submitter's dispatch machine and the shared vocabulary.

No I/O, no trio, no clock: every method takes ``now`` (seconds on any monotonic
clock) and returns what the driver (:mod:`poolai.node.jobs.service`) must do.

**Submitter** (:class:`Dispatch`, one per submitted job)::

    SEEKING --offer--> OFFERING --accept--> ASSIGNED --final result--> DONE
       ^  ^               |                    |
       |  +---refuse------+                    | silent for lease_s: probe; no answer or
       |     unreachable                       | "unknown": the attempt is lost
       +---------------------------------------+ (retry budget permitting)

Rule 1: the first *final* result from any attempt this submitter dispatched wins;
everything after it is acknowledged as a duplicate and never reported. Rule 2: an
attempt is lost only by the submitter's own decision (lease, probe, or a retryable
result); a lost attempt that speaks up again while nobody else holds the job is
adopted back, so a restarted worker that kept its queue finishes the job.

Every lost attempt and every ``timed_out``/``crashed`` result spends one unit of the
job's ``retry_budget``; refusals and unreachable offers spend none. Offers are
bounded twice: ``max_offers`` in all, and ``max_unreachable`` distinct peers that
gave no answer (a table full of identities that are not nodes ends the job
instead of feeding it offers until the seek timeout).

The worker's queue is in :mod:`poolai.node.jobs.queue`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from poolai.mesh.short_ids import short_id
from poolai.node.jobs.spec import JobResult, JobStatus

# ----------------------------------------------------------------------------- shared vocabulary


class Phase(StrEnum):
    """Where a submitted job stands, as its submitter sees it."""

    SEEKING = "seeking"  # looking for a worker that accepts it
    OFFERING = "offering"  # an offer is in flight
    ASSIGNED = "assigned"  # a worker holds it (see Dispatch.worker_state)
    DONE = "done"  # a final result was accepted
    CANCELLED = "cancelled"


class WorkState(StrEnum):
    """Where a held job stands on its worker; reported in progress messages."""

    QUEUED = "queued"
    FETCHING = "fetching"  # program and inputs coming from storage
    RUNNING = "running"  # the worker process runs
    STORING = "storing"  # the output going to storage


class Refusal(StrEnum):
    """Why a worker declines an offer."""

    BUSY = "busy"  # queue full: try elsewhere, maybe here later
    INCAPABLE = "incapable"  # this node cannot meet the requirements
    INVALID = "invalid"  # the job itself is malformed: no worker will take it


RETRYABLE = frozenset({JobStatus.TIMED_OUT, JobStatus.CRASHED})


@dataclass(frozen=True, slots=True)
class SubmitterConfig:
    """Timings of the submitter's machine (seconds)."""

    lease_s: float = 3.0  # silence from a worker after which it is probed
    dead_s: float = 12.0  # silence after which a worker whose probes time out is lost
    requery_s: float = 0.25  # first pause before asking for candidates again; doubles per round
    max_requery_s: float = 4.0
    seek_timeout_s: float = 60.0  # no worker accepted within this: the job fails
    max_offers: int = 512  # offers per job, all rounds together (bounds its history)
    max_unreachable: int = 8  # distinct peers whose offer went unanswered before the job gives up

    def __post_init__(self) -> None:
        if min(self.lease_s, self.requery_s, self.max_requery_s, self.seek_timeout_s) <= 0:
            raise ValueError("submitter timings must be positive")
        if self.dead_s < self.lease_s:
            raise ValueError("dead_s must be at least lease_s")
        if self.max_offers < 1 or self.max_unreachable < 1:
            raise ValueError("max_offers and max_unreachable must be >= 1")


DEFAULT_SUBMITTER = SubmitterConfig()


# ----------------------------------------------------------------------------- submitter actions


@dataclass(frozen=True, slots=True)
class FindWorkers:
    """Ask the capacity table for capable peers, then call :meth:`Dispatch.candidates`."""


@dataclass(frozen=True, slots=True)
class SendOffer:
    """Offer the job to ``peer`` as ``attempt``; report the reply with accepted/refused/unreachable."""

    peer: str
    attempt: int


@dataclass(frozen=True, slots=True)
class Probe:
    """Ask ``peer`` about ``attempt``; report with :meth:`Dispatch.progress`, :meth:`Dispatch.lost`
    (the peer is unreachable or does not know the job) or :meth:`Dispatch.probe_timed_out`."""

    peer: str
    attempt: int


@dataclass(frozen=True, slots=True)
class SendCancel:
    """Tell ``peer`` to drop ``attempt`` (best effort: heartbeats also tell it)."""

    peer: str
    attempt: int


@dataclass(frozen=True, slots=True)
class Wait:
    """Nothing to do until an event arrives or ``until`` passes (None: only an event)."""

    until: float | None


@dataclass(frozen=True, slots=True)
class Finished:
    """The job is over; ``result`` is None only when it was cancelled."""

    result: JobResult | None


Action = FindWorkers | SendOffer | Probe | SendCancel | Wait | Finished


@dataclass(frozen=True, slots=True)
class Attempt:
    """One dispatch of the job to one worker."""

    number: int
    peer: str
    offered_at: float
    accepted_at: float | None = None
    outcome: str = ""  # "", "refused: …", "unreachable", "lost", a result status, "superseded"


# ----------------------------------------------------------------------------- submitter machine


class Dispatch:
    """The submitter's state for one job. See the module docstring for the rules."""

    def __init__(self, job_id: str, retry_budget: int, now: float,
                 config: SubmitterConfig = DEFAULT_SUBMITTER) -> None:
        self.job_id = job_id
        self.retry_budget = retry_budget
        self.config = config
        self.phase = Phase.SEEKING
        self.worker_state: WorkState | None = None
        self.attempts: list[Attempt] = []
        self.retries_used = 0
        self.result: JobResult | None = None
        self.result_attempt: int | None = None  # which attempt's result was accepted
        self.duplicates = 0  # results received after the accepted one
        self.refusals: dict[str, str] = {}  # peer -> latest reason, for the final error
        self._queue: list[str] = []  # candidates left to offer this round
        self._excluded: set[str] = set()  # incapable or lost peers: never offered again
        self._unreachable: set[str] = set()  # peers an offer of this job got no answer from
        self._queried_at: float | None = None
        self._rounds = 0  # candidate queries since seeking began
        self._seeking_since = now
        self._last_heard = now
        self._probing = False
        self._cur: int | None = None  # number of the attempt in flight
        self._cancels: list[SendCancel] = []

    # ------------------------------------------------------------------ queries
    @property
    def done(self) -> bool:
        return self.phase in (Phase.DONE, Phase.CANCELLED)

    @property
    def current(self) -> Attempt | None:
        """The attempt in flight (OFFERING or ASSIGNED), if any."""
        if self._cur is not None and self.phase in (Phase.OFFERING, Phase.ASSIGNED):
            return self.attempts[self._cur - 1]
        return None

    def attempt_of(self, peer: str, number: int) -> Attempt | None:
        """The attempt ``number`` if it was dispatched to ``peer``; None for anything else."""
        if 1 <= number <= len(self.attempts) and self.attempts[number - 1].peer == peer:
            return self.attempts[number - 1]
        return None

    # ------------------------------------------------------------------ the driver's loop
    def step(self, now: float) -> Action:
        """The next thing to do. Call again after doing it (or after the wait)."""
        if self._cancels:
            return self._cancels.pop(0)
        if self.phase is Phase.CANCELLED:
            return Finished(None)
        if self.phase is Phase.DONE:
            return Finished(self.result)
        if self.phase is Phase.ASSIGNED:
            deadline = self._last_heard + self.config.lease_s
            if self._probing:
                return Wait(None)
            if now >= deadline:
                self._probing = True
                cur = self.attempts[self._cur - 1]  # type: ignore[operator]
                return Probe(cur.peer, cur.number)
            return Wait(deadline)
        if self.phase is Phase.OFFERING:
            return Wait(None)
        # SEEKING
        out_of_offers = (len(self.attempts) >= self.config.max_offers
                         or len(self._unreachable) >= self.config.max_unreachable)
        if self._queue and not out_of_offers:
            peer = self._queue.pop(0)
            self.attempts.append(Attempt(len(self.attempts) + 1, peer, now))
            self.phase = Phase.OFFERING
            self._cur = len(self.attempts)
            return SendOffer(peer, self._cur)
        if now - self._seeking_since >= self.config.seek_timeout_s or out_of_offers:
            self._finish(JobResult(self.job_id, JobStatus.REFUSED, error=self._no_worker_error()))
            return Finished(self.result)
        if self._queried_at is None:
            self._rounds += 1
            return FindWorkers()
        pause = min(self.config.requery_s * 2 ** min(self._rounds - 1, 16), self.config.max_requery_s)
        retry_at = self._queried_at + pause
        if now >= retry_at:
            self._queried_at = None
            self._rounds += 1
            return FindWorkers()
        return Wait(min(retry_at, self._seeking_since + self.config.seek_timeout_s))

    def candidates(self, peers: Sequence[str], now: float) -> None:
        """The capacity table's ranked answer to :class:`FindWorkers` (best first)."""
        if self.phase is not Phase.SEEKING:
            return
        seen: set[str] = set()
        self._queue = []
        for p in peers:
            if p not in self._excluded and p not in seen:
                seen.add(p)
                self._queue.append(p)
        self._queried_at = now

    # ------------------------------------------------------------------ replies to offers
    def accepted(self, attempt: int, now: float) -> bool:
        """The worker took ``attempt``. False: the job moved on, so cancel it there."""
        att = self._record(attempt, accepted_at=now)
        if self.phase is Phase.ASSIGNED and attempt == self._cur:
            return True  # a heartbeat overtook this reply
        if self.phase is not Phase.OFFERING or attempt != self._cur:
            if att is not None and not self.done:
                self._set(attempt, outcome="superseded")
            return False
        self.phase = Phase.ASSIGNED
        self.worker_state = WorkState.QUEUED
        self._last_heard = now
        self._probing = False
        return True

    def refused(self, attempt: int, reason: Refusal, message: str, now: float) -> None:
        """The worker declined. INVALID ends the job: the spec is at fault, not the worker."""
        att = self._set(attempt, outcome=f"refused: {reason.value}")
        if att is None:
            return
        self.refusals[att.peer] = f"{reason.value}: {message}"[:300]
        if reason is Refusal.INCAPABLE:
            self._excluded.add(att.peer)
        if self.phase is Phase.OFFERING and attempt == self._cur:
            if reason is Refusal.INVALID:
                self._finish(JobResult(self.job_id, JobStatus.REFUSED, error=message))
            else:
                self._seek()

    def unreachable(self, attempt: int, now: float) -> None:
        """The offer got no answer (dial failed, timed out, protocol error)."""
        att = self._set(attempt, outcome="unreachable")
        if att is not None:
            self.refusals[att.peer] = "unreachable"
            self._unreachable.add(att.peer)
        if self.phase is Phase.OFFERING and attempt == self._cur:
            self._seek()

    # ------------------------------------------------------------------ reports from workers
    def progress(self, peer: str, attempt: int, state: WorkState, now: float) -> bool:
        """A heartbeat or probe answer. Returns whether the worker should keep the job."""
        att = self.attempt_of(peer, attempt)
        if att is None or self.done:
            return False
        cur = self.current
        if cur is not None and cur.number == attempt:
            if self.phase is Phase.OFFERING:  # the heartbeat overtook the accept reply
                self.accepted(attempt, now)
            self.worker_state = state
            self._last_heard = now
            self._probing = False
            return True
        if self.phase is Phase.SEEKING and att.outcome == "lost":
            # Rule 2: a restarted worker kept its queue; nobody else has the job.
            self._set(attempt, outcome="")
            self._excluded.discard(peer)
            self.phase = Phase.ASSIGNED
            self._cur = attempt
            self.worker_state = state
            self._last_heard = now
            self._probing = False
            self.retries_used = max(0, self.retries_used - 1)  # it was not lost after all
            return True
        return False

    def probe_timed_out(self, attempt: int, now: float) -> None:
        """The probe got no answer in time: the worker may be dead or just slow.

        It is lost once it has been silent for ``dead_s``; until then it is probed again.
        (A dead process refuses connections at once, which :meth:`lost` reports sooner.)
        """
        cur = self.current
        if cur is None or cur.number != attempt or self.phase is not Phase.ASSIGNED:
            return
        if now - self._last_heard >= self.config.dead_s:
            self.lost(attempt, now)
        else:
            self._probing = False

    def lost(self, attempt: int, now: float) -> None:
        """The probe found the worker dead or ignorant of the job: re-dispatch if allowed."""
        cur = self.current
        if cur is None or cur.number != attempt or self.phase is not Phase.ASSIGNED:
            return
        self._set(attempt, outcome="lost")
        self._excluded.add(cur.peer)
        self.refusals[cur.peer] = "lost"
        self._spend_retry(now, JobResult(self.job_id, JobStatus.CRASHED,
                                         error=f"worker {cur.peer} was lost and the retry "
                                               f"budget of {self.retry_budget} is spent"))

    def result_received(self, peer: str, attempt: int, result: JobResult, now: float) -> bool:
        """A worker's result. Returns True when it was accepted as this job's result.

        Rule 1 makes this idempotent: a re-delivered or late result returns False.
        """
        att = self.attempt_of(peer, attempt)
        if att is None or result.job_id != self.job_id:
            return False
        if self.done:
            self.duplicates += self.phase is Phase.DONE
            return False
        if att.outcome in RETRYABLE_OUTCOMES:
            return False  # this attempt already reported a retryable failure
        is_current = self.current is not None and self.current.number == attempt
        if result.status not in RETRYABLE:
            self._set(attempt, outcome=result.status.value)
            if self.current is not None and not is_current:
                self._cancel_current()
            self.result_attempt = attempt
            self._finish(result)
            return True
        self._set(attempt, outcome=result.status.value)
        if is_current:  # a stale attempt's failure changes nothing (a lost one was paid for)
            self._spend_retry(now, result)
            if self.phase is Phase.DONE:
                self.result_attempt = attempt
                return True
        return False

    def cancel(self, now: float) -> bool:
        """The user cancelled. False when the job had already ended."""
        if self.done:
            return False
        if self.current is not None:
            self._cancel_current()
        self.phase = Phase.CANCELLED
        return True

    # ------------------------------------------------------------------ helpers
    def _cancel_current(self) -> None:
        cur = self.attempts[self._cur - 1]  # type: ignore[operator]
        self._set(cur.number, outcome="superseded")
        self._cancels.append(SendCancel(cur.peer, cur.number))

    def _spend_retry(self, now: float, final: JobResult) -> None:
        self.retries_used += 1
        if self.retries_used > self.retry_budget:
            self._finish(final)
            return
        self._seek()
        self._seeking_since = now
        self._queried_at = None
        self._rounds = 0
        self._queue = []

    def _seek(self) -> None:
        self.phase = Phase.SEEKING
        self._cur = None
        self.worker_state = None

    def _finish(self, result: JobResult) -> None:
        self.phase = Phase.DONE
        self._cur = None
        self.worker_state = None
        self.result = result

    def _no_worker_error(self) -> str:
        reasons = "; ".join(f"{short_id(p)}: {r}" for p, r in list(self.refusals.items())[:8])
        gave_up = (f"; gave up after {len(self._unreachable)} unreachable peers"
                   if len(self._unreachable) >= self.config.max_unreachable else "")
        return ("no capable peer accepted the job ("
                f"{reasons or 'no peer in the capacity table meets its requirements'}){gave_up}")

    def _record(self, attempt: int, **changes: object) -> Attempt | None:
        if not 1 <= attempt <= len(self.attempts):
            return None
        att = replace(self.attempts[attempt - 1], **changes)  # type: ignore[arg-type]
        self.attempts[attempt - 1] = att
        return att

    def _set(self, attempt: int, *, outcome: str) -> Attempt | None:
        return self._record(attempt, outcome=outcome)


RETRYABLE_OUTCOMES = frozenset(s.value for s in RETRYABLE)
