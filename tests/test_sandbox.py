"""The worker sandbox, probed from inside by real processes, and the node's refusal of
peers' jobs where there is none.

The probe runs with a worker's layout and limits (``run_isolated`` under bubblewrap, the
same interpreter and paths ``run_job`` gives a worker) and reports what it sees and which
calls the kernel refused; the parent compares that with its own namespaces.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import trio
from polling import poll_until
from safetensors.torch import load_file, save_file

from poolai.node.auth import auth_headers
from poolai.node.jobs import protocol as jp
from poolai.node.jobs.executor import Executor
from poolai.node.jobs.models import build_model
from poolai.node.jobs.queue import WorkerLimits
from poolai.node.jobs.runner import ProcessLimits, WorkerPolicy, run_isolated, run_job
from poolai.node.jobs.sandbox import (
    FILES_INSIDE,
    OUT_INSIDE,
    Sandbox,
    detect,
    job_layout,
)
from poolai.node.jobs.spec import (
    BuiltinProgram,
    FileRef,
    JobSpec,
    JobStatus,
    MLPConfig,
    encode_job,
)
from poolai.node.jobs.worker import OUTPUT_FILE, sha256_file
from poolai.node.launcher import NodeProcess, stop_all, wait_until
from poolai.node.web.view import alerts

ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
MLP = MLPConfig(16, (32,), 4)

PROBE = r"""
import ctypes, errno, json, os, socket, sys
args = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
scmp = ctypes.CDLL("libseccomp.so.2")  # syscall numbers by name, for this machine

raw = libc.syscall

def nr(name):
    return scmp.seccomp_syscall_resolve_name(name.encode())

def errno_of(fn, *a):
    ctypes.set_errno(0)
    rc = fn(*a)
    if rc == 0 and fn is raw and a[0] == nr("clone"):
        os._exit(0)  # the child of a clone that should have been refused leaves at once
    return ctypes.get_errno() if rc == -1 else 0

def sock(family, kind=socket.SOCK_STREAM):
    try:
        socket.socket(family, kind).close()
        return 0
    except OSError as e:
        return e.errno

def write(path):
    try:
        with open(path, "w") as f:
            f.write("x")
        return 0
    except OSError as e:
        return e.errno

status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines())
data = args["data_dir"]
netns = os.open("/proc/self/ns/net", os.O_RDONLY)
io_uring_params = ctypes.create_string_buffer(120)
print(json.dumps({
    "uid": os.getuid(), "gid": os.getgid(),
    "ns": {n: os.readlink(f"/proc/self/ns/{n}") for n in ("user", "mnt", "pid", "net")},
    "CapEff": status["CapEff"].strip(), "CapBnd": status["CapBnd"].strip(),
    "NoNewPrivs": status["NoNewPrivs"].strip(), "Seccomp": status["Seccomp"].strip(),
    "pid": os.getpid(), "parent_visible": os.path.exists(f"/proc/{args['parent_pid']}"),
    "data_dir": os.path.exists(data) and sorted(os.listdir(data)),
    "identity_key": os.path.exists(os.path.join(data, "identity.key")),
    "interfaces": sorted(l.split(":")[0].strip() for l in open("/proc/net/dev").read().splitlines()[2:]),
    "files": sorted(os.listdir(args["files"])),
    "errno": {
        "setns": errno_of(libc.setns, netns, 0),
        "unshare_user": errno_of(libc.unshare, 0x10000000),
        "unshare_net": errno_of(libc.unshare, 0x40000000),
        "mount": errno_of(libc.mount, b"none", b"/tmp", b"tmpfs", 0, None),
        "ptrace_traceme": errno_of(libc.ptrace, 0, 0, 0, 0),
        "bpf": errno_of(raw, nr("bpf"), 0, None, 0),
        "keyctl": errno_of(raw, nr("keyctl"), 0, -3, 0),
        "io_uring_setup": errno_of(raw, nr("io_uring_setup"), 1, io_uring_params),
        "clone_newuser": errno_of(raw, nr("clone"), 0x10000000 | 17, 0, 0, 0, 0),
        "socket_inet": sock(socket.AF_INET),
        "socket_inet6": sock(socket.AF_INET6),
        "socket_netlink": sock(socket.AF_NETLINK, socket.SOCK_RAW),
        "socket_unix": sock(socket.AF_UNIX),
        "write_usr": write("/usr/poolai-probe"),
        "write_files": write(os.path.join(args["files"], "x")),
        "write_out": write(os.path.join(args["out"], "probe.txt")),
    },
}))
"""


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    found = detect()
    if not found.available:
        if os.environ.get("CI"):  # scripts/test.sh installs bubblewrap: CI must have it
            pytest.fail(f"no worker sandbox in CI: {found.problem}")
        pytest.skip(f"no worker sandbox on this machine: {found.problem}")
    return found


def node_dirs(root: Path) -> tuple[Path, Path, Path]:
    """A node's data directory with an identity key, and a job's directories inside it."""
    data = root / "node"
    work = data / "jobs" / "work" / "S-j1"
    (work / "files").mkdir(parents=True)
    (work / "out").mkdir()
    (data / "identity.key").write_bytes(b"secret")
    (work / "files" / "inputs.safetensors").write_bytes(b"i")
    return data, work / "files", work / "out"


async def probe(sandbox: Sandbox, data: Path, files: Path, out: Path,
                also_readable: tuple[str, ...] = ()) -> dict[str, Any]:
    layout = job_layout(sandbox, sys.executable, files, out, hidden=(data,))
    layout = dataclasses.replace(layout, readable=layout.readable + also_readable)
    args = json.dumps({"data_dir": str(data), "parent_pid": os.getpid(),
                       "files": FILES_INSIDE, "out": OUT_INSIDE})
    limits = ProcessLimits(timeout_s=60, memory_bytes=2 << 30, sandbox=sandbox, layout=layout)
    with trio.fail_after(90):
        proc = await run_isolated([sys.executable, "-c", PROBE, args], stdin=b"", limits=limits,
                                  env=ENV, cwd=Path(OUT_INSIDE))
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert proc.sandboxed and proc.network_isolated
    return json.loads(proc.stdout)


def own_ns(name: str) -> str:
    return os.readlink(f"/proc/self/ns/{name}")


@pytest.mark.parametrize("data_visible", [False, True], ids=["data-apart", "data-under-visible"])
async def test_a_sandboxed_worker_has_no_privileges_no_network_and_no_data_dir(
        sandbox: Sandbox, tmp_path: Path, data_visible: bool) -> None:
    data, files, out = node_dirs(tmp_path)
    # The second case binds the data directory's parent read-only (as a checkout holding a
    # data directory would be): the sandbox must cover the data directory itself.
    seen = await probe(sandbox, data, files, out, (str(tmp_path),) if data_visible else ())

    assert seen["uid"] == 65534 and seen["gid"] == 65534
    for ns in ("user", "mnt", "pid", "net"):
        assert seen["ns"][ns] != own_ns(ns), ns
    assert int(seen["CapEff"], 16) == 0 and int(seen["CapBnd"], 16) == 0
    assert seen["NoNewPrivs"] == "1" and seen["Seccomp"] == "2"  # 2: a filter is loaded
    assert seen["pid"] < 10 and not seen["parent_visible"]
    # Apart, it does not exist; under a visible path, an empty tmpfs covers it.
    assert seen["data_dir"] == ([] if data_visible else False), seen["data_dir"]
    assert not seen["identity_key"]
    assert seen["interfaces"] == ["lo"]
    assert seen["files"] == ["inputs.safetensors"]
    refused = {k: v for k, v in seen["errno"].items() if not k.startswith(("socket_unix", "write"))}
    assert refused == dict.fromkeys(refused, 1), refused  # every one EPERM
    assert seen["errno"]["socket_unix"] == 0
    assert seen["errno"]["write_usr"] == 30 and seen["errno"]["write_files"] == 30  # EROFS
    assert seen["errno"]["write_out"] == 0 and (out / "probe.txt").read_text() == "x"


async def test_without_the_sandbox_the_same_probe_sees_the_node(tmp_path: Path) -> None:
    """The control: the probe can tell, so the assertions above can fail."""
    data, files, out = node_dirs(tmp_path)
    args = json.dumps({"data_dir": str(data), "parent_pid": os.getpid(),
                       "files": str(files), "out": str(out)})
    with trio.fail_after(90):
        proc = await run_isolated([sys.executable, "-c", PROBE, args], stdin=b"",
                                  limits=ProcessLimits(timeout_s=60), env=ENV)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    seen = json.loads(proc.stdout)
    assert not proc.sandboxed
    assert seen["identity_key"] and seen["ns"]["mnt"] == own_ns("mnt")
    assert seen["errno"]["ptrace_traceme"] == 0 and seen["errno"]["socket_inet"] == 0


def put(directory: Path, name: str, tensors: dict[str, torch.Tensor]) -> FileRef:
    save_file({k: v.contiguous() for k, v in tensors.items()}, directory / name)
    return FileRef(name, sha256_file(directory / name), (directory / name).stat().st_size)


@pytest.mark.live
async def test_a_real_worker_runs_a_job_in_the_sandbox(sandbox: Sandbox, tmp_path: Path) -> None:
    data, files, out = node_dirs(tmp_path)
    torch.manual_seed(1)
    model = build_model(MLP)
    x = torch.randn(9, 16)
    job = JobSpec("job-1", "peer1", BuiltinProgram(MLP, put(files, "w.safetensors", model.state_dict())),
                  put(files, "x.safetensors", {"x": x}))
    with trio.fail_after(120):
        outcome = await run_job(job, files, out, WorkerPolicy(sandbox=sandbox, hidden=(data,)))
    assert outcome.result.status is JobStatus.OK, (outcome.result.error, outcome.process.stderr[-2000:])
    assert outcome.process.sandboxed and outcome.process.network_isolated
    with torch.no_grad():
        assert torch.allclose(load_file(out / OUTPUT_FILE)["y"], model(x), rtol=1e-5, atol=1e-6)


async def test_the_memory_cap_and_the_timeout_hold_in_the_sandbox(sandbox: Sandbox) -> None:
    def limits(**kw: Any) -> ProcessLimits:
        return ProcessLimits(**{"timeout_s": 30, "sandbox": sandbox, **kw})

    with trio.fail_after(90):
        over = await run_isolated([sys.executable, "-c", "bytearray(512 << 20)"], stdin=b"",
                                  limits=limits(memory_bytes=256 << 20), env=ENV)
        under = await run_isolated([sys.executable, "-c", "bytearray(64 << 20)"], stdin=b"",
                                   limits=limits(memory_bytes=256 << 20), env=ENV)
        token = uuid.uuid4().hex
        spin = await run_isolated([sys.executable, "-c", "b = bytearray(32 << 20)\nwhile 1: pass",
                                   token], stdin=b"", limits=limits(timeout_s=1.5), env=ENV)
    assert over.returncode == 1 and b"MemoryError" in over.stderr, over.stderr[-2000:]
    assert under.returncode == 0, under.stderr[-2000:]
    assert spin.timed_out and spin.returncode is None
    # CPU and peak memory are the worker's, a grandchild of the process the runner started:
    # bwrap itself holds a few MiB and spends milliseconds. (How much CPU the spinner got in
    # 1.5 s depends on the machine's load: 0.16 s on a loaded two-core machine.)
    assert spin.cpu_s > 0.02 and spin.peak_rss_bytes > 32 << 20, spin
    with trio.fail_after(10):
        await poll_until(lambda: not processes_with(token))


async def test_cancelling_a_sandboxed_process_kills_all_of_it(sandbox: Sandbox) -> None:
    token = uuid.uuid4().hex
    limits = ProcessLimits(timeout_s=60, sandbox=sandbox)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(
                run_isolated, [sys.executable, "-c", "import time; time.sleep(60)", token],
                stdin=b"", limits=limits, env=ENV))
            await poll_until(lambda: processes_with(token))
            nursery.cancel_scope.cancel()
        await poll_until(lambda: not processes_with(token))


def processes_with(token: str) -> list[int]:
    """Live processes (any namespace) whose command line holds ``token``, bwrap's included."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if token.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:
            pass
    return found


# ----------------------------------------------------------------------------- no sandbox

MISSING = Sandbox(bwrap="", problem="bubblewrap (bwrap) is not installed: install it")


def offer(submitter: str, job_id: str) -> jp.Offer:
    program = BuiltinProgram(MLP, FileRef("w.safetensors", "0" * 64, 1))
    job = JobSpec(job_id, submitter, program, FileRef("x.safetensors", "1" * 64, 1))
    return jp.Offer(spec=encode_job(job), files={"w.safetensors": "1" * 64, "x.safetensors": "2" * 64},
                    attempt=1)


@pytest.mark.parametrize("opt_in", [False, True])
async def test_an_executor_without_a_sandbox_refuses_peers_unless_its_owner_opts_in(
        tmp_path: Path, opt_in: bool) -> None:
    async def unused(*_: Any) -> Any:
        raise AssertionError("no job should run in this test")

    # Not started: offers are admitted (and saved) but nothing runs.
    ex = Executor("W", tmp_path, None, unused,  # type: ignore[arg-type]
                  lambda: WorkerLimits(slots=1, max_queued=4), runner=unused, sandbox=MISSING,
                  unsandboxed_jobs=opt_in)
    with trio.fail_after(10):
        own = await ex.offer("W", offer("W", "mine"))
        peer = await ex.offer("S", offer("S", "theirs"))
    assert isinstance(own, jp.Accept)
    if opt_in:
        assert isinstance(peer, jp.Accept)
    else:
        assert isinstance(peer, jp.Refuse) and peer.reason == "incapable"
        assert peer.message == ("this node has no job sandbox (bubblewrap (bwrap) is not "
                                "installed: install it) and runs only its owner's jobs")
    shown = ex.snapshot()["sandbox"]
    assert shown == {"available": False, "mechanism": "", "problem": MISSING.problem,
                     "unsandboxed_jobs": opt_in, "runs_peer_jobs": opt_in}
    texts = [a["text"] for a in alerts({"peers": [1], "jobs": ex.snapshot()}, [])]
    assert texts == [f"No job sandbox ({MISSING.problem}): peers' jobs "
                     + ("run without it because unsandboxed_jobs = true." if opt_in else
                        "are refused; this node's own jobs still run.")]


def test_detect_names_what_is_missing(tmp_path: Path) -> None:
    missing = detect(bwrap=str(tmp_path / "bwrap"))
    assert not missing.available
    assert missing.problem == ("bubblewrap (bwrap) is not installed: install the Debian "
                               "package bubblewrap (apt-get install bubblewrap)")
    broken = tmp_path / "fake-bwrap"  # installed, but cannot make namespaces
    broken.write_text("#!/bin/sh\n[ \"$1\" = --version ] && echo 'bubblewrap 0.0' && exit 0\n"
                      "echo 'bwrap: No permissions to create new namespace' >&2; exit 1\n")
    broken.chmod(0o755)
    refused = detect(bwrap=str(broken))
    assert not refused.available
    assert refused.problem.startswith("a trial sandbox failed (bwrap: No permissions to create "
                                      "new namespace)"), refused.problem


# ----------------------------------------------------------------------------- live

FAST = {"POOLAI_CAPACITY_HEARTBEAT": "0.5", "POOLAI_OVERLAY_SCALE": "0.2",
        "POOLAI_REDUNDANCY_FRACTION": "0"}


def api(node: NodeProcess, method: str, path: str, **kw: Any) -> httpx.Response:
    return httpx.request(method, node.api + path, headers=auth_headers(node.data_dir),
                         timeout=kw.pop("timeout", 60), **kw)


def submit(node: NodeProcess, tmp: Path, seed: int) -> tuple[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = build_model(MLP)
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(seed))
    tag = str(seed)
    refs = {}
    for name, tensors in (("weights.safetensors", dict(model.state_dict())),
                          ("inputs.safetensors", {"x": x})):
        save_file(tensors, tmp / f"{tag}-{name}")
        reply = api(node, "POST", "/api/admin/jobs/files", params={"name": name},
                    content=(tmp / f"{tag}-{name}").read_bytes())
        assert reply.status_code == 200, reply.text
        refs[name] = reply.json()

    def ref(name: str) -> dict[str, Any]:
        return {k: refs[name][k] for k in ("name", "sha256", "size")}

    job = {"program": {"kind": "builtin", "family": "mlp",
                       "config": {"in_features": 16, "hidden": [32], "out_features": 4},
                       "weights": ref("weights.safetensors")},
           "inputs": ref("inputs.safetensors")}
    reply = api(node, "POST", "/api/admin/jobs",
                json={"job": job, "files": {n: r["file_id"] for n, r in refs.items()}})
    assert reply.status_code == 201, reply.text
    with torch.no_grad():
        return reply.json()["job_id"], model(x)


def wait_done(node: NodeProcess, job_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = api(node, "GET", f"/api/jobs/{job_id}/wait", params={"timeout": "10"}).json()
        if data["phase"] in ("done", "cancelled"):
            return data
    raise AssertionError(f"job {job_id} did not end: {node.log()[-3000:]}")


@pytest.mark.live
@pytest.mark.timeout(300)
def test_a_node_without_a_sandbox_refuses_peers_jobs_unless_opted_in(tmp_path: Path) -> None:
    """W has no bwrap on its PATH. It says so at start and in /api/status, refuses the
    submitter's job as incapable with the reason, and still runs its own; W2, the same but
    with unsandboxed_jobs = true, runs the submitter's job."""
    bare = tmp_path / "bin"  # a PATH without bwrap
    bare.mkdir()
    nodes: list[NodeProcess] = []
    try:
        sub = NodeProcess(tmp_path / "sub", env={**FAST, "POOLAI_JOB_SLOTS": "0"}).start()
        nodes.append(sub)
        w = NodeProcess(tmp_path / "w", "--bootstrap", sub.addr, env={**FAST, "PATH": str(bare)}).start()
        nodes.append(w)
        shown = w.status()["jobs"]["sandbox"]
        assert shown["available"] is False and not shown["runs_peer_jobs"]
        assert shown["problem"].startswith("bubblewrap (bwrap) is not installed")
        wait_until(lambda: any("job sandbox unavailable: bubblewrap (bwrap) is not installed" in line
                               for line in w.output), 10, "the start-up line about the sandbox")
        wait_until(lambda: w.peer_id in {e["peer_id"] for e in sub.get("/api/capacity")["entries"]},
                   60, "W's capacity advert at the submitter")

        job_id, _ = submit(sub, tmp_path, 1)
        wait_until(lambda: w.peer_id in api(sub, "GET", f"/api/jobs/{job_id}").json()["refusals"],
                   60, "W's refusal")
        reason = api(sub, "GET", f"/api/jobs/{job_id}").json()["refusals"][w.peer_id]
        assert reason == ("incapable: this node has no job sandbox (" + shown["problem"]
                          + ") and runs only its owner's jobs")
        assert api(sub, "POST", f"/api/admin/jobs/{job_id}/cancel").status_code == 200

        own_id, expected = submit(w, tmp_path, 2)  # W's own job runs on W
        done = wait_done(w, own_id)
        assert done["result"]["status"] == "ok" and done["worker"] == w.peer_id, done["result"]["error"]
        got = api(w, "GET", f"/api/admin/jobs/{own_id}/output")
        (tmp_path / "own.safetensors").write_bytes(got.content)
        assert torch.allclose(load_file(tmp_path / "own.safetensors")["y"], expected, atol=1e-6)

        w.stop()
        nodes.remove(w)
        w2 = NodeProcess(tmp_path / "w2", "--bootstrap", sub.addr,
                         env={**FAST, "PATH": str(bare), "POOLAI_UNSANDBOXED_JOBS": "true"}).start()
        nodes.append(w2)
        assert w2.status()["jobs"]["sandbox"]["runs_peer_jobs"] is True
        wait_until(lambda: w2.peer_id in {e["peer_id"] for e in sub.get("/api/capacity")["entries"]},
                   60, "W2's capacity advert at the submitter")
        peer_id, expected = submit(sub, tmp_path, 3)
        done = wait_done(sub, peer_id)
        assert done["result"]["status"] == "ok" and done["worker"] == w2.peer_id, done
    finally:
        stop_all(nodes)

