"""The worker (in-process via ``execute``) and the runner (real, sandboxed processes).

Only a few tests start a worker that imports torch (~2-5 s each); the rest run the
worker's core in this process or sandbox tiny programs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
import trio
from safetensors.torch import load_file, save_file

from poolai.node.jobs.models import build_model
from poolai.node.jobs.runner import (
    ProcessLimits,
    WorkerPolicy,
    run_isolated,
    run_job,
    worker_argv,
)
from poolai.node.jobs.spec import (
    LIFELINE_ENV,
    BuiltinProgram,
    FileRef,
    JobSpec,
    JobStatus,
    Loss,
    MLPConfig,
    Mode,
    Pt2Program,
    Requirements,
    TrainSpec,
    TransformerConfig,
    job_to_dict,
)
from poolai.node.jobs.worker import OUTPUT_FILE, execute, out_of_memory

MLP = MLPConfig(16, (32,), 4)
GPT = TransformerConfig(vocab_size=50, d_model=32, n_heads=4, n_layers=2, d_ff=64, max_seq_len=16)
IS_ROOT = os.geteuid() == 0
ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


def put(directory: Path, name: str, tensors: dict[str, torch.Tensor] | None = None,
        data: bytes | None = None) -> FileRef:
    path = directory / name
    if tensors is not None:
        save_file({k: v.contiguous() for k, v in tensors.items()}, path)
    else:
        path.write_bytes(data or b"")
    body = path.read_bytes()
    return FileRef(name, hashlib.sha256(body).hexdigest(), len(body))


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "files").mkdir()
    (tmp_path / "out").mkdir()
    return tmp_path / "files", tmp_path / "out"


@pytest.fixture(scope="session")
def mlp_pt2() -> tuple[bytes, torch.nn.Module]:
    torch.manual_seed(0)
    model = build_model(MLP).eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    ep = torch.export.export(model, (torch.randn(8, 16),), dynamic_shapes={"x": {0: batch}})
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    return buf.getvalue(), model


def builtin_job(files: Path, config, inputs: dict[str, torch.Tensor],  # type: ignore[no-untyped-def]
                **kw) -> tuple[JobSpec, torch.nn.Module]:
    torch.manual_seed(1)
    model = build_model(config)
    weights = put(files, "weights.safetensors", model.state_dict())
    job = JobSpec("job-1", "peer1", BuiltinProgram(config, weights),
                  put(files, "inputs.safetensors", inputs), **kw)
    return job, model


def pt2_job(files: Path, archive: bytes, model: torch.nn.Module, x: torch.Tensor) -> JobSpec:
    program = Pt2Program(put(files, "model.pt2", data=archive),
                         put(files, "weights.safetensors", model.state_dict()))
    return JobSpec("job-2", "peer1", program, put(files, "inputs.safetensors", {"x": x}))


# ----------------------------------------------------------------------------- in-process


def test_execute_trains_an_mlp_and_returns_weights_and_losses(dirs) -> None:
    files, out = dirs
    x = torch.randn(32, 16)
    job, _ = builtin_job(files, MLP, {"x": x, "target": torch.randn(32, 4)}, mode=Mode.TRAIN,
                         train=TrainSpec(steps=5, lr=0.05, loss=Loss.MSE))
    result = execute(job, files, out)
    assert result.status is JobStatus.OK, result.error
    assert len(result.losses) == 5 and result.losses[-1] < result.losses[0]
    weights = load_file(out / OUTPUT_FILE)
    assert set(weights) == {"layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias"}
    assert result.output is not None
    assert result.output.sha256 == hashlib.sha256((out / OUTPUT_FILE).read_bytes()).hexdigest()


def test_execute_refuses_bad_files_with_clear_errors(dirs) -> None:
    files, out = dirs
    job, _ = builtin_job(files, MLP, {"x": torch.randn(3, 15)})
    result = execute(job, files, out)
    assert result.status is JobStatus.REFUSED
    assert result.error == "inputs: x has shape [3, 15], expected ['batch', 16]"
    (files / "weights.safetensors").write_bytes(b"tampered")
    result = execute(job, files, out)
    assert result.status is JobStatus.REFUSED and "has 8 bytes" in result.error
    assert not (out / OUTPUT_FILE).exists()


def test_execute_runs_a_sanitised_pt2_and_refuses_an_attack(dirs, mlp_pt2) -> None:
    files, out = dirs
    archive, model = mlp_pt2
    x = torch.randn(7, 16)
    result = execute(pt2_job(files, archive, model, x), files, out)
    assert result.status is JobStatus.OK, result.error
    with torch.inference_mode():
        assert torch.allclose(load_file(out / OUTPUT_FILE)["output"], model(x), atol=1e-6)

    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    model_json = next(n for n in members if n.endswith("models/model.json"))
    doc = json.loads(members[model_json])
    doc["graph_module"]["graph"]["nodes"][0]["target"] = "torch.ops.aten.from_file.default"
    members[model_json] = json.dumps(doc).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, body in members.items():
            zf.writestr(name, body)
    result = execute(pt2_job(files, buf.getvalue(), model, x), files, out)
    assert result.status is JobStatus.REFUSED
    assert "from_file.default' is not on the allow-list" in result.error


def test_execute_reports_a_program_failure(dirs, mlp_pt2) -> None:
    files, out = dirs
    archive, model = mlp_pt2
    weights = {k: v for k, v in model.state_dict().items() if k != "layers.1.bias"}
    job = pt2_job(files, archive, model, torch.randn(2, 16))
    program = Pt2Program(job.program.archive, put(files, "weights.safetensors", weights))
    result = execute(JobSpec("job-3", "peer1", program, job.inputs), files, out)
    assert result.status is JobStatus.FAILED
    assert result.error.startswith("RuntimeError") and "layers.1.bias" in result.error


# ----------------------------------------------------------------------------- real workers


@pytest.mark.live
async def test_worker_process_runs_an_mlp_forward(dirs) -> None:
    files, out = dirs
    x = torch.randn(9, 16)
    job, model = builtin_job(files, MLP, {"x": x})
    with trio.fail_after(120):
        outcome = await run_job(job, files, out)
    result = outcome.result
    assert result.status is JobStatus.OK, (result.error, outcome.process.stderr[-2000:])
    with torch.no_grad():
        assert torch.allclose(load_file(out / OUTPUT_FILE)["y"], model(x), rtol=1e-5, atol=1e-6)
    assert result.device.startswith("cpu")
    assert result.timings.wall_s > 0 and result.timings.cpu_s > 0
    assert result.peak_rss_bytes > 50 << 20  # torch is loaded
    assert outcome.process.network_isolated == IS_ROOT


@pytest.mark.live
async def test_worker_process_runs_a_transformer_forward(dirs) -> None:
    files, out = dirs
    tokens = torch.randint(0, GPT.vocab_size, (3, 11))
    job, model = builtin_job(files, GPT, {"tokens": tokens})
    with trio.fail_after(120):
        outcome = await run_job(job, files, out)
    assert outcome.result.status is JobStatus.OK, outcome.result.error
    with torch.no_grad():
        ref = model.eval()(tokens)
    logits = load_file(out / OUTPUT_FILE)["logits"]
    assert logits.shape == (3, 11, 50)
    assert torch.allclose(logits, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.live
async def test_worker_process_runs_a_pt2_program(dirs, mlp_pt2) -> None:
    files, out = dirs
    archive, model = mlp_pt2
    x = torch.randn(100, 16)
    with trio.fail_after(120):
        outcome = await run_job(pt2_job(files, archive, model, x), files, out)
    assert outcome.result.status is JobStatus.OK, outcome.result.error
    with torch.inference_mode():
        assert torch.allclose(load_file(out / OUTPUT_FILE)["output"], model(x),
                              rtol=1e-5, atol=1e-6)


async def test_job_over_its_timeout_is_killed_and_reported(dirs) -> None:
    files, out = dirs
    config = MLPConfig(512, (2048, 2048), 512)
    x = torch.randn(2048, 512)
    job, _ = builtin_job(files, config, {"x": x, "target": x.clone()}, mode=Mode.TRAIN,
                         train=TrainSpec(steps=10_000, lr=0.01), timeout_s=1.0)
    with trio.fail_after(60):
        outcome = await run_job(job, files, out)
    assert outcome.result.status is JobStatus.TIMED_OUT
    assert outcome.result.error == "killed after its timeout of 1 s"
    assert outcome.process.returncode is None and outcome.process.timed_out
    assert not (out / OUTPUT_FILE).exists()


@pytest.mark.live
async def test_job_over_its_memory_limit_is_stopped_and_reported_as_such(dirs) -> None:
    files, out = dirs
    wide = MLPConfig(1, (16384,), 1)  # batch 65536 x 16384 activations: 4 GiB, over a 1 GiB cap
    job, _ = builtin_job(files, wide, {"x": torch.randn(65536, 1)},
                         requirements=Requirements(memory_mib=1024))
    with trio.fail_after(120):
        outcome = await run_job(job, files, out)
    result = outcome.result
    assert result.status is JobStatus.OUT_OF_MEMORY, (result, outcome.process.stderr[-2000:])
    assert result.error.startswith("out of memory: the job exceeded its memory limit of 1024 MiB ("), \
        result.error
    assert outcome.process.returncode == 3 and not outcome.process.timed_out
    assert not (out / OUTPUT_FILE).exists()


def test_a_memory_error_behind_a_failed_cleanup_still_reads_as_out_of_memory() -> None:
    """zipfile's __exit__ once turned a MemoryError in writestr into 'I/O operation on closed file'."""
    try:
        try:
            raise MemoryError
        except MemoryError:
            raise ValueError("I/O operation on closed file.") from None
    except ValueError as exc:
        masked = exc
    assert out_of_memory(masked)
    assert not out_of_memory(ValueError("I/O operation on closed file."))


async def test_a_zip_bomb_program_is_refused_before_it_inflates(dirs, mlp_pt2) -> None:
    """Two deflated members of 64 MiB of zeros in a ~130 KB archive, under a 1 GiB cap: the
    worker refuses the archive from its declared sizes, without inflating either member."""
    files, out = dirs
    archive, model = mlp_pt2
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    root = next(iter(members)).split("/")[0]
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, body in members.items():
            zf.writestr(name, body)
        for i in (8, 9):
            zf.writestr(f"{root}/data/weights/weight_{i}", bytes(64 << 20))
    assert len(bomb.getvalue()) < 1 << 20
    job = dataclasses.replace(pt2_job(files, bomb.getvalue(), model, torch.randn(2, 16)),
                              requirements=Requirements(memory_mib=1024))
    with trio.fail_after(120):
        outcome = await run_job(job, files, out)
    result = outcome.result
    assert result.status is JobStatus.REFUSED, (result, outcome.process.stderr[-2000:])
    assert "more than 200:1" in result.error and result.peak_rss_bytes < 900 << 20


@pytest.mark.parametrize(("stderr", "status"), [
    ("Traceback (most recent call last):\nMemoryError", JobStatus.OUT_OF_MEMORY),
    ("terminate called after throwing an instance of 'std::bad_alloc'", JobStatus.OUT_OF_MEMORY),
    ("Segmentation fault", JobStatus.CRASHED),
])
async def test_a_worker_that_dies_without_a_record_is_classified_by_its_stderr(
        dirs, tmp_path: Path, stderr: str, status: JobStatus) -> None:
    files, out = dirs
    job, _ = builtin_job(files, MLP, {"x": torch.randn(2, 16)})
    fake = tmp_path / "python"  # stands in for the interpreter: dies before writing a result
    fake.write_text(f"#!/bin/sh\nprintf '%s\\n' {json.dumps(stderr)} >&2\nexit 134\n")
    fake.chmod(0o755)
    with trio.fail_after(60):
        outcome = await run_job(job, files, out, WorkerPolicy(python=str(fake)))
    assert outcome.result.status is status, outcome.result
    assert outcome.process.returncode == 134
    if status is JobStatus.OUT_OF_MEMORY:
        assert outcome.result.error.startswith("out of memory: the job exceeded its memory limit "
                                               "of 2048 MiB (the worker died, exit 134)")
    else:
        assert outcome.result.error.startswith("worker exited with 134 and no valid result")


async def test_worker_refuses_a_bad_config_before_importing_torch(dirs) -> None:
    files, out = dirs
    job, _ = builtin_job(files, MLP, {"x": torch.randn(2, 16)})
    wire = job_to_dict(job)
    wire["program"]["config"]["hidden"] = [0]
    argv = worker_argv(WorkerPolicy(), files, out)
    with trio.fail_after(60):
        proc = await run_isolated(argv, stdin=json.dumps(wire).encode(),
                                  limits=ProcessLimits(timeout_s=30, memory_bytes=256 << 20),
                                  env=ENV)
    assert proc.returncode == 2, proc.stderr.decode()[-2000:]
    record = json.loads((out / "result.json").read_text())
    assert record["status"] == "refused"
    assert record["error"] == "hidden width=0 is outside [1, 65536]"


# ----------------------------------------------------------------------------- the sandbox


async def py(code: str, **limits) -> tuple:  # type: ignore[no-untyped-def]
    with trio.fail_after(60):
        return await run_isolated([sys.executable, "-c", code], stdin=b"",
                                  limits=ProcessLimits(**{"timeout_s": 30, **limits}), env=ENV)


async def test_sandbox_applies_the_memory_cap() -> None:
    proc = await py("bytearray(512 << 20)", memory_bytes=256 << 20)
    assert proc.returncode == 1 and b"MemoryError" in proc.stderr
    proc = await py("bytearray(64 << 20)", memory_bytes=256 << 20)
    assert proc.returncode == 0


@pytest.mark.skipif(not IS_ROOT, reason="a network namespace needs root")
async def test_sandbox_has_no_network() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        code = (f"import socket\ntry:\n socket.create_connection(('127.0.0.1', {port}), 5)\n"
                f" print('connected')\nexcept OSError as e:\n print('errno', e.errno)")
        isolated = await py(code)
        control = await py(code, isolate_network=False)
    assert isolated.network_isolated and isolated.stdout.strip() == b"errno 101"  # unreachable
    assert not control.network_isolated and control.stdout.strip() == b"connected"


async def test_sandbox_caps_captured_output_and_sets_threads() -> None:
    proc = await py("import os; print(os.environ['OMP_NUM_THREADS']); print('x' * 200000)",
                    capture_bytes=1000, threads=3)
    assert proc.stdout.startswith(b"3\nxxx") and len(proc.stdout) == 1000
    assert proc.stdout_dropped == 200003 - 1000


async def test_sandbox_timeout_and_cancellation_kill_the_process(tmp_path: Path) -> None:
    proc = await py("import time; time.sleep(60)", timeout_s=0.5)
    assert proc.timed_out and proc.returncode is None
    fifo = tmp_path / "pid"
    os.mkfifo(fifo)  # the child writes its pid here; reading blocks until it has
    code = f"import os, time; open({str(fifo)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(py, code)
            pid = int(await trio.to_thread.run_sync(fifo.read_text, abandon_on_cancel=True))
            nursery.cancel_scope.cancel()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped before the cancelled nursery exited


def test_node_side_modules_do_not_import_torch() -> None:
    code = ("import sys, poolai.node.jobs.runner, poolai.node.jobs.worker, poolai.node.jobs.sanitise; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert proc.stdout.strip() == b"[]", proc.stderr.decode()[-2000:]


@pytest.mark.live
async def test_a_worker_outlives_the_thread_that_started_it() -> None:
    """trio forks from a cached thread that exits after 10 s idle; a worker tied to that
    thread (PR_SET_PDEATHSIG) was SIGKILLed 10 s into every longer job."""
    with trio.fail_after(60):
        proc = await py("import time; time.sleep(12); print('done')", timeout_s=40.0)
    assert (proc.returncode, proc.stdout.strip()) == (0, b"done"), proc.stderr[-500:]


def test_a_worker_ends_its_process_group_when_its_node_is_gone() -> None:
    """The worker's side of the lifeline: EOF on the pipe (its node closed it or died)
    kills the worker and anything it started, and nothing else."""
    read_end, write_end = os.pipe()
    code = ("import subprocess, sys, time\n"
            "from poolai.node.jobs.worker import hold_lifeline\n"
            "assert hold_lifeline()\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, LIFELINE_ENV: str(read_end)}, pass_fds=(read_end,),
                            start_new_session=True)
    os.close(read_end)
    try:
        grandchild = int(proc.stdout.readline())
        assert proc.poll() is None
        os.close(write_end)  # the node is gone
        assert proc.wait(timeout=20) == -signal.SIGKILL
        deadline = time.monotonic() + 20  # the grandchild got the same SIGKILL; wait for the kernel
        while alive(grandchild):
            assert time.monotonic() < deadline, "the worker's child outlived it"
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def alive(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (a zombie has)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


async def test_the_runner_hands_every_worker_a_lifeline() -> None:
    code = ("import os\nfd = int(os.environ['POOLAI_LIFELINE_FD'])\n"
            "os.set_blocking(fd, False)\n"
            "try:\n print(os.read(fd, 1))\nexcept BlockingIOError:\n print('open')")
    proc = await py(code)
    assert proc.stdout.strip() == b"open"  # held open by the runner while the worker runs
