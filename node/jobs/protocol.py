"""Wire messages of ``/poolai/job/1.0.0`` (request/response, see NETWORK.md "Jobs").

Submitter → worker: :class:`Offer` (→ :class:`Accept` | :class:`Refuse`),
:class:`Query` (→ :class:`Entry`, or ``not_found``), :class:`Cancel` (→ :class:`Cancelled`).
Worker → submitter: :class:`Progress` (→ :class:`ProgressAck`), :class:`Result`
(→ :class:`ResultAck`).

The schema checks here are structural (types, lengths, ranges). What the fields mean
is checked by :func:`parse_offer` and :func:`parse_result`, which turn a message into
validated job objects or raise :class:`~poolai.node.jobs.spec.InvalidJob`. Both sides
key a job by (submitter peer id, job id); the submitter is always the authenticated
peer of the connection, never a field a peer could forge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from poolai.mesh.wire import field, message
from poolai.node.jobs.dispatch import Refusal, WorkState
from poolai.node.jobs.files import FILE_ID
from poolai.node.jobs.spec import (
    MAX_SPEC_BYTES,
    InvalidJob,
    JobResult,
    JobSpec,
    JobStatus,
    decode_job,
    result_from_dict,
)

PROTOCOL = "/poolai/job/1.0.0"
MAX_FRAME = 256 * 1024  # a spec (≤ 64 KiB) or a result record (≤ 10,000 losses)
MAX_ATTEMPT = 1 << 16
MAX_BATCH = 256  # progress entries per message
MAX_LOG_TAIL = 4096

_JOB_ID = 64
_STATES = tuple(s.value for s in WorkState)


@message("job.offer")
class Offer:
    """Run this job. ``files`` maps each file name in the spec to its storage file id (hex)."""

    spec: bytes = field(max_len=MAX_SPEC_BYTES)  # jobspec.encode_job
    files: dict[str, str] = field(max_len=4)
    attempt: int = field(min=1, max=MAX_ATTEMPT)


@message("job.accept")
class Accept:
    job_id: str = field(max_len=_JOB_ID)
    attempt: int = field(min=1, max=MAX_ATTEMPT)
    ahead: int = field(min=0, max=1 << 20)  # jobs that run before it on this worker


@message("job.refuse")
class Refuse:
    job_id: str = field(max_len=_JOB_ID)
    reason: str = field(max_len=32)  # a Refusal value
    message: str = field(max_len=512)


@message("job.entry")
class Entry:
    """One held job's state (a progress entry, or the answer to a Query)."""

    job_id: str = field(max_len=_JOB_ID)
    attempt: int = field(min=1, max=MAX_ATTEMPT)
    state: str = field(max_len=16)  # a WorkState value


@message("job.progress")
class Progress:
    """Heartbeat: every job this worker holds for the receiving submitter (or one that changed)."""

    entries: tuple[Entry, ...] = field(max_len=MAX_BATCH)


@message("job.progress_ack")
class ProgressAck:
    """``keep[i]`` says whether the worker should go on with ``entries[i]``."""

    keep: tuple[bool, ...] = field(max_len=MAX_BATCH)


@message("job.result")
class Result:
    """The end of one attempt. ``output`` is the output's storage file id ("" when none)."""

    job_id: str = field(max_len=_JOB_ID)
    attempt: int = field(min=1, max=MAX_ATTEMPT)
    record: dict[str, Any] = field(max_len=16)  # jobspec.result_to_dict
    output: str = field(max_len=64)
    log_tail: str = field(max_len=MAX_LOG_TAIL)
    gpu_s: float = field(min=0.0, max=1e9)


@message("job.result_ack")
class ResultAck:
    """``accepted``: this result is the job's result; False: a duplicate or a stale attempt."""

    job_id: str = field(max_len=_JOB_ID)
    accepted: bool


@message("job.query")
class Query:
    job_id: str = field(max_len=_JOB_ID)


@message("job.cancel")
class Cancel:
    job_id: str = field(max_len=_JOB_ID)
    attempt: int = field(min=1, max=MAX_ATTEMPT)


@message("job.cancelled")
class Cancelled:
    job_id: str = field(max_len=_JOB_ID)
    found: bool


TO_WORKER = (Offer, Query, Cancel)
TO_SUBMITTER = (Progress, Result)
REQUESTS = TO_WORKER + TO_SUBMITTER


# ----------------------------------------------------------------------------- meaning


@dataclass(frozen=True, slots=True)
class ParsedOffer:
    job: JobSpec
    files: dict[str, str]  # name -> file id
    attempt: int


def parse_offer(offer: Offer, sender: str) -> ParsedOffer:
    """Validate an offer from ``sender``; raises InvalidJob naming what is wrong."""
    job = decode_job(offer.spec)
    if job.submitter != sender:
        raise InvalidJob("the job's submitter is not the peer that offered it")
    names = {f.name for f in job.files()}
    if len(names) != len(job.files()):
        raise InvalidJob("the job names one file twice")
    if set(offer.files) != names:
        raise InvalidJob(f"offer files {sorted(offer.files)} do not match the spec's {sorted(names)}")
    for name, file_id in offer.files.items():
        if FILE_ID.fullmatch(file_id) is None:
            raise InvalidJob(f"file id of {name!r} is not 64 lowercase hex digits")
    return ParsedOffer(job, dict(offer.files), offer.attempt)


def parse_state(text: str) -> WorkState:
    if text not in _STATES:
        raise InvalidJob(f"unknown job state {text!r}")
    return WorkState(text)


def parse_refusal(text: str) -> Refusal:
    try:
        return Refusal(text)
    except ValueError:
        raise InvalidJob(f"unknown refusal reason {text!r}") from None


def parse_result(msg: Result) -> JobResult:
    """The result record of ``msg``; raises InvalidJob if it is malformed or inconsistent."""
    result = result_from_dict(msg.record)
    if result.job_id != msg.job_id:
        raise InvalidJob("the result record names another job")
    if msg.output and FILE_ID.fullmatch(msg.output) is None:
        raise InvalidJob("output file id is not 64 lowercase hex digits")
    if result.status is JobStatus.OK and (result.output is None or not msg.output):
        raise InvalidJob("an ok result must name its output")
    return result
