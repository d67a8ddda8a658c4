"""What a worker node keeps of the jobs it accepted: ``<data>/jobs/worker.json``.

A restarted node re-queues every job it held and sends every result not yet
acknowledged (:class:`~poolai.node.jobs.executor.Executor` reads and writes the file;
this module is its format, pure). Version 1, JSON::

    {"version": 1,
     "jobs": [{"submitter", "job_id", "attempt", "enqueued_at", "seq", "spec", "files"}],
     "results": [{"submitter", "finished_at", "message": {<jobs.result fields>}}]}

``spec`` is the job spec as its submitter sent it (JSON text); a job or result that no
longer parses is dropped with a reason, never the whole file.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import trio

from poolai.node.jobs import protocol as jp
from poolai.node.jobs.dispatch import WorkState
from poolai.node.jobs.queue import WorkItem
from poolai.node.jobs.spec import InvalidJob, decode_job

STATE_FILE = "worker.json"
STATE_VERSION = 1
MAX_STATE_BYTES = 64 << 20


@dataclass
class Held:
    """One job this node accepted, from offer to acknowledged result."""

    item: WorkItem
    spec: bytes
    files: dict[str, str]
    state: WorkState = WorkState.QUEUED
    scope: trio.CancelScope | None = None
    stopped: bool = False  # the submitter no longer wants it


@dataclass
class Pending:
    """A finished attempt's result, waiting for its submitter's acknowledgement."""

    submitter: str
    message: jp.Result
    finished_at: float
    next_try: float = 0.0
    tries: int = 0


def encode_state(held: Iterable[Held], pending: Iterable[Pending]) -> bytes:
    """The file's bytes for the jobs held (those not stopped) and the results pending."""
    jobs = [{"submitter": h.item.submitter, "job_id": h.item.job_id, "attempt": h.item.attempt,
             "enqueued_at": h.item.enqueued_at, "seq": h.item.seq, "spec": h.spec.decode(),
             "files": h.files} for h in held if not h.stopped]
    results = [{"submitter": p.submitter, "finished_at": p.finished_at,
                "message": {f.name: getattr(p.message, f.name) for f in dataclasses.fields(p.message)}}
               for p in pending]
    return json.dumps({"version": STATE_VERSION, "jobs": jobs, "results": results}).encode()


def decode_state(data: bytes, priority_of: Callable[[str], int]
                 ) -> tuple[list[Held], dict[tuple[str, str], Pending], list[str]]:
    """The jobs and results in ``data``, and why any entry was dropped. ``priority_of``
    ranks a submitter now (its credit may have changed since the file was written).
    Raises ValueError when the file as a whole is unreadable or of another version."""
    doc = json.loads(data)
    if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION:
        raise ValueError(f"unknown version {doc.get('version') if isinstance(doc, dict) else doc!r}")
    jobs, results = doc.get("jobs", []), doc.get("results", [])
    if not isinstance(jobs, list) or not isinstance(results, list):
        raise ValueError("jobs and results must be lists")
    held: list[Held] = []
    pending: dict[tuple[str, str], Pending] = {}
    problems: list[str] = []
    for raw in jobs:
        try:
            spec = raw["spec"].encode()
            job = decode_job(spec)
            item = WorkItem(raw["submitter"], job.job_id, int(raw["attempt"]),
                            priority_of(raw["submitter"]),
                            job.requirements, float(raw["enqueued_at"]), int(raw["seq"]))
            files = {str(k): str(v) for k, v in raw["files"].items()}
        except (KeyError, TypeError, ValueError, AttributeError, InvalidJob) as exc:
            problems.append(f"a malformed job: {exc}")
            continue
        held.append(Held(item, spec, files))
    for raw in results:
        try:
            message = jp.Result(**raw["message"])
            pending[(raw["submitter"], message.job_id)] = Pending(
                raw["submitter"], message, float(raw["finished_at"]))
        except (KeyError, TypeError, ValueError) as exc:
            problems.append(f"a malformed result: {exc}")
    return held, pending, problems
