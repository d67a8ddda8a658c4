"""Launch worker processes from the node (trio side) under resource limits.

The node never imports torch: each job runs in a fresh ``python -m poolai.node.jobs.worker``
process. :func:`run_isolated` is the sandboxed process primitive; :func:`run_job`
builds a job's limits from its spec and the node's :class:`WorkerPolicy`, runs the
worker and turns whatever happened into a :class:`~poolai.node.jobs.spec.JobResult`.

Isolation applied to every worker (in ``preexec_fn``, between fork and exec):

* ``RLIMIT_AS`` (address space) for CPU jobs, ``RLIMIT_FSIZE`` (largest file it may
  write) and ``RLIMIT_CORE`` = 0;
* with a :class:`~poolai.node.jobs.sandbox.Sandbox` (what the node runs peers' jobs in):
  bubblewrap namespaces (user, mount, pid, network, ipc, uts, cgroup), no capabilities,
  ``no_new_privs`` and a seccomp filter; the worker sees read-only system and Python
  paths and its job's directories at ``/job/files`` and ``/job/out``, never the node's
  data directory (see that module);
* without one, only a new, empty network namespace (``unshare(CLONE_NEWNET)``, root
  only): only a ``lo`` that is down, so no connection can be made. If the kernel refuses,
  the worker runs without it and a warning is logged (``ProcessOutcome.network_isolated``
  says which happened; :attr:`WorkerPolicy.require_network_isolation` refuses instead);
* a new session (its own process group), killed with SIGKILL on timeout or cancellation;
* a lifeline: the read end of a pipe whose write end only the node holds, its number in
  ``POOLAI_LIFELINE_FD``. The worker kills its process group when the pipe reads EOF, that
  is when the node is gone, however it ended. (``PR_SET_PDEATHSIG`` cannot do this: it
  fires when the *thread* that forked the child exits, and trio forks from a cached
  worker thread that exits after 10 s idle, which killed every job running longer);
* a minimal environment with ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` set;
* stdout and stderr captured up to a cap (the rest is drained and dropped).

A job that hits its memory limit is reported OUT_OF_MEMORY: by the worker itself when
the allocation raised, or composed here when the worker died of it without a record
(its stderr shows a MemoryError or a failed allocation).

RLIMIT_AS is not applied to GPU jobs: the CUDA driver reserves far more address
space than any sane cap at initialisation, so a GPU worker is bounded by the
GPU's memory, the wall timeout and the node's own cgroup instead.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import resource
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import trio

from poolai.node.jobs.sandbox import (
    FILES_INSIDE,
    OUT_INSIDE,
    Layout,
    Sandbox,
    bwrap_argv,
    gpu_devices,
    job_layout,
    seccomp_fd,
)
from poolai.node.jobs.spec import (
    LIFELINE_ENV,
    Device,
    InvalidJob,
    JobError,
    JobResult,
    JobSpec,
    JobStatus,
    Timings,
    encode_job,
    result_from_dict,
)

log = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000
WORKER_NICENESS = 10
MAX_RESULT_BYTES = 1 << 20
_READ_CHUNK = 65536
# What a worker that died of its memory limit leaves on stderr (Python, C++ and libc).
_OOM_STDERR = (b"MemoryError", b"std::bad_alloc", b"Cannot allocate memory", b"out of memory")


@dataclass(frozen=True, slots=True)
class ProcessLimits:
    """Limits for one sandboxed process. ``memory_bytes=None`` leaves RLIMIT_AS alone.

    ``sandbox`` (when available) runs the process under bubblewrap in ``layout`` (default:
    the sandbox's read-only paths only); otherwise only the network is isolated.
    """

    timeout_s: float
    memory_bytes: int | None = 2 << 30
    file_size_bytes: int | None = 1 << 30
    threads: int = 1
    capture_bytes: int = 64 * 1024
    isolate_network: bool = True
    require_network_isolation: bool = False
    sandbox: Sandbox | None = None
    layout: Layout | None = None


class IsolationUnavailable(JobError):
    """Network isolation was required but this node cannot create a network namespace."""


@dataclass(frozen=True, slots=True)
class ProcessOutcome:
    """What happened to a sandboxed process."""

    returncode: int | None  # None when it was killed at its timeout
    timed_out: bool
    stdout: bytes
    stderr: bytes
    stdout_dropped: int  # bytes past capture_bytes that were read and discarded
    stderr_dropped: int
    wall_s: float
    network_isolated: bool
    peak_rss_bytes: int = 0  # read from /proc just before a kill (0 when unknown)
    cpu_s: float = 0.0  # likewise
    sandboxed: bool = False  # ran under bubblewrap and the seccomp filter


@dataclass(frozen=True, slots=True)
class WorkerPolicy:
    """The node's own caps; a job's requests are clipped to them.

    The worker gets a minimal environment, so ``python`` must be an interpreter that can
    import ``poolai`` without ``PYTHONPATH`` (or pass one in ``extra_env``).
    ``sandbox``: what the worker runs in (None or unavailable: network isolation only);
    ``hidden``: paths a sandboxed worker must not see even where they lie under a visible
    one (the node's data directory).
    """

    python: str = sys.executable
    max_memory_bytes: int = 8 << 30
    max_timeout_s: float = 3600.0
    max_output_bytes: int = 1 << 30
    threads: int = 1
    capture_bytes: int = 64 * 1024
    isolate_network: bool = True
    require_network_isolation: bool = False
    cuda_visible_devices: str = "0"
    extra_env: Mapping[str, str] = field(default_factory=dict)
    sandbox: Sandbox | None = None
    hidden: tuple[Path, ...] = ()

    @property
    def sandboxed(self) -> bool:
        return self.sandbox is not None and self.sandbox.available


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """The job's result record plus what the process did (for logs and the status page)."""

    result: JobResult
    process: ProcessOutcome


class _Capture:
    """Keeps the first ``cap`` bytes of a stream and counts the rest."""

    def __init__(self, cap: int) -> None:
        self.cap, self.data, self.dropped = cap, bytearray(), 0

    async def drain(self, stream: trio.abc.ReceiveStream) -> None:
        while chunk := await stream.receive_some(_READ_CHUNK):
            room = self.cap - len(self.data)
            self.data += chunk[:room]
            self.dropped += max(0, len(chunk) - room)


def _libc_unshare() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    try:
        return ctypes.CDLL(None, use_errno=True).unshare
    except (OSError, AttributeError):
        return None


_UNSHARE = _libc_unshare()




def _preexec(limits: ProcessLimits, unshare_net: bool):  # type: ignore[no-untyped-def]
    # Runs in the child between fork and exec: no logging, no allocation-heavy work.
    # A failed unshare is left for the parent to detect by comparing namespaces.
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if limits.memory_bytes is not None:
            resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        if limits.file_size_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE,
                               (limits.file_size_bytes, limits.file_size_bytes))
        # Workers yield the CPU to the node process, whose heartbeats and offers are what the
        # rest of the mesh sees; a starved node looks dead to its submitters.
        os.nice(WORKER_NICENESS)
        if unshare_net and _UNSHARE is not None:
            _UNSHARE(CLONE_NEWNET)

    return apply


def _netns(pid: int | str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def _proc_usage(pid: int) -> tuple[int, float]:
    """Peak RSS (VmHWM) and CPU seconds of a live process, from /proc; zeros if unreadable."""
    rss, cpu = 0, 0.0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                rss = int(line.split()[1]) * 1024
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        pass
    return rss, cpu


def _descendants(pid: int, limit: int = 64) -> list[int]:
    """``pid`` and its descendants (breadth first, at most ``limit``), from /proc."""
    found, i = [pid], 0
    while i < len(found) < limit:
        try:
            tasks = os.listdir(f"/proc/{found[i]}/task")
            for task in tasks:
                text = Path(f"/proc/{found[i]}/task/{task}/children").read_text()
                found.extend(int(c) for c in text.split() if int(c) not in found)
        except (OSError, ValueError):
            pass
        i += 1
    return found[:limit]


def _tree_usage(pid: int) -> tuple[int, float]:
    """Peak RSS of the largest process and CPU seconds of all, in ``pid``'s tree: under
    bubblewrap the worker is a grandchild of the process the runner started."""
    usages = [_proc_usage(p) for p in _descendants(pid)]
    return max(rss for rss, _ in usages), sum(cpu for _, cpu in usages)


def _kill_group(proc: trio.Process) -> None:
    if proc.returncode is None:  # not reaped yet, so the pid cannot have been reused
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


async def run_isolated(argv: Sequence[str], *, stdin: bytes, limits: ProcessLimits,
                       env: Mapping[str, str], cwd: Path | None = None) -> ProcessOutcome:
    """Run ``argv`` sandboxed (see the module docstring) until it exits or its timeout passes.

    A timeout is an outcome (``timed_out=True``), not an exception. If the caller's scope
    is cancelled, the process group is killed and reaped before Cancelled propagates.
    Raises :class:`IsolationUnavailable` (having killed the process before it read any
    input) when ``require_network_isolation`` is set and no namespace could be made.
    Under a sandbox, ``argv`` and ``cwd`` name paths inside its layout.
    """
    sandbox = limits.sandbox if limits.sandbox is not None and limits.sandbox.available else None
    unshare_net = sandbox is None and limits.isolate_network and os.geteuid() == 0
    thread_env = {"OMP_NUM_THREADS": str(limits.threads), "MKL_NUM_THREADS": str(limits.threads)}
    start = trio.current_time()
    lifeline, held = os.pipe()  # see the module docstring; the node keeps ``held`` open
    env = {**env, **thread_env, LIFELINE_ENV: str(lifeline)}
    try:
        proc, isolated = await _start(argv, limits, sandbox, unshare_net, env, cwd, lifeline)
    except BaseException:
        os.close(held)
        raise
    finally:
        os.close(lifeline)
    try:
        return await _supervise(proc, stdin, limits, start, unshare_net, isolated, sandbox is not None)
    finally:
        os.close(held)


async def _start(argv: Sequence[str], limits: ProcessLimits, sandbox: Sandbox | None,
                 unshare_net: bool, env: Mapping[str, str], cwd: Path | None, lifeline: int
                 ) -> tuple[trio.Process, bool]:
    """The started process, and whether it has a network namespace of its own."""
    if sandbox is not None:
        layout = limits.layout or Layout(readable=sandbox.readable)
        if cwd is not None:
            layout = replace(layout, cwd=str(cwd))
        fd = seccomp_fd(sandbox.seccomp)
        try:
            proc = await trio.lowlevel.open_process(
                bwrap_argv(sandbox, layout, argv, fd), stdin=-1, stdout=-1, stderr=-1,
                cwd="/", env=env, pass_fds=(fd, lifeline), start_new_session=True,
                preexec_fn=_preexec(limits, False))
        finally:
            os.close(fd)
        return proc, True  # bwrap --unshare-all gives it a network namespace, or fails
    proc = await trio.lowlevel.open_process(
        list(argv), stdin=-1, stdout=-1, stderr=-1, cwd=cwd, env=env, pass_fds=(lifeline,),
        start_new_session=True, preexec_fn=_preexec(limits, unshare_net))
    ours, theirs = _netns("self"), _netns(proc.pid)
    return proc, ours is not None and theirs is not None and ours != theirs


async def _supervise(proc: trio.Process, stdin: bytes, limits: ProcessLimits, start: float,
                     unshare_net: bool, isolated: bool, sandboxed: bool) -> ProcessOutcome:
    if limits.require_network_isolation and not isolated:
        _kill_group(proc)
        with trio.CancelScope(shield=True):
            await proc.wait()
        raise IsolationUnavailable("unshare(CLONE_NEWNET) is unavailable (it needs root)")
    if limits.isolate_network and not isolated:
        log.warning("worker %d runs without network isolation (%s)", proc.pid,
                    "not root" if not unshare_net else "unshare(CLONE_NEWNET) failed")
    out, err = _Capture(limits.capture_bytes), _Capture(limits.capture_bytes)
    usage = (0, 0.0)
    try:
        with trio.move_on_after(limits.timeout_s) as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_feed, proc, stdin)
                nursery.start_soon(out.drain, proc.stdout)
                nursery.start_soon(err.drain, proc.stderr)
                await proc.wait()
        timed_out = scope.cancelled_caught and proc.returncode is None
        if timed_out:
            usage = _tree_usage(proc.pid) if sandboxed else _proc_usage(proc.pid)
    finally:
        _kill_group(proc)
        with trio.CancelScope(shield=True):
            await proc.wait()
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    await stream.aclose()
    return ProcessOutcome(
        returncode=None if timed_out else proc.returncode, timed_out=timed_out,
        stdout=bytes(out.data), stderr=bytes(err.data), stdout_dropped=out.dropped,
        stderr_dropped=err.dropped, wall_s=trio.current_time() - start,
        network_isolated=isolated, peak_rss_bytes=usage[0], cpu_s=usage[1],
        sandboxed=sandboxed)


async def _feed(proc: trio.Process, data: bytes) -> None:
    assert proc.stdin is not None
    try:
        await proc.stdin.send_all(data)
        await proc.stdin.aclose()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the worker exited without reading its spec; its result says why


def job_limits(job: JobSpec, policy: WorkerPolicy) -> ProcessLimits:
    """The job's requests clipped to the node's policy."""
    gpu = job.requirements.device is Device.GPU
    memory = min(job.requirements.memory_mib << 20, policy.max_memory_bytes)
    return ProcessLimits(
        timeout_s=min(job.timeout_s, policy.max_timeout_s),
        memory_bytes=None if gpu else memory,
        file_size_bytes=policy.max_output_bytes, threads=policy.threads,
        capture_bytes=policy.capture_bytes, isolate_network=policy.isolate_network,
        require_network_isolation=policy.require_network_isolation,
        sandbox=policy.sandbox if policy.sandboxed else None)


def job_sandbox_layout(job: JobSpec, policy: WorkerPolicy, files_dir: Path,
                       out_dir: Path) -> Layout:
    """The sandboxed worker's file system: see :func:`poolai.node.jobs.sandbox.job_layout`.
    A GPU job gets the device nodes of the GPUs in ``policy.cuda_visible_devices``."""
    assert policy.sandbox is not None
    gpu = job.requirements.device is Device.GPU and policy.cuda_visible_devices
    return job_layout(policy.sandbox, policy.python, files_dir, out_dir, hidden=policy.hidden,
                      devices=gpu_devices(policy.cuda_visible_devices) if gpu else ())


def worker_env(job: JobSpec, policy: WorkerPolicy, scratch: Path) -> dict[str, str]:
    """A minimal environment: no inherited secrets, no proxies, GPUs only when asked for."""
    gpu = job.requirements.device is Device.GPU
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(scratch),
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "CUDA_VISIBLE_DEVICES": policy.cuda_visible_devices if gpu else "",
        **policy.extra_env,
    }


def worker_argv(policy: WorkerPolicy, files_dir: Path | str, out_dir: Path | str) -> list[str]:
    """The worker's command line (absolute paths: the worker runs with ``cwd=out_dir``)."""
    return [policy.python, "-m", "poolai.node.jobs.worker",
            "--files", os.path.abspath(files_dir), "--out", os.path.abspath(out_dir)]


def _read_result(out_dir: Path) -> JobResult | None:
    path = out_dir / "result.json"
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_RESULT_BYTES + 1)
        if len(data) > MAX_RESULT_BYTES:
            return None
        return result_from_dict(json.loads(data))
    except (OSError, ValueError, InvalidJob):
        return None


async def run_job(job: JobSpec, files_dir: Path, out_dir: Path,
                  policy: WorkerPolicy | None = None) -> JobOutcome:
    """Run ``job`` in a worker process and return its result.

    ``files_dir`` holds the files named by ``job.files()``; ``out_dir`` must exist and
    receives ``output.safetensors`` and ``result.json``. The result is composed here
    when the worker timed out (TIMED_OUT), died of its memory limit without a record
    (OUT_OF_MEMORY) or otherwise died without a valid record (CRASHED), and the output
    file's sha256 is checked against the record. Cancellation kills the
    worker and propagates.
    """
    from poolai.node.jobs.worker import OUTPUT_FILE, sha256_file

    policy = policy or WorkerPolicy()
    limits = job_limits(job, policy)
    if limits.sandbox is not None:
        limits = replace(limits, layout=job_sandbox_layout(job, policy, files_dir, out_dir))
        argv = worker_argv(policy, FILES_INSIDE, OUT_INSIDE)
    else:
        argv = worker_argv(policy, files_dir, out_dir)
    proc = await run_isolated(argv, stdin=encode_job(job), limits=limits,
                              env=worker_env(job, policy, Path(argv[-1])), cwd=Path(argv[-1]))
    if proc.timed_out:
        result = JobResult(job.job_id, JobStatus.TIMED_OUT,
                           timings=Timings(wall_s=proc.wall_s, cpu_s=proc.cpu_s),
                           peak_rss_bytes=proc.peak_rss_bytes,
                           error=f"killed after its timeout of {limits.timeout_s:g} s")
        return JobOutcome(result, proc)
    result = _read_result(out_dir)
    tail = proc.stderr[-2000:].decode(errors="replace")
    if result is None or result.job_id not in (job.job_id, ""):
        if limits.memory_bytes is not None and any(m in proc.stderr for m in _OOM_STDERR):
            result = JobResult(job.job_id, JobStatus.OUT_OF_MEMORY,
                               timings=Timings(wall_s=proc.wall_s),
                               error=f"out of memory: the job exceeded its memory limit of "
                                     f"{limits.memory_bytes >> 20} MiB (the worker died, exit "
                                     f"{proc.returncode}); stderr tail: {tail[-500:]}")
            return JobOutcome(result, proc)
        result = JobResult(job.job_id, JobStatus.CRASHED,
                           error=f"worker exited with {proc.returncode} and no valid result; "
                                 f"stderr tail: {tail}")
    elif result.status is JobStatus.OK:
        ok = result.output is not None and result.output.name == OUTPUT_FILE and \
            await trio.to_thread.run_sync(sha256_file, out_dir / OUTPUT_FILE) == \
            result.output.sha256
        if not ok:
            result = replace(result, status=JobStatus.CRASHED,
                             error="the output file does not match the result record")
    if result.job_id == "":
        result = replace(result, job_id=job.job_id)
    return JobOutcome(result, proc)
