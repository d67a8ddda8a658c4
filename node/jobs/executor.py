"""The worker side of jobs on the mesh: admit offers, run them in slots, report back.

:class:`Executor` owns the node's :class:`~poolai.node.jobs.queue.WorkQueue` and drives it:

* an offer is admitted (or refused with a reason) and, before the accept goes back,
  written to ``<data>/jobs/worker.json``; a restarted node re-queues every job it had
  accepted (those that were running start again) and re-sends undelivered results;
* a free slot takes the next job by aged priority: fetch program and inputs from storage
  by id, run :func:`poolai.node.jobs.runner.run_job` (a sandboxed process; a GPU job on a
  simulated GPU runs on the CPU and says so in its result), store the output, report;
* where this machine has no worker sandbox (:mod:`poolai.node.jobs.sandbox`), a peer's
  offer is refused as ``incapable`` unless the owner set ``unsandboxed_jobs``; the node's
  own jobs still run, with only their network isolated;
* every held job is reported to its submitter at least every ``heartbeat_s`` and at once
  when its state changes; a submitter that answers "do not keep" stops the job;
* a result is re-sent until its submitter acknowledges it (accepted or duplicate); one
  accepted as the job's result goes to ``on_accepted`` (the jobs service claims credit).

Persistence is one JSON document, rewritten atomically (write, fsync, rename) on
every change, off the event loop. It holds at most ``slots + max_queued`` jobs of at
most 64 KiB of spec each.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from poolai.mesh.backoff import Backoff
from poolai.mesh.durable import write_atomic
from poolai.mesh.errors import MeshError
from poolai.mesh.short_ids import short_id
from poolai.node.jobs import protocol as jp
from poolai.node.jobs.dispatch import Refusal, WorkState
from poolai.node.jobs.files import Files, FileTransferError
from poolai.node.jobs.held import MAX_STATE_BYTES, STATE_FILE, Held, Pending, decode_state, encode_state
from poolai.node.jobs.queue import GpuSlot, Started, WorkerLimits, WorkItem, WorkQueue
from poolai.node.jobs.runner import JobOutcome, WorkerPolicy, run_job
from poolai.node.jobs.sandbox import Sandbox
from poolai.node.jobs.spec import (
    Device,
    InvalidJob,
    JobResult,
    JobSpec,
    JobStatus,
    Requirements,
    decode_job,
    result_to_dict,
)

log = logging.getLogger(__name__)

FILE_TIMEOUT_S = 600.0
RECENT_RESULTS = 32  # results of jobs run here kept for the owner's alerts


Call = Callable[[str, Any, tuple[type, ...], float], Awaitable[Any]]
"""``call(peer, request, reply_types, timeout)``: one request/response exchange."""

Runner = Callable[[JobSpec, Path, Path, WorkerPolicy], Awaitable[JobOutcome]]
""":func:`poolai.node.jobs.runner.run_job` (tests pass a fake)."""


@dataclass(frozen=True, slots=True)
class ExecutorConfig:
    heartbeat_s: float = 1.0
    request_timeout_s: float = 2.5
    result_ttl_s: float = 3600.0  # undelivered results are dropped after this
    max_retry_s: float = 10.0
    threads: int = 1  # torch threads per worker process
    max_timeout_s: float = 24 * 3600.0

    @property
    def delivery_backoff(self) -> Backoff:
        """Between sends of an unacknowledged result: 1, 2, 4 ... s, at most max_retry_s (and 128 s)."""
        cap = min(self.max_retry_s, 128.0)
        return Backoff(base=min(1.0, cap), cap=cap)


class Executor:
    """Runs the jobs this node accepts. Create it in the jobs service; ``run`` until cancelled."""

    def __init__(self, peer_id: str, state_dir: Path, files: Files, call: Call,
                 limits: Callable[[], WorkerLimits], *, config: ExecutorConfig | None = None,
                 on_load: Callable[[int, int], None] | None = None,
                 priority_of: Callable[[str], int] | None = None,
                 on_accepted: Callable[[str, jp.Result], Awaitable[None]] | None = None,
                 runner: Runner = run_job, sandbox: Sandbox | None = None,
                 unsandboxed_jobs: bool = False, hidden: tuple[Path, ...] = ()) -> None:
        self.peer_id = peer_id
        # What workers run in; the jobs service sets it once it has probed the machine.
        # None: no gate (a stand-in runner). Unavailable: peers' offers are refused unless
        # the owner opted in with unsandboxed_jobs. ``hidden``: the node's data directory.
        self.sandbox = sandbox
        self.unsandboxed_jobs = unsandboxed_jobs
        self.hidden = hidden
        # Told of each result its submitter accepted as the job's (the credits claim).
        self.on_accepted = on_accepted
        # Queue order comes from the submitter's earned credit, never from what the
        # submitter asks for: a self-declared priority would let anyone jump the queue.
        self.priority_of = priority_of or (lambda submitter: 0)
        self.runner = runner
        self.dir = state_dir
        self.files = files
        self.call = call
        self.limits = limits
        self.config = config or ExecutorConfig()
        self.on_load = on_load or (lambda running, queued: None)
        self.queue = WorkQueue(limits())
        self.held: dict[tuple[str, str], Held] = {}
        self.pending: dict[tuple[str, str], Pending] = {}
        self.stats = {"accepted": 0, "refused": 0, "finished": 0, "stopped": 0, "restored": 0}
        # (finished at, job id, result status) of the newest jobs run here: the owner's alerts
        # judge a run of failures and the reputation peers build from them.
        self.recent_results: deque[tuple[float, str, str]] = deque(maxlen=RECENT_RESULTS)
        self.draining = False  # refuse offers; what is held still runs
        self.paused = False  # refuse offers and start nothing; running jobs go on
        self._changed = trio.Event()  # queue or slot changed: the scheduler looks again
        self._dirty: set[str] = set()  # submitters owed a progress message now
        self._reporting: set[str] = set()  # submitters with a progress exchange in flight
        self._delivering: set[tuple[str, str]] = set()
        self._beat = trio.Event()
        self._deliver = trio.Event()
        self._save_lock = trio.Lock()

    # ------------------------------------------------------------------ lifecycle
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await trio.to_thread.run_sync(self._load)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._schedule, nursery)
            nursery.start_soon(self._heartbeats, nursery)
            nursery.start_soon(self._deliveries, nursery)
            task_status.started()

    # ------------------------------------------------------------------ requests from submitters
    async def offer(self, sender: str, offer: jp.Offer) -> jp.Accept | jp.Refuse:
        """Admit or refuse an offer; an accepted job is on disk before this returns."""
        try:
            parsed = jp.parse_offer(offer, sender)
        except InvalidJob as exc:
            self.stats["refused"] += 1
            return jp.Refuse(job_id="", reason=Refusal.INVALID.value, message=str(exc)[:512])
        job = parsed.job
        key = (sender, job.job_id)
        if sender != self.peer_id and (refusal := self.unsandboxed_refusal()):
            self.stats["refused"] += 1
            return jp.Refuse(job_id=job.job_id, reason=Refusal.INCAPABLE.value,
                             message=refusal[:512])
        if (self.draining or self.paused) and key not in self.held and key not in self.pending:
            self.stats["refused"] += 1
            state = "draining" if self.draining else "paused"
            return jp.Refuse(job_id=job.job_id, reason=Refusal.BUSY.value,
                             message=f"this node is {state}")
        if key in self.pending:  # finished here, result not yet acknowledged: send it again
            p = self.pending[key]
            p.message = dataclasses.replace(p.message, attempt=parsed.attempt)
            p.next_try = 0.0
            self._deliver.set()
            return jp.Accept(job_id=job.job_id, attempt=parsed.attempt, ahead=0)
        self.queue.limits = self.limits()
        item = WorkItem(sender, job.job_id, parsed.attempt, self.priority_of(sender), job.requirements,
                        time.time())
        admitted = self.queue.admit(item)
        if isinstance(admitted, tuple):
            self.stats["refused"] += 1
            reason, message = admitted
            return jp.Refuse(job_id=job.job_id, reason=reason.value, message=message[:512])
        held = self.held.get(key)
        if held is None:
            self.held[key] = Held(admitted, offer.spec, parsed.files)
        else:
            held.item = admitted
        if not await self._save() and held is None and self.queue.remove(key) is not None:
            # A job this node could not write down would be forgotten by a restart: refuse
            # it while it is still queued, so the submitter offers it elsewhere.
            del self.held[key]
            self._load_changed()
            self.stats["refused"] += 1
            return jp.Refuse(job_id=job.job_id, reason=Refusal.BUSY.value,
                             message="this node cannot write to its disk (full?)")
        if held is None:
            self.stats["accepted"] += 1
        self._changed.set()
        return jp.Accept(job_id=job.job_id, attempt=parsed.attempt,
                         ahead=self.queue.position(key, time.time()))

    def unsandboxed_refusal(self) -> str:
        """Why this node runs no peer's job (no sandbox, no opt-in), or "" when it does."""
        sandbox = self.sandbox
        if sandbox is None or sandbox.available or self.unsandboxed_jobs:
            return ""
        return (f"this node has no job sandbox ({sandbox.problem}) and runs only its "
                f"owner's jobs")

    def query(self, sender: str, job_id: str) -> jp.Entry | None:
        """The state of a job held for ``sender``; None if this node has none."""
        key = (sender, job_id)
        if key in self.held:
            h = self.held[key]
            return jp.Entry(job_id=job_id, attempt=h.item.attempt, state=h.state.value)
        if key in self.pending:
            self._deliver.set()
            return jp.Entry(job_id=job_id, attempt=self.pending[key].message.attempt,
                            state=WorkState.STORING.value)
        return None

    async def cancel(self, sender: str, job_id: str) -> bool:
        key = (sender, job_id)
        found = key in self.held or self.pending.pop(key, None) is not None
        if key in self.held:
            self._stop(key)
        await self._save()
        return found

    def _stop(self, key: tuple[str, str]) -> None:
        held = self.held[key]
        held.stopped = True
        self.stats["stopped"] += 1
        if self.queue.remove(key) is not None:
            del self.held[key]
            self._load_changed()
        elif held.scope is not None:
            held.scope.cancel()

    def set_paused(self, paused: bool) -> None:
        """Pause (queued jobs wait, running ones go on) or resume."""
        self.paused = paused
        self._changed.set()

    # ------------------------------------------------------------------ running jobs
    async def _schedule(self, nursery: trio.Nursery) -> None:
        while True:
            self.queue.limits = self.limits()
            while not self.paused and (started := self.queue.start_next(time.time())) is not None:
                nursery.start_soon(self._execute, started)
            self._load_changed()
            await self._changed.wait()
            self._changed = trio.Event()

    async def _execute(self, started: Started) -> None:
        item = started.item
        key = item.key
        held = self.held[key]
        work = self.dir / "work" / f"{_safe(item.submitter)}-{item.job_id}"
        message: jp.Result | None = None
        with trio.CancelScope() as scope:
            held.scope = scope
            message = await self._attempt(held, started.gpu, work)
        self.queue.finish(key)
        if held.stopped or message is None:
            self.held.pop(key, None)
        elif not scope.cancelled_caught:
            self.held.pop(key, None)
            self.pending[key] = Pending(item.submitter, message, time.time())
            self.stats["finished"] += 1
            self.recent_results.append((time.time(), item.job_id, str(message.record.get("status"))))
            self._deliver.set()
        await trio.to_thread.run_sync(shutil.rmtree, work, True)
        await self._save()
        self._changed.set()

    async def _attempt(self, held: Held, gpu: GpuSlot | None, work: Path) -> jp.Result:
        job = decode_job(held.spec)
        if held.item.submitter != self.peer_id and (refusal := self.unsandboxed_refusal()):
            # Accepted before a restart on a machine that has since lost its sandbox.
            return self._message(held, JobResult(job.job_id, JobStatus.CRASHED, error=refusal))
        files_dir, out_dir = work / "files", work / "out"
        try:
            await trio.to_thread.run_sync(_fresh_dirs, work, files_dir, out_dir)
        except OSError as exc:
            return self._message(held, JobResult(job.job_id, JobStatus.CRASHED,
                                                 error=f"the worker node cannot stage files: {exc}"))
        # Told with the next heartbeat, not at once: a fetch from the file cache ends within
        # milliseconds, and a "fetching" report still in flight would hold back "running".
        held.state = WorkState.FETCHING
        try:
            with trio.fail_after(FILE_TIMEOUT_S):
                await _fetch_all(self.files, held.files, files_dir)
        except (FileTransferError, MeshError, OSError, trio.TooSlowError) as exc:
            return self._message(held, JobResult(job.job_id, JobStatus.CRASHED,
                                                 error=f"could not fetch the job's files: {exc}"))
        self._set_state(held, WorkState.RUNNING)
        run_spec, policy = self._prepare(job, gpu)
        outcome = await self.runner(run_spec, files_dir, out_dir, policy)
        result = outcome.result
        if gpu is not None and gpu.simulated:
            result = dataclasses.replace(result, device=f"{result.device} [simulated GPU "
                                                         f"{gpu.index}: {gpu.name}]"[:256])
        tail = outcome.process.stderr[-jp.MAX_LOG_TAIL:].decode(errors="replace")
        output = ""
        if result.status is JobStatus.OK:
            self._set_state(held, WorkState.STORING)
            try:
                with trio.fail_after(FILE_TIMEOUT_S):
                    output = await self.files.put(out_dir / "output.safetensors",
                                                  f"output of job {held.item.job_id}")
            except (FileTransferError, MeshError, OSError, trio.TooSlowError) as exc:
                result = dataclasses.replace(result, status=JobStatus.CRASHED, output=None,
                                             error=f"could not store the output: {exc}")
        gpu_s = result.timings.run_s if gpu is not None and not gpu.simulated else 0.0
        return self._message(held, result, output, tail, gpu_s)

    def _prepare(self, job: JobSpec, gpu: GpuSlot | None) -> tuple[JobSpec, WorkerPolicy]:
        limits = self.queue.limits
        spec = job
        if gpu is not None and gpu.simulated:
            # A simulated GPU has no device behind it: run the same program on the CPU.
            spec = dataclasses.replace(job, requirements=Requirements(
                device=Device.CPU, expected_runtime_s=job.requirements.expected_runtime_s,
                memory_mib=min(max(job.requirements.memory_mib, 2048), limits.memory_mib)))
        policy = WorkerPolicy(python=sys.executable, max_memory_bytes=limits.memory_mib << 20,
                              max_timeout_s=self.config.max_timeout_s, threads=self.config.threads,
                              cuda_visible_devices=str(gpu.index) if gpu is not None else "",
                              sandbox=self.sandbox, hidden=self.hidden)
        return spec, policy

    def _message(self, held: Held, result: JobResult, output: str = "", tail: str = "",
                 gpu_s: float = 0.0) -> jp.Result:
        return jp.Result(job_id=held.item.job_id, attempt=held.item.attempt,
                         record=result_to_dict(result), output=output, log_tail=tail, gpu_s=gpu_s)

    def _set_state(self, held: Held, state: WorkState) -> None:
        held.state = state
        self._dirty.add(held.item.submitter)
        self._beat.set()

    def _load_changed(self) -> None:
        running, queued = self.queue.load()
        self.on_load(running, queued)

    # ------------------------------------------------------------------ telling submitters
    async def _heartbeats(self, nursery: trio.Nursery) -> None:
        """Report held jobs: everyone every heartbeat, a submitter at once when its jobs change.

        One exchange per submitter at a time, each in its own task, so a submitter that
        does not answer delays nobody else's heartbeat.
        """
        last = -self.config.heartbeat_s
        while True:
            with trio.move_on_at(last + self.config.heartbeat_s):
                await self._beat.wait()
            self._beat = trio.Event()
            now = trio.current_time()
            everyone = now - last >= self.config.heartbeat_s
            if everyone:
                last = now
            by_submitter: dict[str, list[Held]] = {}
            for h in self.held.values():
                if everyone or h.item.submitter in self._dirty:
                    by_submitter.setdefault(h.item.submitter, []).append(h)
            for submitter, jobs in by_submitter.items():
                if submitter not in self._reporting:
                    self._dirty.discard(submitter)
                    self._reporting.add(submitter)
                    nursery.start_soon(self._report, submitter, jobs)

    async def _report(self, submitter: str, jobs: list[Held]) -> None:
        try:
            for i in range(0, len(jobs), jp.MAX_BATCH):
                await self._report_batch(submitter, jobs[i:i + jp.MAX_BATCH])
        finally:
            self._reporting.discard(submitter)
            if submitter in self._dirty:
                self._beat.set()

    async def _report_batch(self, submitter: str, jobs: list[Held]) -> None:
        entries = tuple(jp.Entry(job_id=h.item.job_id, attempt=h.item.attempt, state=h.state.value)
                        for h in jobs)
        try:
            ack = await self.call(submitter, jp.Progress(entries=entries), (jp.ProgressAck,),
                                  self.config.request_timeout_s)
        except MeshError as exc:
            log.debug("progress to %s failed: %s", short_id(submitter), exc)
            return
        if len(ack.keep) != len(entries):
            log.info("progress ack from %s has %d verdicts for %d jobs", short_id(submitter),
                     len(ack.keep), len(entries))
            return
        stopped = False
        for h, keep in zip(jobs, ack.keep, strict=True):
            key = h.item.key
            if not keep and self.held.get(key) is h:
                log.info("job %s: submitter %s no longer wants attempt %d", h.item.job_id,
                         short_id(submitter), h.item.attempt)
                self._stop(key)
                stopped = True
        if stopped:
            await self._save()

    async def _deliveries(self, nursery: trio.Nursery) -> None:
        """Send each finished attempt's result until it is acknowledged, with backoff."""
        while True:
            now = time.time()
            for key, p in list(self.pending.items()):
                if p.next_try <= now and key not in self._delivering:
                    self._delivering.add(key)
                    nursery.start_soon(self._deliver_one, key, p)
            waits = [p.next_try for k, p in self.pending.items() if k not in self._delivering]
            with trio.move_on_after(max(0.05, min(waits) - time.time()) if waits else 60.0):
                await self._deliver.wait()
            self._deliver = trio.Event()

    async def _deliver_one(self, key: tuple[str, str], p: Pending) -> None:
        try:
            ack = await self.call(p.submitter, p.message, (jp.ResultAck,),
                                  self.config.request_timeout_s)
        except MeshError as exc:
            p.tries += 1
            p.next_try = self.config.delivery_backoff.next_at(time.time(), p.tries)
            if time.time() - p.finished_at > self.config.result_ttl_s:
                log.warning("job %s: dropping a result its submitter never took", key[1])
                self.pending.pop(key, None)
                await self._save()
            else:
                log.debug("result of %s to %s failed: %s", key[1], short_id(p.submitter), exc)
            return
        finally:
            self._delivering.discard(key)
            self._deliver.set()
        log.info("job %s: result %s by %s", key[1], "accepted" if ack.accepted else "not needed",
                 short_id(p.submitter))
        if self.pending.get(key) is p:
            del self.pending[key]
            await self._save()
            if ack.accepted and self.on_accepted is not None:
                await self.on_accepted(p.submitter, p.message)

    # ------------------------------------------------------------------ persistence
    async def _save(self) -> bool:
        """Write the state file. False when the disk refuses it (full, read-only): the state
        stays in memory, the file keeps its last whole version, and the next change writes
        it again. Every caller's change is already made; only offer() can still say no."""
        async with self._save_lock:
            data = encode_state(self.held.values(), self.pending.values())
            try:
                await trio.to_thread.run_sync(write_atomic, self.dir / STATE_FILE, data)
            except OSError as exc:
                self.stats["unsaved"] = self.stats.get("unsaved", 0) + 1
                log.warning("job state not written (%s); kept in memory until the next change",
                            exc.strerror or exc)
                return False
            return True

    def _load(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / STATE_FILE
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_STATE_BYTES)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.error("ignoring unreadable %s: %s", path, exc)
            return
        try:
            held, pending, problems = decode_state(data, self.priority_of)
        except ValueError as exc:
            log.error("ignoring unreadable %s: %s", path, exc)
            return
        for problem in problems:
            log.error("dropping from %s: %s", path, problem)
        for h in held:
            self.queue.restore(h.item)
            self.held[h.item.key] = h
        self.pending.update(pending)
        self.stats["restored"] += len(held)
        if self.held or self.pending:
            log.info("restored %d job(s) and %d undelivered result(s)", len(self.held),
                     len(self.pending))


    def snapshot(self) -> dict[str, Any]:
        """The worker side of the jobs section of ``/api/status``."""
        by_state: dict[str, int] = {}
        for h in self.held.values():
            by_state[h.state.value] = by_state.get(h.state.value, 0) + 1
        running, queued = self.queue.load()
        sandbox = None if self.sandbox is None else {
            **self.sandbox.to_json(), "unsandboxed_jobs": self.unsandboxed_jobs,
            "runs_peer_jobs": not self.unsandboxed_refusal()}
        return {"slots": self.queue.limits.slots, "draining": self.draining, "paused": self.paused,
                "sandbox": sandbox, "run_by_state": by_state, "queue_length": queued,
                "running": running, "undelivered": len(self.pending), "stats": dict(self.stats),
                "held": [{"job_id": h.item.job_id, "submitter": h.item.submitter,
                          "attempt": h.item.attempt, "state": h.state.value,
                          "priority": h.item.priority} for h in list(self.held.values())[:64]]}


async def _fetch_all(files: Files, ids: dict[str, str], into: Path) -> None:
    """Fetch every file at once; the first failure cancels the rest and is raised alone."""
    failures: list[BaseException] = []

    async def one(name: str, file_id: str, cancel: trio.CancelScope) -> None:
        try:
            await files.get(file_id, into / name)
        except (FileTransferError, MeshError, OSError) as exc:
            failures.append(exc)
            cancel.cancel()

    async with trio.open_nursery() as nursery:
        for name, file_id in sorted(ids.items()):
            nursery.start_soon(one, name, file_id, nursery.cancel_scope)
    if failures:
        raise failures[0]


def _safe(peer_id: str) -> str:
    return "".join(c for c in peer_id if c.isalnum())[-16:]


def _fresh_dirs(work: Path, *dirs: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)
    for d in dirs:
        d.mkdir(parents=True)
