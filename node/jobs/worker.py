"""The worker process: runs one job and writes its outputs and result record.

Started by :mod:`poolai.node.jobs.runner` as ``python -m poolai.node.jobs.worker --files DIR --out DIR``
with the job spec (JSON, :func:`poolai.node.jobs.spec.encode_job`) on stdin. It writes
``<out>/output.safetensors`` and ``<out>/result.json`` (:func:`~poolai.node.jobs.spec.result_to_dict`)
and exits 0 (ok), 2 (refused), 3 (out of memory) or 1 (failed).

Everything that can be checked without torch is checked first, in this order:
the spec, every file's size and sha256, safetensors headers against the family's
signature, and a .pt2 archive through :func:`poolai.node.jobs.sanitise.sanitise_pt2`.
Only then is torch imported, so a refused job costs no torch import and no
submitted byte reaches torch unchecked. Isolation (address-space cap, no network,
wall timeout) is applied by the runner, not here.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import resource
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from poolai.mesh.durable import write_atomic
from poolai.node.jobs.sanitise import (
    DEFAULT_LIMITS,
    SanitisedPt2,
    parse_safetensors_header,
    safetensors_header_length,
    sanitise_pt2,
)
from poolai.node.jobs.spec import (
    LIFELINE_ENV,
    MAX_SPEC_BYTES,
    BuiltinProgram,
    Device,
    FileRef,
    InvalidJob,
    JobResult,
    JobSpec,
    JobStatus,
    Mode,
    Pt2Program,
    TensorInfo,
    Timings,
    check_tensors,
    decode_job,
    input_signature,
    result_to_dict,
    weight_signature,
)

log = logging.getLogger(__name__)

OUTPUT_FILE = "output.safetensors"
RESULT_FILE = "result.json"
EXIT_OK, EXIT_FAILED, EXIT_REFUSED, EXIT_OUT_OF_MEMORY = 0, 1, 2, 3
# How an allocation that hit the address-space cap (or a full GPU) shows up when it is not a
# MemoryError: torch's CPU allocator, torch.OutOfMemoryError (CUDA), and the loader failing
# to map a shared library (import torch under too small a cap).
_OOM_MARKS = ("can't allocate memory", "out of memory", "cannot allocate memory",
              "failed to map segment from shared object")


class WorkerUnavailable(Exception):


    """This worker cannot offer what the job requires (no GPU, too small a GPU)."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def verified_path(files_dir: Path, ref: FileRef) -> Path:
    """The file's path once its size and sha256 match the spec; raises :class:`InvalidJob`."""
    path = files_dir / ref.name
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise InvalidJob(f"file {ref.name!r} is missing") from None
    if size != ref.size:
        raise InvalidJob(f"file {ref.name!r} has {size} bytes, the spec says {ref.size}")
    if sha256_file(path) != ref.sha256:
        raise InvalidJob(f"file {ref.name!r} does not match its sha256")
    return path


def read_header(path: Path) -> dict[str, TensorInfo]:
    with open(path, "rb") as f:
        n = safetensors_header_length(f.read(8))
        header = f.read(n)
    if len(header) != n:
        raise InvalidJob(f"{path.name}: safetensors header is truncated")
    return parse_safetensors_header(header, path.stat().st_size)


def _cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation that failed (the memory limit, or the GPU is full),
    or an error raised while one was being handled (cleanup that failed in its wake)."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if isinstance(link, MemoryError) or isinstance(link, RuntimeError | OSError) and any(
                mark in str(link).lower() for mark in _OOM_MARKS):
            return True
        link = link.__cause__ or link.__context__
    return False


def memory_error_text(exc: BaseException) -> str:
    """The error of an OUT_OF_MEMORY record: the limit, and the first line of what raised."""
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    what = (f"the job exceeded its memory limit of {limit >> 20} MiB"
            if limit != resource.RLIM_INFINITY else "an allocation failed")
    detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    return f"out of memory: {what} ({type(exc).__name__}{': ' + detail if detail else ''})"


class _Prepared:
    """What the torch-free checks produced: verified paths and, for .pt2, the rebuilt archive."""

    def __init__(self, job: JobSpec, files_dir: Path) -> None:
        program = job.program
        self.inputs = verified_path(files_dir, job.inputs)
        self.weights = verified_path(files_dir, program.weights)
        inputs_header = read_header(self.inputs)
        self.pt2: SanitisedPt2 | None = None
        if isinstance(program, BuiltinProgram):
            check_tensors(read_header(self.weights), weight_signature(program.config), "weights")
            loss = job.train.loss if job.train else None
            check_tensors(inputs_header, input_signature(program.config, job.mode, loss), "inputs")
            return
        assert isinstance(program, Pt2Program)
        if program.archive.size > DEFAULT_LIMITS.max_archive_bytes:
            raise InvalidJob(f"the .pt2 archive is over {DEFAULT_LIMITS.max_archive_bytes} bytes")
        archive = verified_path(files_dir, program.archive)
        self.pt2 = sanitise_pt2(archive.read_bytes(), DEFAULT_LIMITS)
        read_header(self.weights)  # names and shapes are checked by load_state_dict(strict)
        names = set(self.pt2.input_names)
        if set(inputs_header) != names:
            raise InvalidJob(f"inputs must be exactly {sorted(names)}, got {sorted(inputs_header)}")


def _select_device(job: JobSpec) -> Any:
    import torch

    req = job.requirements
    if req.device is Device.CPU:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise WorkerUnavailable("the job needs a GPU and this worker sees none")
    props = torch.cuda.get_device_properties(0)
    if props.total_memory < req.min_gpu_memory_mib << 20:
        raise WorkerUnavailable(f"the GPU has {props.total_memory >> 20} MiB, the job needs "
                                f"{req.min_gpu_memory_mib}")
    if req.min_compute_capability and (props.major, props.minor) < req.min_compute_capability:
        raise WorkerUnavailable(f"the GPU has compute capability {props.major}.{props.minor}")
    return torch.device("cuda", 0)


def _describe(device: Any) -> str:
    import torch

    if device.type == "cuda":
        return f"cuda:{device.index} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def _flatten_outputs(value: Any) -> dict[str, Any]:
    import torch

    if isinstance(value, torch.Tensor):
        return {"output": value}
    if isinstance(value, tuple | list) and all(isinstance(v, torch.Tensor) for v in value):
        return {f"output_{i}": v for i, v in enumerate(value)}
    raise TypeError(f"the program returned {type(value).__name__}, not tensors")


def _run(job: JobSpec, prepared: _Prepared, device: Any) -> tuple[dict[str, Any], list[float]]:
    import torch
    from safetensors.torch import load_file

    inputs = {k: v.to(device) for k, v in load_file(prepared.inputs).items()}
    weights = load_file(prepared.weights)
    if prepared.pt2 is not None:
        ep = torch.export.load(io.BytesIO(prepared.pt2.archive))
        module = ep.module()
        module.load_state_dict(weights, strict=True)
        module.to(device)
        with torch.inference_mode():
            out = module(*(inputs[n] for n in prepared.pt2.input_names))
        return _flatten_outputs(out), []

    from poolai.node.jobs import models
    program = job.program
    assert isinstance(program, BuiltinProgram)
    model = models.build_model(program.config)
    models.load_weights(model, weights)
    model.to(device)
    if job.mode is Mode.TRAIN:
        assert job.train is not None
        return models.train_steps(model, program.config, job.train, inputs)
    return models.forward(model, program.config, inputs), []


def execute(job: JobSpec, files_dir: Path, out_dir: Path) -> JobResult:
    """Run ``job`` in this process; every failure becomes a result, never an exception.

    This is the boundary where a submitted program's errors are contained: REFUSED for
    anything the submitter got wrong, FAILED when running it raised.
    """
    start, cpu0 = time.monotonic(), _cpu_seconds()
    setup_s = run_s = 0.0
    device_name = ""

    def finish(status: JobStatus, error: str = "", output: FileRef | None = None,
               losses: tuple[float, ...] = ()) -> JobResult:
        timings = Timings(wall_s=time.monotonic() - start, cpu_s=_cpu_seconds() - cpu0,
                          setup_s=setup_s, run_s=run_s)
        return JobResult(job.job_id, status, output, timings, _peak_rss_bytes(), device_name,
                         error[:4096], losses)

    try:
        prepared = _Prepared(job, files_dir)
        import torch
        from safetensors.torch import save_file

        device = _select_device(job)
        device_name = _describe(device)
        setup_s = time.monotonic() - start
        t_run = time.monotonic()
        outputs, losses = _run(job, prepared, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        run_s = time.monotonic() - t_run
        path = out_dir / OUTPUT_FILE
        save_file({k: v.detach().to("cpu").contiguous() for k, v in outputs.items()}, path)
        ref = FileRef(OUTPUT_FILE, sha256_file(path), path.stat().st_size)
        return finish(JobStatus.OK, output=ref, losses=tuple(losses))
    except InvalidJob as exc:
        return finish(JobStatus.REFUSED, str(exc))
    except Exception as exc:  # the submitted program's failure, reported in the record
        if out_of_memory(exc):
            return finish(JobStatus.OUT_OF_MEMORY, memory_error_text(exc))
        log.info("job %s failed", job.job_id, exc_info=True)
        return finish(JobStatus.FAILED, f"{type(exc).__name__}: {exc}")


def write_result(out_dir: Path, result: JobResult) -> None:
    write_atomic(out_dir / RESULT_FILE, json.dumps(result_to_dict(result)).encode())


def hold_lifeline(environ: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """End this worker's process group when the node that started it is gone: a thread
    waits on the lifeline pipe (see :mod:`poolai.node.jobs.runner`), whose EOF means the
    node closed it or died. False when the node passed none (a worker run by hand)."""
    raw = environ.get(LIFELINE_ENV, "")
    if not raw.isdigit():
        return False
    fd = int(raw)

    def wait_for_the_node() -> None:
        while True:
            try:
                if os.read(fd, 1) == b"":
                    break
            except InterruptedError:
                continue
            except OSError:
                break
        os.killpg(0, signal.SIGKILL)

    threading.Thread(target=wait_for_the_node, name="lifeline", daemon=True).start()
    return True


def main(argv: list[str] | None = None) -> int:
    hold_lifeline()
    parser = argparse.ArgumentParser(prog="python -m poolai.node.jobs.worker")
    parser.add_argument("--files", type=Path, required=True, help="the job's files")
    parser.add_argument("--out", type=Path, required=True, help="directory for outputs and result")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s worker %(levelname)s %(message)s")
    started = time.monotonic()
    try:
        job = decode_job(sys.stdin.buffer.read(MAX_SPEC_BYTES + 1))
    except InvalidJob as exc:
        timings = Timings(wall_s=time.monotonic() - started)
        write_result(args.out, JobResult("", JobStatus.REFUSED, timings=timings, error=str(exc)))
        return EXIT_REFUSED
    result = execute(job, args.files, args.out)
    write_result(args.out, result)
    log.info("job %s: %s %s", job.job_id, result.status.value, result.error[:200])
    return {JobStatus.OK: EXIT_OK, JobStatus.REFUSED: EXIT_REFUSED,
            JobStatus.OUT_OF_MEMORY: EXIT_OUT_OF_MEMORY}.get(result.status, EXIT_FAILED)


if __name__ == "__main__":
    sys.exit(main())
