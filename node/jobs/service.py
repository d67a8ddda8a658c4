"""The "jobs" node service: submit jobs to the mesh, run the ones offered to this node.

Submitter side (here): :meth:`JobService.submit` validates a job, and one task per job
drives its :class:`~poolai.node.jobs.dispatch.Dispatch` machine: ask the capacity table for
capable peers (nearest and least loaded first), offer on ``/poolai/job/1.0.0``, move
down the list on refusal, watch heartbeats, probe a silent worker and re-dispatch when
it is lost, and accept exactly one final result. Every ``ok`` output is fetched and
hashed before it is believed (:mod:`poolai.node.jobs.checks`); a job runs on more than one
peer when its output fails that check or when the credits service picks it for a redundant
run (the rules, pure, are in :mod:`poolai.node.jobs.runs`, the record of a job and its runs
in :mod:`poolai.node.jobs.submission`). The credits service hears of every check
(``job_checked``/``job_failed``); the worker side claims credit for each accepted result.

Worker side: :class:`~poolai.node.jobs.executor.Executor`. Offers, probes and cancels
from peers go to it; progress and results from workers go to the dispatch machines.
A message to this node itself (the nearest capable peer may be us) skips the network
but takes the same code path.

Local API (see NETWORK.md, section 7): ``GET /api/jobs``, ``GET /api/jobs/{id}``,
``GET /api/jobs/{id}/wait``; under ``/api/admin/jobs``: upload a file, submit, cancel,
download an output.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from poolai.mesh import rpc
from poolai.mesh.bounded import CappedDict
from poolai.mesh.errors import MeshError, RemoteError, RequestTimeout
from poolai.mesh.short_ids import short_id
from poolai.node.jobs import protocol as jp
from poolai.node.jobs.checks import OutputChecks, claim_credit
from poolai.node.jobs.dispatch import (
    DEFAULT_SUBMITTER,
    Dispatch,
    FindWorkers,
    Finished,
    Probe,
    Refusal,
    SendCancel,
    SendOffer,
    SubmitterConfig,
    Wait,
    WorkState,
)
from poolai.node.jobs.executor import Executor
from poolai.node.jobs.files import CachedFiles, Files, StorageFiles
from poolai.node.jobs.queue import GpuSlot, WorkerLimits
from poolai.node.jobs.runs import MAX_RUNS, Check, Report, RunPlan, StartRun
from poolai.node.jobs.sandbox import detect as detect_sandbox
from poolai.node.jobs.spec import (
    SPEC_VERSION,
    Device,
    InvalidJob,
    JobStatus,
    Requirements,
    encode_job,
    job_from_dict,
)
from poolai.node.jobs.submission import RUN_STRIDE, Run, Submission

if TYPE_CHECKING:
    from poolai.node.capacity.service import CapacityService
    from poolai.node.context import NodeContext
    from poolai.node.credits.service import CreditsService
    from poolai.node.files.service import StorageService

log = logging.getLogger(__name__)

OFFER_TIMEOUT_S = 5.0
PROBE_TIMEOUT_S = 2.5
CANCEL_TIMEOUT_S = 2.0
MAX_ACTIVE = 4096  # jobs this node drives at once
MAX_KEPT = 1024  # finished jobs remembered for status queries


class JobService:
    """Jobs on the mesh for one node. ``files`` is the storage seam (see :class:`Files`)."""

    name = "jobs"

    def __init__(self, ctx: NodeContext, *, capacity: CapacityService | None = None,
                 storage: StorageService | None = None, credits: CreditsService | None = None,
                 files: Files | None = None, config: SubmitterConfig = DEFAULT_SUBMITTER) -> None:
        """``capacity`` ranks workers and hears this node's load (None: offers go to this
        node and its connections); ``storage`` moves job files unless ``files`` replaces it;
        ``credits`` pays and is paid (None: no checks are paid, no run is replicated)."""
        if config.max_offers >= RUN_STRIDE:
            raise ValueError("max_offers must stay below RUN_STRIDE (attempt numbers name the run)")
        self.ctx = ctx
        self.host = ctx.host
        self.peer_id = ctx.host.peer_id
        self.capacity = capacity
        self.credits = credits
        self.config = config
        self.dir = ctx.data_dir / "jobs"
        self.files: Files = files if files is not None else StorageFiles(storage)
        self.cache = CachedFiles(self.files, self.dir / "cache")
        self.executor = Executor(self.peer_id, self.dir, self.cache, self.call, self._limits,
                                 on_load=self._advertise_load, priority_of=self._priority_of,
                                 on_accepted=functools.partial(claim_credit, credits, self.peer_id),
                                 unsandboxed_jobs=bool(getattr(ctx.config, "unsandboxed_jobs", False)),
                                 hidden=(ctx.data_dir,))
        self.checks = OutputChecks(self.peer_id, self.files, self.dir, credits=credits,
                                   adverts=capacity.table if capacity is not None else None)
        self.jobs: CappedDict[str, Submission] = CappedDict(MAX_KEPT)  # finished ones past MAX_KEPT go
        self._nursery: trio.Nursery | None = None

    def _priority_of(self, submitter: str) -> int:
        """Contributors' jobs first: the credits service ranks submitters by balance."""
        credits = self.credits
        return 0 if credits is None else int(credits.priority_of(submitter))

    # ------------------------------------------------------------------ NodeService
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        service = rpc.Service("jobs", self._handle, rpc.ServiceConfig(
            jp.REQUESTS, max_frame=jp.MAX_FRAME, handler_timeout=10.0, max_concurrent=256))
        self.host.serve(jp.PROTOCOL, service)
        self.executor.sandbox = sandbox = await trio.to_thread.run_sync(detect_sandbox)
        if sandbox.available:
            log.info("job sandbox: %s", sandbox.describe())
        elif self.executor.unsandboxed_jobs:
            log.warning("job sandbox unavailable: %s; peers' jobs run WITHOUT it "
                        "(unsandboxed_jobs = true)", sandbox.problem)
        else:
            log.warning("job sandbox unavailable: %s; peers' jobs are refused, this node's "
                        "own jobs still run (unsandboxed_jobs = true runs peers' jobs too)",
                        sandbox.problem)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.executor.run)
            task_status.started()

    def status(self) -> dict[str, Any]:
        clock, wall = trio.current_time(), time.time()
        submitted: dict[str, int] = {}
        for sub in self.jobs.values():
            state = sub.to_json(clock, wall)["state"]
            submitted[state] = submitted.get(state, 0) + 1
        worker = self.executor.snapshot()
        return {"submitted_by_state": submitted, **worker}


    # ------------------------------------------------------------------ submitting
    def submit(self, job: dict[str, Any], files: dict[str, str]) -> Submission:
        """Validate and start a job. ``job`` is a spec map without ``id``/``submitter``.

        Raises InvalidJob (naming the field) for a malformed job, and RuntimeError when
        this node drives too many jobs already.
        """
        if self._nursery is None:
            raise RuntimeError("the jobs service is not running")
        if not isinstance(job, dict) or {"id", "submitter"} & set(job):
            raise InvalidJob("the job map must not carry 'id' or 'submitter'")
        if not isinstance(files, dict):
            raise InvalidJob("files must map file names to storage ids")
        active = sum(not s.done for s in self.jobs.values())
        if active >= MAX_ACTIVE:
            raise RuntimeError(f"this node already drives {active} jobs")
        spec = job_from_dict({"version": SPEC_VERSION, **job, "id": secrets.token_hex(8),
                              "submitter": self.peer_id})
        jp.parse_offer(jp.Offer(spec=encode_job(spec), files=files, attempt=1), self.peer_id)
        credits = self.credits
        max_runs = MAX_RUNS if credits is None else min(credits.policy.max_runs,
                                                        jp.MAX_ATTEMPT // RUN_STRIDE)
        # Drawn for every job, so the draw reveals nothing; a check needs two other peers.
        replicated = credits is not None and credits.replicate() and len(
            self._checkers(spec.requirements)) >= 2
        plan = RunPlan(spec.job_id, replicated=replicated, max_runs=max_runs)
        sub = Submission(spec, dict(files), plan, [], time.time())
        sub.runs = [self._new_run(sub, i) for i in range(plan.started)]
        self.jobs[spec.job_id] = sub
        self._forget_old()
        self._nursery.start_soon(self._drive, sub)
        log.info("job %s submitted (%s, retry budget %d%s)", spec.job_id,
                 spec.requirements.device.value, spec.retry_budget,
                 ", replicated" if replicated else "")
        return sub

    def _new_run(self, sub: Submission, index: int) -> Run:
        return Run(index, Dispatch(sub.spec.job_id, sub.spec.retry_budget, trio.current_time(),
                                   self.config))

    def cancel(self, job_id: str) -> bool:
        """Cancel a job this node submitted; False if it had already ended. KeyError if unknown."""
        sub = self.jobs[job_id]
        report = sub.plan.cancel()
        if report is None:
            return False
        for run in sub.runs:
            run.dispatch.cancel(trio.current_time())
            run.wake.set()
        return True

    @property
    def draining(self) -> bool:
        return self.executor.draining

    @property
    def paused(self) -> bool:
        return self.executor.paused

    def set_draining(self, draining: bool) -> None:
        """Drain: refuse new offers; jobs already accepted here still run."""
        self.executor.draining = draining

    def set_paused(self, paused: bool) -> None:
        """Pause: refuse new offers and start no queued job; running jobs go on."""
        self.executor.set_paused(paused)

    def job_json(self, sub: Submission) -> dict[str, Any]:
        return sub.to_json(trio.current_time(), time.time())

    def _forget_old(self) -> None:
        for job_id, _ in self.jobs.trim(keep=lambda _, sub: not sub.done):
            _unlink(self.checks.output_path(job_id))

    async def _drive(self, sub: Submission) -> None:
        """Drive every run of ``sub`` until the plan reports the job's one result."""
        async with trio.open_nursery() as nursery:
            for run in sub.runs:
                nursery.start_soon(self._drive_run, sub, run, nursery)
        sub.finished_at = time.time()
        result = sub.result
        log.info("job %s %s%s", sub.spec.job_id, "done" if result else "cancelled",
                 f": {result.status.value} {result.error[:200]}" if result else "")
        for run in sub.runs:
            if run.index != sub.chosen or result is None or result.status is not JobStatus.OK:
                await trio.to_thread.run_sync(_unlink, self.checks.check_path(sub, run))
        sub.finished.set()

    async def _drive_run(self, sub: Submission, run: Run, nursery: trio.Nursery) -> None:
        d = run.dispatch
        while True:
            action = d.step(trio.current_time())
            if isinstance(action, Finished):
                break
            if isinstance(action, FindWorkers):
                taken = sub.taken(run) | ({self.peer_id} if sub.plan.replicated else set())
                d.candidates([p for p in self._candidates(sub.spec.requirements) if p not in taken],
                             trio.current_time())
            elif isinstance(action, SendOffer):
                await self._offer(sub, run, action)
            elif isinstance(action, Probe):
                await self._probe(sub, run, action)
            elif isinstance(action, SendCancel):
                await self._send_cancel(sub.spec.job_id, action.peer, run.wire(action.attempt))
            elif isinstance(action, Wait):
                with trio.move_on_at(math.inf if action.until is None else action.until):
                    await run.wake.wait()
                run.wake = trio.Event()
        end, verdict = await self.checks.check(sub, run)
        decision = sub.plan.run_ended(end, verdict)
        if isinstance(decision, StartRun):
            new = self._new_run(sub, len(sub.runs))
            sub.runs.append(new)
            log.info("job %s: run %d on a peer other than %s", sub.spec.job_id, new.index,
                     ", ".join(sorted(short_id(p) for p in decision.exclude)))
            nursery.start_soon(self._drive_run, sub, new, nursery)
        elif isinstance(decision, Report):
            await self._report(sub, decision)

    async def _report(self, sub: Submission, report: Report) -> None:
        """The plan decided: stop the runs still going, pay what it says, keep the output."""
        now = trio.current_time()
        for index in report.stop:
            sub.runs[index].dispatch.cancel(now)
            sub.runs[index].wake.set()
        for index in report.pay:
            self.checks.pay(sub, sub.runs[index])
        if report.run is not None:
            sub.chosen = report.run
            chosen = sub.runs[report.run]
            if chosen.check == Check.PASSED.value:
                await trio.to_thread.run_sync(os.replace, self.checks.check_path(sub, chosen),
                                              self.checks.output_path(sub.spec.job_id))
        sub.result = report.result
        if sub.plan.replicated and report.result is not None:
            log.info("job %s: replicated on %d peers; reporting %s", sub.spec.job_id, len(sub.runs),
                     f"run {report.run}" if report.run is not None else report.result.status.value)

    async def _offer(self, sub: Submission, run: Run, action: SendOffer) -> None:
        d = run.dispatch
        if action.peer in sub.taken(run):  # another run got there since the candidates were drawn
            d.refused(action.attempt, Refusal.BUSY, "it holds another run of this job",
                      trio.current_time())
            return
        offer = jp.Offer(spec=encode_job(sub.spec), files=sub.files, attempt=run.wire(action.attempt))
        try:
            reply = await self.call(action.peer, offer, (jp.Accept, jp.Refuse), OFFER_TIMEOUT_S)
        except MeshError as exc:
            log.info("job %s: offer to %s failed: %s", sub.spec.job_id, short_id(action.peer), exc)
            self._offer_went(action.peer, "timeout" if isinstance(exc, RequestTimeout) else "unreachable")
            d.unreachable(action.attempt, trio.current_time())
            return
        now = trio.current_time()
        if isinstance(reply, jp.Refuse):
            try:
                reason = jp.parse_refusal(reply.reason)
            except InvalidJob:
                self._offer_went(action.peer, "unreachable")
                d.unreachable(action.attempt, now)
                return
            log.info("job %s: %s refused: %s: %s", sub.spec.job_id, short_id(action.peer), reason.value,
                     reply.message)
            self._offer_went(action.peer, reason.value)
            d.refused(action.attempt, reason, reply.message, now)
            return
        self._offer_went(action.peer, None if reply.job_id == sub.spec.job_id else "unreachable")
        if reply.job_id != sub.spec.job_id or not d.accepted(action.attempt, now):
            await self._send_cancel(sub.spec.job_id, action.peer, run.wire(action.attempt))

    def _offer_went(self, peer: str, failure: str | None) -> None:
        """Tell the capacity table how an offer to ``peer`` went (None: accepted), so peers
        that fail offers lose rank for a while."""
        if self.capacity is None:
            return
        if failure is None:
            self.capacity.offer_accepted(peer)
        else:
            self.capacity.offer_failed(peer, failure)

    async def _probe(self, sub: Submission, run: Run, action: Probe) -> None:
        d = run.dispatch
        try:
            entry = await self.call(action.peer, jp.Query(job_id=sub.spec.job_id), (jp.Entry,),
                                    PROBE_TIMEOUT_S)
            state = jp.parse_state(entry.state)
        except RequestTimeout:
            log.info("job %s: worker %s did not answer a probe", sub.spec.job_id, short_id(action.peer))
            d.probe_timed_out(action.attempt, trio.current_time())
            return
        except (MeshError, InvalidJob) as exc:
            log.info("job %s: worker %s lost: %s", sub.spec.job_id, short_id(action.peer), exc)
            d.lost(action.attempt, trio.current_time())
            return
        if not d.progress(action.peer, run.local(entry.attempt), state, trio.current_time()):
            d.lost(action.attempt, trio.current_time())

    async def _send_cancel(self, job_id: str, peer: str, attempt: int) -> None:
        try:
            await self.call(peer, jp.Cancel(job_id=job_id, attempt=attempt), (jp.Cancelled,),
                            CANCEL_TIMEOUT_S)
        except MeshError as exc:
            log.debug("cancel of %s at %s failed: %s", job_id, short_id(peer), exc)

    def _checkers(self, req: Requirements) -> set[str]:
        """Other peers that could run a redundant run: candidates this node reached or the
        overlay vouches for (a peer only heard of through gossip may not exist)."""
        capacity = self.capacity
        others = set(self._candidates(req)) - {self.peer_id}
        return others if capacity is None else {p for p in others if capacity.admitted(p)}

    def _candidates(self, req: Requirements) -> list[str]:
        """Capable peers, best first: the capacity table's ranking; then peers that would queue."""
        capacity = self.capacity
        if capacity is None:
            return [self.peer_id, *self.host.member_peers()]
        from poolai.node.capacity import rules as cap
        creq = cap.Requirements()
        if req.device is Device.GPU:
            creq = cap.Requirements(gpus=1, gpu_mem=req.min_gpu_memory_mib << 20,
                                    compute_capability=req.min_compute_capability)
        given: dict[str, int] = {}  # offers out now, to spread a burst (see offer_order)
        for other in self.jobs.values():
            for run in other.runs:
                if (cur := run.dispatch.current) is not None:
                    given[cur.peer] = given.get(cur.peer, 0) + 1
        return capacity.offer_order(creq, given)

    # ------------------------------------------------------------------ messages
    async def call(self, peer: str, request: Any, reply_types: tuple[type, ...],
                   timeout: float) -> Any:  # noqa: ASYNC109 - mapped to RequestTimeout once
        """One exchange on the job protocol; to this node itself without the network."""
        if peer != self.peer_id:
            return await self.host.request(peer, jp.PROTOCOL, request, reply_types,
                                           timeout=timeout, max_frame=jp.MAX_FRAME)
        try:
            with trio.fail_after(timeout):
                reply = await self._handle(self.peer_id, request)
        except rpc.RemoteFault as fault:
            raise RemoteError(fault.code, fault.message) from None
        except trio.TooSlowError:
            raise rpc.timeout_error(f"{jp.PROTOCOL} to ourselves", timeout) from None
        if not isinstance(reply, reply_types):
            raise RemoteError("internal", f"unexpected reply {type(reply).__name__}")
        return reply

    async def _handle(self, peer: str, request: Any) -> Any:
        """Serve one request from ``peer`` (its authenticated id)."""
        if isinstance(request, jp.Offer):
            return await self.executor.offer(peer, request)
        if isinstance(request, jp.Query):
            entry = self.executor.query(peer, request.job_id)
            if entry is None:
                raise rpc.RemoteFault("not_found", f"no job {request.job_id} here")
            return entry
        if isinstance(request, jp.Cancel):
            found = await self.executor.cancel(peer, request.job_id)
            return jp.Cancelled(job_id=request.job_id, found=found)
        if isinstance(request, jp.Progress):
            return jp.ProgressAck(keep=tuple(self._progress(peer, e) for e in request.entries))
        if isinstance(request, jp.Result):
            return jp.ResultAck(job_id=request.job_id, accepted=self._result(peer, request))
        raise rpc.RemoteFault("bad_request", f"unexpected {type(request).__name__}")

    def _progress(self, peer: str, entry: jp.Entry) -> bool:
        sub = self.jobs.get(entry.job_id)
        try:
            state = jp.parse_state(entry.state)
        except InvalidJob:
            return False
        run = None if sub is None else sub.run_of(entry.attempt)
        if sub is None or run is None or not run.dispatch.progress(
                peer, run.local(entry.attempt), state, trio.current_time()):
            return False
        if state is WorkState.RUNNING and sub.running_at is None:
            sub.running_at = time.time()
        run.wake.set()
        return True

    def _result(self, peer: str, msg: jp.Result) -> bool:
        sub = self.jobs.get(msg.job_id)
        run = None if sub is None else sub.run_of(msg.attempt)
        if sub is None or run is None:
            return False
        try:
            result = jp.parse_result(msg)
        except InvalidJob as exc:
            log.warning("job %s: malformed result from %s: %s", msg.job_id, short_id(peer), exc)
            raise rpc.RemoteFault("bad_request", str(exc)) from None
        if not run.dispatch.result_received(peer, run.local(msg.attempt), result, trio.current_time()):
            return False
        run.worker, run.output, run.log_tail, run.gpu_s = peer, msg.output, msg.log_tail, msg.gpu_s
        run.received_at = trio.current_time()
        if sub.running_at is None:
            sub.running_at = time.time()
        run.wake.set()
        return True

    # ------------------------------------------------------------------ worker-side plumbing
    def _limits(self) -> WorkerLimits:
        cfg = self.ctx.config
        gpus: tuple[GpuSlot, ...] = ()
        inventory = self.capacity.inventory if self.capacity is not None else None
        if inventory is not None:
            gpus = tuple(GpuSlot(g.index, g.name, g.memory_total >> 20, g.compute_capability,
                                 inventory.simulated) for g in inventory.gpus)
        return WorkerLimits(slots=cfg.job_slots, max_queued=getattr(cfg, "job_queue", 16),
                            memory_mib=getattr(cfg, "job_memory_mib", 4096), gpus=gpus)

    def _advertise_load(self, running: int, queued: int) -> None:
        if self.capacity is not None:
            self.capacity.set_load(busy_slots=running, queue_length=queued)


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)
