"""The worker's queue, pure: admission, run order and slots (see NETWORK.md, section 7 "Worker").

Admission is bounded by the queue length and refused outright for requirements this node
can never meet. Waiting jobs run by priority plus waiting time over ``aging_s``, so none
starves; ``slots`` run at once, each GPU job on its own GPU. No I/O and no clock: the
caller passes ``now`` and persists the queue.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from poolai.node.jobs.dispatch import Refusal
from poolai.node.jobs.spec import Device, Requirements


@dataclass(frozen=True, slots=True)
class GpuSlot:
    """One GPU this node offers (``simulated``: declared for tests, the job runs on the CPU)."""

    index: int
    name: str
    memory_mib: int
    compute_capability: tuple[int, int]
    simulated: bool = False


@dataclass(frozen=True, slots=True)
class WorkerLimits:
    """What this node lets a job have."""

    slots: int = 1  # jobs running at once
    max_queued: int = 16  # accepted jobs waiting for a slot
    memory_mib: int = 4096  # address-space cap of a CPU worker process
    gpus: tuple[GpuSlot, ...] = ()
    aging_s: float = 10.0  # waiting this long is worth one priority point

    def __post_init__(self) -> None:
        if self.slots < 0 or self.max_queued < 0 or self.aging_s <= 0:
            raise ValueError("slots and max_queued must be >= 0 and aging_s > 0")


def gpus_for(req: Requirements, gpus: Sequence[GpuSlot]) -> list[GpuSlot]:
    """The GPUs that meet the job's requirements (empty for a CPU job)."""
    if req.device is not Device.GPU:
        return []
    cc = req.min_compute_capability or (0, 0)
    return [g for g in gpus if g.memory_mib >= req.min_gpu_memory_mib and g.compute_capability >= cc]


def incapable_reason(req: Requirements, limits: WorkerLimits) -> str | None:
    """Why this node can never run a job with these requirements, or None if it can."""
    if limits.slots == 0:
        return "this node runs no jobs"
    if req.device is Device.GPU:
        if not limits.gpus:
            return "this node has no GPU"
        if not gpus_for(req, limits.gpus):
            best = max(limits.gpus, key=lambda g: (g.memory_mib, g.compute_capability))
            cc = req.min_compute_capability
            return (f"no GPU has {req.min_gpu_memory_mib} MiB"
                    + (f" and compute capability {cc[0]}.{cc[1]}" if cc else "")
                    + f" (best: {best.name}, {best.memory_mib} MiB)")
        return None
    if req.memory_mib > limits.memory_mib:
        return f"the job asks for {req.memory_mib} MiB, this node allows {limits.memory_mib} MiB"
    return None


@dataclass(frozen=True, slots=True)
class WorkItem:
    """A job a worker accepted. ``key`` is (submitter, job id): the unit of idempotence."""

    submitter: str
    job_id: str
    attempt: int
    priority: int
    requirements: Requirements
    enqueued_at: float  # wall-clock seconds (kept across restarts)
    seq: int = 0  # admission order, breaks ties

    @property
    def key(self) -> tuple[str, str]:
        return (self.submitter, self.job_id)


@dataclass(frozen=True, slots=True)
class Started:
    """A job leaves the queue for a slot; ``gpu`` is the GPU it gets (None: CPU)."""

    item: WorkItem
    gpu: GpuSlot | None


@dataclass
class WorkQueue:
    """Accepted jobs waiting for a slot, and the ones running. Pure; the driver persists it."""

    limits: WorkerLimits
    queued: dict[tuple[str, str], WorkItem] = field(default_factory=dict)
    running: dict[tuple[str, str], Started] = field(default_factory=dict)
    _seq: int = 0

    def admit(self, item: WorkItem) -> tuple[Refusal, str] | WorkItem:
        """Take a job or say why not. An offer for a job already held re-labels its attempt."""
        reason = incapable_reason(item.requirements, self.limits)
        if reason is not None:
            return Refusal.INCAPABLE, reason
        if item.key in self.queued:
            held = replace(self.queued[item.key], attempt=item.attempt)
            self.queued[item.key] = held
            return held
        if item.key in self.running:
            run = self.running[item.key]
            self.running[item.key] = replace(run, item=replace(run.item, attempt=item.attempt))
            return self.running[item.key].item
        if len(self.queued) >= self.limits.max_queued:
            return Refusal.BUSY, f"{len(self.queued)} jobs queued, {len(self.running)} running"
        self._seq = max(self._seq, item.seq) + 1
        item = replace(item, seq=self._seq)
        self.queued[item.key] = item
        return item

    def restore(self, item: WorkItem) -> None:
        """Put back a job found in the persisted queue (running ones are re-run)."""
        self._seq = max(self._seq, item.seq)
        self.queued[item.key] = item

    def position(self, key: tuple[str, str], now: float) -> int:
        """Jobs that would run before ``key`` (0 = next)."""
        order = self._order(now)
        return [i.key for i in order].index(key) if key in self.queued else 0

    def _order(self, now: float) -> list[WorkItem]:
        aging = self.limits.aging_s
        return sorted(self.queued.values(),
                      key=lambda i: (-(i.priority + max(0.0, now - i.enqueued_at) / aging), i.seq))

    def start_next(self, now: float) -> Started | None:
        """The job to start now, moved to ``running``; None when no slot (or GPU) is free.

        The queue is taken in effective-priority order; a GPU job whose GPU is busy is
        passed over for this round only, so it runs as soon as its GPU frees up.
        """
        if len(self.running) >= self.limits.slots:
            return None
        busy = {s.gpu.index for s in self.running.values() if s.gpu is not None}
        for item in self._order(now):
            gpu = None
            if item.requirements.device is Device.GPU:
                free = [g for g in gpus_for(item.requirements, self.limits.gpus) if g.index not in busy]
                if not free:
                    continue
                gpu = min(free, key=lambda g: (g.memory_mib, g.index))  # smallest that fits
            del self.queued[item.key]
            started = Started(item, gpu)
            self.running[item.key] = started
            return started
        return None

    def finish(self, key: tuple[str, str]) -> None:
        self.running.pop(key, None)

    def remove(self, key: tuple[str, str]) -> WorkItem | None:
        """Drop a queued job (cancelled); running ones are stopped by the driver."""
        return self.queued.pop(key, None)

    def attempt_of(self, key: tuple[str, str]) -> int | None:
        if key in self.queued:
            return self.queued[key].attempt
        if key in self.running:
            return self.running[key].item.attempt
        return None

    def load(self) -> tuple[int, int]:
        """(running, queued): what a capacity advert reports as this node's load."""
        return len(self.running), len(self.queued)
