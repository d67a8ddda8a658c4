"""What credits decide, the pure rules: what a submitter signs, redundant runs,
reputation and queue priority. (What the ledger keeps of other peers' receipts, and
why, is the other pure rule: :mod:`poolai.node.credits.retention`.)

**What a submitter pays for.** It countersigns a worker's job claim only when
:func:`payer_refusal` finds nothing wrong with it against the :class:`Expectation` it
recorded after checking the output: same output hash, same kind of device, no more
seconds than it saw the job take (plus 10% and 2 s), not finished in the future, and
a GPU class the worker advertises. :class:`PayerBook` keeps those expectations and
the replica votes, bounded.

**Redundant runs (BOINC-style).** A submitter picks a fraction of its jobs at random
(:meth:`RedundancyPolicy.choose`, with its own random source, so a worker cannot tell
a checked job from an unchecked one) and runs each on ``quorum`` different peers.
:class:`ReplicaCheck` groups the results by output hash: once ``quorum`` results agree,
those workers are credited and every worker whose output differs is *faulty*: its
receipt is never countersigned and its reputation drops. Two results that disagree
call for one more run on a third peer (up to ``max_runs``); if the runs are spent
without a quorum, every worker is faulty. Outputs are compared by hash, so a program
that is not bitwise reproducible across devices should be replicated on one device
class, or its output hashed in a canonical (rounded) form.

**Reputation.** A :class:`Standing` counts what this node has seen a peer do; its
score (:func:`reputation`) is a smoothed success ratio in (0, 1), 0.5 for a stranger,
with a mismatch or a failed check weighing four times an agreement. The capacity
table adds :func:`reputation_cost_ms` to a peer's routing cost, so doubtful peers are
chosen last and strangers are not penalised.

**Priority.** A worker orders its queue by the submitter's balance: :func:`priority_for`
gives one priority point per doubling of the balance in credits (negative for debt),
bounded to [:data:`PRIORITY_FLOOR`, :data:`PRIORITY_CEILING`]. Waiting adds one point
per ``aging_s`` (:func:`run_order`, the rule ``job_queue.WorkQueue`` applies), so a job is
overtaken only by jobs that arrive less than :func:`max_overtake_s` after it: no
submitter starves, however poor.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Protocol, TypeVar

from poolai.mesh.bounded import CappedDict
from poolai.node.credits.receipts import EPOCH_S, MILLI, Checked, JobClaim, StorageClaim

# ----------------------------------------------------------------------------- paying

SECONDS_SLACK = 1.1
SECONDS_GRACE = 2.0
MAX_SKEW_S = 300.0  # clocks of worker and submitter may differ this much


@dataclass(frozen=True, slots=True)
class Expectation:
    """A result the submitter checked: what a worker's claim for it must match."""

    result_hash: bytes
    device: str  # "gpu" or "cpu", as the job required
    max_seconds: float  # what the submitter saw the job take (x cores for a CPU job)


def payer_refusal(claim: JobClaim, expected: Expectation, *, now: float,
                  advertised: set[str] | None) -> str | None:
    """Why the submitter must not countersign ``claim``, or None when it may.

    ``advertised`` is the set of GPU names in the worker's capacity advert (None: unknown).
    """
    if claim.result_hash != expected.result_hash:
        return "the result hash is not the output this node checked"
    if claim.device != expected.device:
        return f"the job ran on {expected.device}, not {claim.device}"
    if claim.seconds > expected.max_seconds * SECONDS_SLACK + SECONDS_GRACE:
        return f"{claim.seconds:.1f} s claimed, at most {expected.max_seconds:.1f} s seen"
    if claim.finished_at > now + MAX_SKEW_S:
        return "the claim finishes in the future"
    if claim.device == "gpu" and advertised is not None and claim.device_class not in advertised:
        return f"{claim.device_class!r} is not a GPU the worker advertises"
    return None


# ----------------------------------------------------------------------------- countersigning


class Countersign(StrEnum):
    """What to do with a peer's request to countersign a receipt (:func:`countersign_rule`)."""

    SIGN = "sign"  # add our signature and keep the receipt
    CHECK_JOB = "check_job"  # we pay for a job: sign once our own check of its output agrees
    RESEND = "resend"  # we signed this very receipt before and the reply was lost
    REFUSED = "refused"  # with the reason to send back


def countersign_rule(checked: Checked, *, me: str, peer: str, held: Checked | None,
                     now: float) -> tuple[Countersign, str]:
    """Whether this node (``me``) countersigns ``checked`` for ``peer``, and why not.

    Only a party to the receipt signs it, and only at the other party's request; a claim
    already paid by a receipt is not paid again (the same receipt is sent back: its reply
    was lost); each role signs in its turn: the earner of storage credit countersigns the
    owner's claim, the payer of a job countersigns the worker's claim once its check of
    the output agrees (``CHECK_JOB``); a storage epoch may not begin in the future (beyond
    :data:`MAX_SKEW_S` of clock skew, as for job claims).
    """
    parties = (checked.earner, checked.payer)
    if me not in parties or peer not in parties:
        return Countersign.REFUSED, "only the other party may ask for a signature"
    if held is not None:
        if held.receipt.body == checked.receipt.body:
            return Countersign.RESEND, ""
        return Countersign.REFUSED, "this claim is already paid by another receipt"
    if checked.complete:
        return Countersign.REFUSED, "the receipt is already signed by both parties"
    if isinstance(checked.claim, JobClaim) and checked.payer == me:
        return Countersign.CHECK_JOB, ""
    if not (isinstance(checked.claim, StorageClaim) and checked.earner == me):
        return Countersign.REFUSED, "this role signs first, it does not countersign"
    if checked.claim.epoch * EPOCH_S > now + MAX_SKEW_S:
        return Countersign.REFUSED, "the epoch has not begun"
    return Countersign.SIGN, ""


# ----------------------------------------------------------------------------- redundancy


@dataclass(frozen=True, slots=True)
class RedundancyPolicy:
    """How many jobs are checked by running them more than once."""

    fraction: float = 0.05  # of a submitter's jobs, chosen at random
    quorum: int = 2  # agreeing results needed to credit anyone
    max_runs: int = 3  # runs of one job before the check gives up

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError("redundancy fraction must be in 0..1")
        if self.quorum < 2 or self.max_runs < self.quorum:
            raise ValueError("quorum must be >= 2 and max_runs >= quorum")

    def choose(self, rng: random.Random) -> bool:
        """Whether to replicate the next job (draw from the submitter's private ``rng``)."""
        return rng.random() < self.fraction


class Outcome(StrEnum):
    PENDING = "pending"  # fewer than quorum results so far
    AGREED = "agreed"  # a quorum agrees: credit it, the rest are faulty
    RUN_AGAIN = "run_again"  # results disagree: run once more on a peer not in ``exclude``
    INCONCLUSIVE = "inconclusive"  # runs spent without a quorum: nobody is credited


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Outcome
    result_hash: bytes | None = None  # the agreed output
    credited: frozenset[str] = frozenset()
    faulty: frozenset[str] = frozenset()
    exclude: frozenset[str] = frozenset()  # workers that already ran the job


class ReplicaCheck:
    """The submitter's comparison of one replicated job's results."""

    def __init__(self, job_id: str, policy: RedundancyPolicy = RedundancyPolicy()) -> None:
        self.job_id = job_id
        self.policy = policy
        self.results: dict[str, bytes] = {}  # worker -> output hash, first report wins

    def add(self, worker: str, result_hash: bytes) -> Verdict:
        """Record ``worker``'s result (a repeat report is ignored) and decide."""
        self.results.setdefault(worker, result_hash)
        return self.verdict()

    def verdict(self) -> Verdict:
        groups: dict[bytes, set[str]] = {}
        for worker, digest in self.results.items():
            groups.setdefault(digest, set()).add(worker)
        everyone = frozenset(self.results)
        winners = [(d, w) for d, w in groups.items() if len(w) >= self.policy.quorum]
        if winners:
            digest, workers = min(winners, key=lambda dw: (-len(dw[1]), dw[0]))
            return Verdict(Outcome.AGREED, digest, frozenset(workers), everyone - workers, everyone)
        if len(self.results) < self.policy.quorum:
            return Verdict(Outcome.PENDING, exclude=everyone)
        if len(self.results) < self.policy.max_runs:
            return Verdict(Outcome.RUN_AGAIN, exclude=everyone)
        return Verdict(Outcome.INCONCLUSIVE, faulty=everyone, exclude=everyone)


class PayerBook:
    """A submitter's memory of the results it checked: which claims it will countersign.

    :meth:`checked` records a checked result and returns the replica verdict (for a
    replicated job) and the reputation events it implies; :meth:`expectation` is what a
    worker's claim must match (None: not known, or that worker's output was voted down,
    see :meth:`faulty`). Bounded: past ``max_entries`` the oldest entries are forgotten.
    """

    def __init__(self, policy: RedundancyPolicy, max_entries: int = 10_000) -> None:
        self.policy = policy
        self.max_entries = max_entries
        self._expected: CappedDict[tuple[str, str], Expectation] = CappedDict(max_entries)  # (job, worker)
        self._faulty: CappedDict[tuple[str, str], None] = CappedDict(max_entries)
        self._checks: CappedDict[str, tuple[ReplicaCheck, dict[str, Expectation], set[str]]] = CappedDict(
            max_entries)

    def checked(self, job_id: str, worker: str, expected: Expectation, *, replicated: bool
                ) -> tuple[Verdict | None, list[tuple[str, Event]]]:
        if not replicated:
            self._expected.put((job_id, worker), expected)
            return None, [(worker, Event.VERIFIED)]
        entry = self._checks.get(job_id)
        if entry is None:
            entry = (ReplicaCheck(job_id, self.policy), {}, set())
            self._checks.put(job_id, entry)
        check, expectations, judged = entry
        expectations.setdefault(worker, expected)
        verdict = check.add(worker, expected.result_hash)
        events: list[tuple[str, Event]] = []
        if verdict.outcome in (Outcome.AGREED, Outcome.INCONCLUSIVE):
            for peer in sorted((verdict.credited | verdict.faulty) - judged):
                judged.add(peer)
                if peer in verdict.credited:
                    self._expected.put((job_id, peer), expectations[peer])
                    events.append((peer, Event.AGREED))
                else:
                    self._faulty.put((job_id, peer), None)
                    events.append((peer, Event.MISMATCHED))
        return verdict, events

    def failed(self, job_id: str, worker: str) -> None:
        """``worker``'s output for ``job_id`` failed the check: its claim is never signed."""
        self._expected.pop((job_id, worker), None)
        self._faulty.put((job_id, worker), None)

    def expectation(self, job_id: str, worker: str) -> Expectation | None:
        return self._expected.get((job_id, worker))

    def faulty(self, job_id: str, worker: str) -> bool:
        return (job_id, worker) in self._faulty


# ----------------------------------------------------------------------------- reputation

NEUTRAL = 0.5
MISMATCH_WEIGHT = 4  # one bad result outweighs four good ones
VERIFIED_WEIGHT = 0.1  # a countersigned result the submitter only hash-checked
REPUTATION_PENALTY_MS = 1000.0  # routing cost added at score 0
EXCLUDE_BELOW = 0.1


class Event(StrEnum):
    VERIFIED = "verified"  # its result passed the submitter's check
    AGREED = "agreed"  # its output agreed with a replica quorum
    MISMATCHED = "mismatched"  # its output was outvoted, or no quorum formed
    FAILED = "failed"  # its result failed the check (output missing or hash wrong)


@dataclass(frozen=True, slots=True)
class Standing:
    """What this node has seen one peer do."""

    verified: int = 0
    agreed: int = 0
    mismatched: int = 0
    failed: int = 0

    def after(self, event: Event) -> Standing:
        name = event.value
        return replace(self, **{name: getattr(self, name) + 1})


def reputation(standing: Standing) -> float:
    """A score in (0, 1): 0.5 for a stranger, towards 1 with agreements, towards 0 with faults."""
    good = standing.agreed + VERIFIED_WEIGHT * standing.verified
    bad = standing.mismatched + standing.failed
    return (good + 1.0) / (good + MISMATCH_WEIGHT * bad + 2.0)


def reputation_cost_ms(score: float) -> float:
    """What the capacity table adds to a peer's routing cost: 0 at or above neutral."""
    return max(0.0, NEUTRAL - score) / NEUTRAL * REPUTATION_PENALTY_MS


def excluded(score: float) -> bool:
    """Whether a peer has lost so much trust that jobs should not be routed to it at all."""
    return score < EXCLUDE_BELOW


# ----------------------------------------------------------------------------- priority

PRIORITY_FLOOR = -8
PRIORITY_CEILING = 16


def priority_for(balance_milli: int) -> int:
    """A submitter's queue priority: +1 per doubling of its balance in credits, bounded."""
    if balance_milli >= 0:
        return min(PRIORITY_CEILING, (balance_milli // MILLI).bit_length())
    return max(PRIORITY_FLOOR, -((-balance_milli) // MILLI).bit_length())


def max_overtake_s(aging_s: float) -> float:
    """Jobs arriving later than this after a job never run before it (the starvation bound)."""
    return (PRIORITY_CEILING - PRIORITY_FLOOR) * aging_s


class Waiting(Protocol):
    @property
    def priority(self) -> int: ...
    @property
    def enqueued_at(self) -> float: ...
    @property
    def seq(self) -> int: ...


def effective_priority(item: Waiting, now: float, aging_s: float) -> float:
    return item.priority + max(0.0, now - item.enqueued_at) / aging_s


W = TypeVar("W", bound=Waiting)


def run_order(items: Iterable[W], now: float, aging_s: float) -> list[W]:
    """Queued jobs, next to run first: highest effective priority, then admission order."""
    return sorted(items, key=lambda i: (-effective_priority(i, now, aging_s), i.seq))
