"""The "jobs" node service: submit jobs to the mesh, run the ones offered to this node.

Submitter side (here): :meth:`JobService.submit` validates a job, and one task per job
drives its :class:`~poolai.node.jobs.Dispatch` machine: ask the capacity table for
capable peers (nearest and least loaded first), offer on ``/poolai/job/1.0.0``, move
down the list on refusal, watch heartbeats, probe a silent worker and re-dispatch when
it is lost, and accept exactly one final result.

Worker side: :class:`~poolai.node.job_executor.Executor`. Offers, probes and cancels
from peers go to it; progress and results from workers go to the dispatch machines.
A message to this node itself (the nearest capable peer may be us) skips the network
but takes the same code path.

Local API (see NETWORK.md, section 7): ``GET /api/jobs``, ``GET /api/jobs/{id}``,
``GET /api/jobs/{id}/wait``; under ``/api/admin/jobs``: upload a file, submit, cancel,
download an output.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from poolai.mesh import rpc
from poolai.mesh.errors import MeshError, RemoteError, RequestTimeout
from poolai.node import job_protocol as jp
from poolai.node.job_executor import Executor
from poolai.node.job_files import CachedFiles, Files, StorageFiles
from poolai.node.job_queue import GpuSlot, WorkerLimits
from poolai.node.jobs import (
    DEFAULT_SUBMITTER,
    Dispatch,
    FindWorkers,
    Finished,
    Phase,
    Probe,
    SendCancel,
    SendOffer,
    SubmitterConfig,
    Wait,
    WorkState,
)
from poolai.node.jobspec import (
    SPEC_VERSION,
    Device,
    InvalidJob,
    JobSpec,
    Requirements,
    encode_job,
    job_from_dict,
    result_to_dict,
)

if TYPE_CHECKING:
    from poolai.node.node import Node

log = logging.getLogger(__name__)

OFFER_TIMEOUT_S = 5.0
PROBE_TIMEOUT_S = 2.5
CANCEL_TIMEOUT_S = 2.0
MAX_ACTIVE = 4096  # jobs this node drives at once
MAX_KEPT = 1024  # finished jobs remembered for status queries


@dataclass
class Submission:
    """A job this node submitted, and everything its status page shows."""

    spec: JobSpec
    files: dict[str, str]
    dispatch: Dispatch
    submitted_at: float  # wall clock
    running_at: float | None = None  # when a worker first said "running"
    finished_at: float | None = None
    worker: str = ""  # peer whose result was accepted
    output: str = ""  # the output's storage id
    log_tail: str = ""
    gpu_s: float = 0.0
    wake: trio.Event = field(default_factory=trio.Event)
    finished: trio.Event = field(default_factory=trio.Event)

    def to_json(self, clock: float, wall: float) -> dict[str, Any]:
        d = self.dispatch

        def at(t: float | None) -> float | None:  # dispatch times are on trio's clock
            return None if t is None else round(wall - (clock - t), 3)

        state = d.worker_state.value if d.phase is Phase.ASSIGNED and d.worker_state else d.phase.value
        return {
            "job_id": self.spec.job_id, "state": state, "phase": d.phase.value,
            "submitted_at": self.submitted_at, "running_at": self.running_at,
            "finished_at": self.finished_at, "worker": self.worker or
            (d.current.peer if d.current else ""),
            "retries_used": d.retries_used, "retry_budget": d.retry_budget,
            "duplicates": d.duplicates,
            "attempts": [{"attempt": a.number, "peer": a.peer, "offered_at": at(a.offered_at),
                          "accepted_at": at(a.accepted_at), "outcome": a.outcome}
                         for a in d.attempts[-16:]],
            "refusals": dict(list(d.refusals.items())[:16]),
            "result": None if d.result is None else result_to_dict(d.result),
            "output_id": self.output, "log_tail": self.log_tail, "gpu_s": self.gpu_s,
            "requirements": {"device": self.spec.requirements.device.value,
                             "min_gpu_memory_mib": self.spec.requirements.min_gpu_memory_mib},
        }


class JobService:
    """Jobs on the mesh for one node. ``files`` is the storage seam (see :class:`Files`)."""

    name = "jobs"

    def __init__(self, node: Node, *, files: Files | None = None,
                 config: SubmitterConfig = DEFAULT_SUBMITTER) -> None:
        assert node.host is not None
        self.node = node
        self.host = node.host
        self.peer_id = node.host.peer_id
        self.config = config
        self.dir = node.data_dir / "jobs"
        self.files: Files = files if files is not None else StorageFiles(node)
        self.cache = CachedFiles(self.files, self.dir / "cache")
        self.executor = Executor(self.peer_id, self.dir, self.cache, self.call, self._limits,
                                 on_load=self._advertise_load, priority_of=self._priority_of)
        self.jobs: OrderedDict[str, Submission] = OrderedDict()
        self._nursery: trio.Nursery | None = None

    def _priority_of(self, submitter: str) -> int:
        """Contributors' jobs first: the credits service ranks submitters by balance."""
        try:
            return int(self.node.service("credits").priority_of(submitter))
        except KeyError:
            return 0

    # ------------------------------------------------------------------ NodeService
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        service = rpc.Service("jobs", self._handle, rpc.ServiceConfig(
            jp.REQUESTS, max_frame=jp.MAX_FRAME, handler_timeout=10.0, max_concurrent=256))
        self.host.serve(jp.PROTOCOL, service)
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

    def routes(self) -> list[Any]:
        from poolai.node.job_api import routes

        return routes(self)

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
        active = sum(not s.dispatch.done for s in self.jobs.values())
        if active >= MAX_ACTIVE:
            raise RuntimeError(f"this node already drives {active} jobs")
        spec = job_from_dict({"version": SPEC_VERSION, **job, "id": secrets.token_hex(8),
                              "submitter": self.peer_id})
        jp.parse_offer(jp.Offer(spec=encode_job(spec), files=files, attempt=1), self.peer_id)
        sub = Submission(spec, dict(files), Dispatch(spec.job_id, spec.retry_budget,
                                                     trio.current_time(), self.config), time.time())
        self.jobs[spec.job_id] = sub
        self._forget_old()
        self._nursery.start_soon(self._drive, sub)
        log.info("job %s submitted (%s, retry budget %d)", spec.job_id,
                 spec.requirements.device.value, spec.retry_budget)
        return sub

    def cancel(self, job_id: str) -> bool:
        """Cancel a job this node submitted; False if it had already ended. KeyError if unknown."""
        sub = self.jobs[job_id]
        cancelled = sub.dispatch.cancel(trio.current_time())
        sub.wake.set()
        return cancelled

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
        done = [k for k, s in self.jobs.items() if s.dispatch.done]
        for job_id in done[: max(0, len(done) - MAX_KEPT)]:
            del self.jobs[job_id]

    async def _drive(self, sub: Submission) -> None:
        d = sub.dispatch
        while True:
            action = d.step(trio.current_time())
            if isinstance(action, Finished):
                break
            if isinstance(action, FindWorkers):
                d.candidates(self._candidates(sub.spec.requirements), trio.current_time())
            elif isinstance(action, SendOffer):
                await self._offer(sub, action)
            elif isinstance(action, Probe):
                await self._probe(sub, action)
            elif isinstance(action, SendCancel):
                await self._send_cancel(sub.spec.job_id, action.peer, action.attempt)
            elif isinstance(action, Wait):
                with trio.move_on_at(math.inf if action.until is None else action.until):
                    await sub.wake.wait()
                sub.wake = trio.Event()
        sub.finished_at = time.time()
        result = d.result
        log.info("job %s %s%s", sub.spec.job_id, d.phase.value,
                 f": {result.status.value} {result.error[:200]}" if result else "")
        sub.finished.set()

    async def _offer(self, sub: Submission, action: SendOffer) -> None:
        d = sub.dispatch
        offer = jp.Offer(spec=encode_job(sub.spec), files=sub.files, attempt=action.attempt)
        try:
            reply = await self.call(action.peer, offer, (jp.Accept, jp.Refuse), OFFER_TIMEOUT_S)
        except MeshError as exc:
            log.info("job %s: offer to %s failed: %s", sub.spec.job_id, action.peer[-8:], exc)
            d.unreachable(action.attempt, trio.current_time())
            return
        now = trio.current_time()
        if isinstance(reply, jp.Refuse):
            try:
                reason = jp.parse_refusal(reply.reason)
            except InvalidJob:
                d.unreachable(action.attempt, now)
                return
            log.info("job %s: %s refused: %s: %s", sub.spec.job_id, action.peer[-8:], reason.value,
                     reply.message)
            d.refused(action.attempt, reason, reply.message, now)
        elif reply.job_id != sub.spec.job_id or not d.accepted(action.attempt, now):
            await self._send_cancel(sub.spec.job_id, action.peer, action.attempt)

    async def _probe(self, sub: Submission, action: Probe) -> None:
        d = sub.dispatch
        try:
            entry = await self.call(action.peer, jp.Query(job_id=sub.spec.job_id), (jp.Entry,),
                                    PROBE_TIMEOUT_S)
            state = jp.parse_state(entry.state)
        except RequestTimeout:
            log.info("job %s: worker %s did not answer a probe", sub.spec.job_id, action.peer[-8:])
            d.probe_timed_out(action.attempt, trio.current_time())
            return
        except (MeshError, InvalidJob) as exc:
            log.info("job %s: worker %s lost: %s", sub.spec.job_id, action.peer[-8:], exc)
            d.lost(action.attempt, trio.current_time())
            return
        if not d.progress(action.peer, entry.attempt, state, trio.current_time()):
            d.lost(action.attempt, trio.current_time())

    async def _send_cancel(self, job_id: str, peer: str, attempt: int) -> None:
        try:
            await self.call(peer, jp.Cancel(job_id=job_id, attempt=attempt), (jp.Cancelled,),
                            CANCEL_TIMEOUT_S)
        except MeshError as exc:
            log.debug("cancel of %s at %s failed: %s", job_id, peer[-8:], exc)

    def _candidates(self, req: Requirements) -> list[str]:
        """Capable peers, best first: the capacity table's ranking; then peers that would queue."""
        try:
            capacity = self.node.service("capacity")
        except KeyError:
            return [self.peer_id, *self.host.connected_peers()]
        from poolai.node import capacity as cap

        creq = cap.Requirements()
        if req.device is Device.GPU:
            creq = cap.Requirements(gpus=1, gpu_mem=req.min_gpu_memory_mib << 20,
                                    compute_capability=req.min_compute_capability)
        ranked = [c.peer_id for c in capacity.capable(creq)]
        # Every capable peer busy: those that can queue it, least loaded first.
        now = time.time()
        queueing = []
        for entry in capacity.table.entries(now):
            advert = entry.advert
            if advert.job_slots == 0 or advert.peer_id in ranked:
                continue
            if cap.matching_gpus(dataclasses.replace(advert, free_slots=advert.job_slots), creq) is None:
                continue
            rtt = capacity.rtt_ms(advert.peer_id)
            queueing.append((cap.load_of(advert), cap.DEFAULT_RTT_MS if rtt is None else rtt,
                             advert.peer_id))
        # Adverts trail by up to a heartbeat: spread a burst by what this node already gave out.
        given: dict[str, int] = {}
        for other in self.jobs.values():
            if (cur := other.dispatch.current) is not None:
                given[cur.peer] = given.get(cur.peer, 0) + 1
        ordered = ranked + [p for *_, p in sorted(queueing)]
        return sorted(ordered, key=lambda p: given.get(p, 0))

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
        if sub is None or not sub.dispatch.progress(peer, entry.attempt, state, trio.current_time()):
            return False
        if state is WorkState.RUNNING and sub.running_at is None:
            sub.running_at = time.time()
        sub.wake.set()
        return True

    def _result(self, peer: str, msg: jp.Result) -> bool:
        sub = self.jobs.get(msg.job_id)
        if sub is None:
            return False
        try:
            result = jp.parse_result(msg)
        except InvalidJob as exc:
            log.warning("job %s: malformed result from %s: %s", msg.job_id, peer[-8:], exc)
            raise rpc.RemoteFault("bad_request", str(exc)) from None
        if not sub.dispatch.result_received(peer, msg.attempt, result, trio.current_time()):
            return False
        sub.worker, sub.output, sub.log_tail, sub.gpu_s = peer, msg.output, msg.log_tail, msg.gpu_s
        if sub.running_at is None:
            sub.running_at = time.time()
        sub.wake.set()
        return True

    # ------------------------------------------------------------------ worker-side plumbing
    def _limits(self) -> WorkerLimits:
        cfg = self.node.config
        gpus: tuple[GpuSlot, ...] = ()
        try:
            inventory = getattr(self.node.service("capacity"), "_inventory", None)
        except KeyError:
            inventory = None
        if inventory is not None:
            gpus = tuple(GpuSlot(g.index, g.name, g.memory_total >> 20, g.compute_capability,
                                 inventory.simulated) for g in inventory.gpus)
        return WorkerLimits(slots=cfg.job_slots, max_queued=getattr(cfg, "job_queue", 16),
                            memory_mib=getattr(cfg, "job_memory_mib", 4096), gpus=gpus)

    def _advertise_load(self, running: int, queued: int) -> None:
        try:
            self.node.service("capacity").set_load(busy_slots=running, queue_length=queued)
        except KeyError:
            pass
