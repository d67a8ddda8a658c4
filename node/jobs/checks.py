"""Checked outputs and the credit hooks of the jobs service.

Submitter side (:class:`OutputChecks`): a worker's ``ok`` result is believed only once its
output has been fetched from storage and hashes to what the result names. What the check
finds goes to the credits service: ``job_checked`` (with the device kind and the most
seconds this node pays for) or ``job_failed``. The run rules that act on the check are
pure, in :mod:`poolai.node.jobs.runs`.

Worker side (:func:`claim_credit`): once a submitter accepts our result, claim credit for it;
the submitter countersigns only after its own check.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from poolai.mesh.errors import MeshError
from poolai.mesh.short_ids import short_id
from poolai.node.credits.policy import Verdict
from poolai.node.credits.receipts import device_of
from poolai.node.jobs import protocol as jp
from poolai.node.jobs.files import Files, FileTransferError
from poolai.node.jobs.runs import Check, RunEnd
from poolai.node.jobs.spec import Device, InvalidJob, JobStatus
from poolai.node.jobs.submission import Run, Submission

if TYPE_CHECKING:
    from poolai.node.capacity.rules import CapacityTable
    from poolai.node.credits.service import CreditsService

log = logging.getLogger(__name__)

CHECK_TIMEOUT_S = 600.0  # fetching a worker's output to check it
HASH_CHUNK = 1 << 20


class OutputChecks:
    """Fetch and hash workers' outputs for the jobs this node submitted; report to credits.

    Outputs being checked are kept under ``outputs/<job>.run<i>.part``; the one reported
    to the user is moved to ``outputs/<job>.safetensors`` (the output route serves it).
    """

    def __init__(self, peer_id: str, files: Files, jobs_dir: Path, *,
                 credits: CreditsService | None = None, adverts: CapacityTable | None = None) -> None:
        """``credits`` hears every check (None: nobody is paid); ``adverts`` gives a
        worker's advertised cores, to bound the CPU-seconds it may claim (None: one core)."""
        self.peer_id = peer_id
        self.credits = credits
        self.adverts = adverts
        self.files = files
        self.dir = jobs_dir / "outputs"

    def output_path(self, job_id: str) -> Path:
        return self.dir / f"{job_id}.safetensors"

    def check_path(self, sub: Submission, run: Run) -> Path:
        return self.dir / f"{sub.spec.job_id}.run{run.index}.part"

    async def check(self, sub: Submission, run: Run) -> tuple[RunEnd, Verdict | None]:
        """Check ``run``'s output and tell the credits service what we found; returns how the
        run ended and, for a replicated job's passed check, the vote's verdict."""
        result = run.dispatch.result
        worker = run.worker
        if result is None or result.status is not JobStatus.OK or result.output is None:
            run.check = Check.NONE.value
            return RunEnd(run.index, worker, result, Check.NONE), None
        if worker == self.peer_id:
            run.check = Check.OWN.value
            return RunEnd(run.index, worker, result, Check.OWN), None
        path = self.check_path(sub, run)
        try:
            await trio.to_thread.run_sync(lambda: path.parent.mkdir(parents=True, exist_ok=True))
            with trio.fail_after(CHECK_TIMEOUT_S):
                await self.files.get(run.output, path)
            digest, size = await trio.to_thread.run_sync(sha256_size, path)
            problem = "" if (digest, size) == (result.output.sha256, result.output.size) else (
                f"the stored output has sha256 {digest[:16]}… and {size} bytes, "
                f"not the {result.output.sha256[:16]}… and {result.output.size} its result names")
        except (FileTransferError, MeshError, OSError, trio.TooSlowError) as exc:
            problem = f"could not fetch the output: {exc}"
        credits = self.credits
        if problem:
            log.warning("job %s: the output of %s failed its check: %s", sub.spec.job_id,
                        short_id(worker), problem)
            run.check = f"{Check.FAILED.value}: {problem}"[:300]
            if credits is not None:
                credits.job_failed(worker, job_id=sub.spec.job_id)
            return RunEnd(run.index, worker, result, Check.FAILED, problem), None
        run.check = Check.PASSED.value
        verdict = None
        if credits is not None:
            verdict = credits.job_checked(job_id=sub.spec.job_id, worker=worker,
                                          result_hash=bytes.fromhex(result.output.sha256),
                                          **self.paid_for(sub, run), replicated=sub.plan.replicated)
        return RunEnd(run.index, worker, result, Check.PASSED), verdict

    def pay(self, sub: Submission, run: Run) -> None:
        """Pay ``run``'s worker as for an unreplicated job (a replica check that could not finish)."""
        credits = self.credits
        result = run.dispatch.result
        if credits is not None and result is not None and result.output is not None:
            credits.job_checked(job_id=sub.spec.job_id, worker=run.worker,
                                result_hash=bytes.fromhex(result.output.sha256),
                                **self.paid_for(sub, run), replicated=False)

    def paid_for(self, sub: Submission, run: Run) -> dict[str, Any]:
        """The device kind a worker may claim for ``run`` and the most seconds this node pays:
        a GPU only when the job needed one and the result names a CUDA device; the time from
        acceptance to result, times the worker's advertised cores for CPU work."""
        result = run.dispatch.result
        assert result is not None
        gpu = sub.spec.requirements.device is Device.GPU and device_of(result.device)[0] == "gpu"
        attempt = run.dispatch.attempts[(run.dispatch.result_attempt or 1) - 1]
        since = attempt.accepted_at if attempt.accepted_at is not None else attempt.offered_at
        seen = max(0.0, (run.received_at or trio.current_time()) - since)
        if gpu:
            return {"device": "gpu", "max_seconds": seen}
        entry = self.adverts.get(run.worker) if self.adverts is not None else None
        cores = entry.advert.cpu_cores if entry is not None else 1
        return {"device": "cpu", "max_seconds": seen * max(1, cores)}


async def claim_credit(credits: CreditsService | None, me: str, submitter: str, msg: jp.Result) -> None:
    """Worker side: ``submitter`` accepted our result ``msg``; claim credit for the work.

    GPU-seconds for a job that ran on a CUDA device, CPU-seconds otherwise (a simulated
    GPU is CPU work). The claim goes to the submitter for its countersignature, which it
    gives only once it has checked the output (credits_service).
    """
    if credits is None or submitter == me:
        return
    try:
        result = jp.parse_result(msg)
    except InvalidJob:
        return
    if result.status is not JobStatus.OK or result.output is None:
        return
    kind, _ = device_of(result.device)
    seconds = msg.gpu_s if kind == "gpu" else result.timings.cpu_s
    try:
        await credits.claim_job(job_id=msg.job_id, submitter=submitter, device=result.device,
                                seconds=seconds, result_hash=bytes.fromhex(result.output.sha256))
    except (ValueError, MeshError) as exc:
        log.warning("job %s: no credit claimed from %s: %s", msg.job_id, short_id(submitter), exc)


def sha256_size(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size
