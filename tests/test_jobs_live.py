"""Six node processes run jobs: capable peers only, identical results, failover after a
SIGKILL, a restarted worker that still runs its queue, and limits that stop a job.

Three nodes have simulated GPUs (inventory files), two are CPU-only, the submitter runs no
jobs. Every job is a real worker process that imports torch (~1-3 s each here), so the
jobs are few and run in parallel where they can. Waits poll the nodes' local API with a
deadline; nothing sleeps a fixed time.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from safetensors.torch import load_file, save_file

from poolai.node.auth import auth_headers
from poolai.node.jobs.models import build_model, forward, train_steps
from poolai.node.jobs.spec import MLPConfig, TrainSpec
from poolai.node.launcher import NodeProcess, stop_all, wait_until

pytestmark = [pytest.mark.live, pytest.mark.timeout(400)]

# Redundant runs (test_credits_jobs_live.py) off: every job here runs exactly once.
FAST = {"POOLAI_CAPACITY_HEARTBEAT": "0.5", "POOLAI_OVERLAY_SCALE": "0.2",
        "POOLAI_REDUNDANCY_FRACTION": "0"}
GPU_SMALL = {"gpus": [{"name": "sim-24G", "memory_total": "24GiB", "compute_capability": "8.6"}]}
GPU_BIG = {"gpus": [{"name": "sim-80G", "memory_total": "80GiB", "compute_capability": "9.0"}]}
MLP = MLPConfig(16, (32,), 4)
LONG = MLPConfig(64, (256, 256), 64)  # 600 SGD steps: about 2 s in a worker here
STEPS = 600


class Mesh:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.nodes: dict[str, NodeProcess] = {}

    def start(self, name: str, inventory: dict[str, Any] | None = None, slots: int = 1,
              env: dict[str, str] | None = None) -> NodeProcess:
        env = {**FAST, "POOLAI_JOB_SLOTS": str(slots), **(env or {})}
        if inventory is not None:
            path = self.root / f"{name}-inventory.json"
            path.write_text(json.dumps(inventory))
            env["POOLAI_INVENTORY_FILE"] = str(path)
        extra = ("--bootstrap", self.nodes["sub"].addr) if self.nodes else ()
        node = NodeProcess(self.root / name, *extra, env=env).start()
        self.nodes[name] = node
        return node

    @property
    def sub(self) -> NodeProcess:
        return self.nodes["sub"]

    def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        node = self.sub
        return httpx.request(method, node.api + path, headers=auth_headers(node.data_dir),
                             timeout=kw.pop("timeout", 60), **kw)

    def upload(self, name: str, data: bytes) -> dict[str, Any]:
        reply = self.api("POST", "/api/admin/jobs/files", params={"name": name}, content=data)
        assert reply.status_code == 200, reply.text
        return reply.json()

    def submit(self, job: dict[str, Any], refs: dict[str, dict[str, Any]]) -> str:
        files = {name: r["file_id"] for name, r in refs.items()}
        reply = self.api("POST", "/api/admin/jobs", json={"job": job, "files": files})
        assert reply.status_code == 201, reply.text
        return reply.json()["job_id"]

    def job(self, job_id: str) -> dict[str, Any]:
        return self.api("GET", f"/api/jobs/{job_id}").json()

    def wait(self, job_id: str, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = self.api("GET", f"/api/jobs/{job_id}/wait", params={"timeout": "10"}).json()
            if data["phase"] in ("done", "cancelled"):
                return data
        raise AssertionError(f"job {job_id} did not end: {self.job(job_id)}")

    def output(self, job_id: str) -> dict[str, torch.Tensor]:
        reply = self.api("GET", f"/api/admin/jobs/{job_id}/output")
        assert reply.status_code == 200, reply.text
        path = self.root / f"{job_id}.safetensors"
        path.write_bytes(reply.content)
        return load_file(path)

    def job_log(self) -> str:
        """The job services' log lines of every node, for failure messages."""
        lines = [f"{name}: {line}" for name, n in self.nodes.items() for line in n.output
                 if "job" in line]
        return "\n" + "\n".join(lines[-80:])

    def kill(self, name: str) -> float:
        """SIGKILL a node and the worker processes it started (they are in their own sessions)."""
        node = self.nodes[name]
        killed_at = time.time()
        node.kill()
        marker = str(node.data_dir).encode()
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"poolai.node.jobs.worker" in cmdline and marker in cmdline:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        return killed_at

    def restart(self, name: str) -> NodeProcess:
        return self.nodes[name].restart()


def same(got: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to float rounding: a worker sets its BLAS threads by environment, this process
    at run time, and the library may then pick other kernels for some shapes."""
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)


def st_bytes(tensors: dict[str, torch.Tensor], path: Path) -> bytes:
    save_file({k: v.contiguous() for k, v in tensors.items()}, path)
    return path.read_bytes()


def program(mesh: Mesh, config: MLPConfig, seed: int, inputs: dict[str, torch.Tensor], tag: str
            ) -> tuple[torch.nn.Module, dict[str, dict[str, Any]]]:
    torch.manual_seed(seed)
    model = build_model(config)
    weights = st_bytes(dict(model.state_dict()), mesh.root / f"{tag}-w.st")
    refs = {"weights.safetensors": mesh.upload("weights.safetensors", weights),
            "inputs.safetensors": mesh.upload("inputs.safetensors",
                                              st_bytes(inputs, mesh.root / f"{tag}-x.st"))}
    return model, refs


def spec(config: MLPConfig, refs: dict[str, dict[str, Any]], **kw: Any) -> dict[str, Any]:
    def ref(name: str) -> dict[str, Any]:
        return {k: refs[name][k] for k in ("name", "sha256", "size")}

    return {"program": {"kind": "builtin", "family": "mlp",
                        "config": {"in_features": config.in_features, "hidden": list(config.hidden),
                                   "out_features": config.out_features},
                        "weights": ref("weights.safetensors")},
            "inputs": ref("inputs.safetensors"), **kw}


GPU8 = {"device": "gpu", "min_gpu_memory_mib": 8192}
GPU40 = {"device": "gpu", "min_gpu_memory_mib": 40960}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)  # the workers' setting, so references match bit for bit
    m = Mesh(tmp_path_factory.mktemp("jobs"))
    try:
        m.start("sub", slots=0)
        m.start("cpu1")
        m.start("cpu2")
        m.start("gpu1", GPU_SMALL)
        m.start("gpu2", GPU_SMALL)
        m.start("big", GPU_BIG)
        ids = {n.peer_id for n in m.nodes.values()}

        def everyone_advertised() -> bool:
            entries = m.sub.get("/api/capacity")["entries"]
            return {e["peer_id"] for e in entries} >= ids - {m.sub.peer_id}

        wait_until(everyone_advertised, 60, "every node's capacity advert at the submitter")
        yield m
    finally:
        stop_all(list(m.nodes.values()))


def by_peer(mesh: Mesh) -> dict[str, str]:
    return {n.peer_id: name for name, n in mesh.nodes.items()}


def test_jobs_run_on_capable_peers_only_and_match_a_local_run(mesh: Mesh) -> None:
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(3))
    model, refs = program(mesh, MLP, 1, {"x": x}, "a")
    # A retry budget, so a worker starved on a loaded machine and given up on changes nothing.
    gpu_jobs = [mesh.submit(spec(MLP, refs, requirements=GPU8, retry_budget=2), refs) for _ in range(3)]
    cpu_job = mesh.submit(spec(MLP, refs, retry_budget=2), refs)
    expected = forward(model, MLP, {"x": x})["y"]
    names = by_peer(mesh)
    for job_id in gpu_jobs:
        data = mesh.wait(job_id)
        assert data["result"]["status"] == "ok", json.dumps(data, indent=1) + mesh.job_log()
        assert names[data["worker"]] in ("gpu1", "gpu2", "big")
        assert "[simulated GPU 0: sim-" in data["result"]["device"]
        same(mesh.output(job_id)["y"], expected)
    data = mesh.wait(cpu_job)
    assert data["result"]["status"] == "ok" and names[data["worker"]] != "sub"
    same(mesh.output(cpu_job)["y"], expected)


def test_a_sigkilled_worker_is_replaced_within_ten_seconds_and_the_result_comes_once(mesh: Mesh) -> None:
    gen = torch.Generator().manual_seed(4)
    inputs = {"x": torch.randn(256, 64, generator=gen), "target": torch.randn(256, 64, generator=gen)}
    model, refs = program(mesh, LONG, 2, inputs, "b")
    train = {"steps": STEPS, "lr": 0.01, "optimizer": "sgd", "loss": "mse", "seed": 0}
    job_id = mesh.submit(spec(LONG, refs, requirements=GPU8, mode="train", train=train,
                              retry_budget=2, timeout_s=300), refs)
    wait_until(lambda: mesh.job(job_id)["state"] == "running", 60, "the long job to run")
    victim = by_peer(mesh)[mesh.job(job_id)["worker"]]
    killed_at = mesh.kill(victim)

    data = mesh.wait(job_id, timeout=180)
    names = by_peer(mesh)
    assert data["result"]["status"] == "ok", data
    assert names[data["worker"]] in ({"gpu1", "gpu2", "big"} - {victim})
    lost = [names[a["peer"]] for a in data["attempts"] if a["outcome"] == "lost"]
    assert victim in lost, json.dumps(data["attempts"]) + mesh.job_log()
    redispatch = min(a["offered_at"] for a in data["attempts"] if a["offered_at"] > killed_at)
    assert redispatch - killed_at < 10.0, json.dumps(data["attempts"]) + mesh.job_log()
    # one result: the accepted attempt is the only one that reported "ok"
    assert [a["outcome"] for a in data["attempts"]].count("ok") == 1

    weights, losses = train_steps(model, LONG, TrainSpec(STEPS, 0.01), inputs)
    got = mesh.output(job_id)
    for name, tensor in weights.items():
        torch.testing.assert_close(got[name], tensor, rtol=1e-5, atol=1e-6)
    assert data["result"]["losses"][-1] == pytest.approx(losses[-1], rel=1e-5)
    mesh.restart(victim)


def test_a_restarted_worker_still_runs_its_queued_jobs(mesh: Mesh) -> None:
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(5))
    model, refs = program(mesh, MLP, 6, {"x": x}, "c")
    # Only "big" has 40 GiB; it runs one job at a time, so the second waits in its queue.
    jobs = [mesh.submit(spec(MLP, refs, requirements=GPU40, retry_budget=2, priority=i), refs)
            for i in range(2)]
    big = mesh.nodes["big"].peer_id
    wait_until(lambda: all(mesh.job(j)["state"] in ("queued", "fetching", "running") for j in jobs),
               60, "both jobs accepted by the big node")
    mesh.kill("big")
    mesh.restart("big")
    expected = forward(model, MLP, {"x": x})["y"]
    for job_id in jobs:
        data = mesh.wait(job_id, timeout=180)
        assert data["result"]["status"] == "ok", data
        assert data["worker"] == big  # nobody else could run them
        same(mesh.output(job_id)["y"], expected)


def test_limits_stop_a_job_and_bad_jobs_get_clear_errors(mesh: Mesh) -> None:
    """Timeout and memory limit each end a job with their own status; a malformed job and a
    program that cannot load are refused with a message that says why; the workers stay up."""
    gen = torch.Generator().manual_seed(7)
    inputs = {"x": torch.randn(256, 64, generator=gen), "target": torch.randn(256, 64, generator=gen)}
    _, long_refs = program(mesh, LONG, 2, inputs, "d")
    train = {"steps": 10_000, "lr": 0.01}
    slow = mesh.submit(spec(LONG, long_refs, mode="train", train=train, timeout_s=1.5), long_refs)
    wide = MLPConfig(1, (16384,), 1)  # batch 65536 x 16384 activations: 4 GiB
    _, wide_refs = program(mesh, wide, 8, {"x": torch.randn(65536, 1, generator=gen)}, "e")
    # with a retry budget, to show the memory limit is final: the same cap applies anywhere
    hungry = mesh.submit(spec(wide, wide_refs, requirements={"memory_mib": 1024}, retry_budget=2),
                         wide_refs)
    # weights of another model: refused before torch loads anything
    mismatched = mesh.submit(spec(MLP, {**wide_refs, "inputs.safetensors": long_refs[
        "inputs.safetensors"]}), {**wide_refs, "inputs.safetensors": long_refs["inputs.safetensors"]})
    # a .pt2 program that is no archive at all: it cannot load, and the submitter is told why
    junk = {"model.pt2": mesh.upload("model.pt2", b"this is not a torch.export archive"),
            "weights.safetensors": wide_refs["weights.safetensors"],
            "inputs.safetensors": wide_refs["inputs.safetensors"]}
    unloadable = mesh.submit({"program": {"kind": "pt2", **{
        key: {k: junk[name][k] for k in ("name", "sha256", "size")}
        for key, name in (("archive", "model.pt2"), ("weights", "weights.safetensors"))}},
        "inputs": {k: junk["inputs.safetensors"][k] for k in ("name", "sha256", "size")}}, junk)

    reply = mesh.api("POST", "/api/admin/jobs", json={"job": spec(MLP, long_refs, timeout_s=-1),
                                                      "files": {}})
    assert reply.status_code == 400 and "timeout_s=-1 is outside" in reply.json()["error"]
    reply = mesh.api("POST", "/api/admin/jobs", json={"job": {"program": {"kind": "pickle"}}})
    assert reply.status_code == 400 and "program.kind must be" in reply.json()["error"]

    data = mesh.wait(slow)
    assert data["result"]["status"] == "timed_out", data
    assert data["result"]["error"] == "killed after its timeout of 1.5 s"
    data = mesh.wait(hungry)
    assert data["result"]["status"] == "out_of_memory", data
    assert data["result"]["error"].startswith(
        "out of memory: the job exceeded its memory limit of 1024 MiB"), data["result"]["error"]
    outcomes = [a["outcome"] for a in data["attempts"]]
    assert outcomes[-1] == "out_of_memory" and outcomes.count("out_of_memory") == 1, outcomes
    data = mesh.wait(mismatched)
    assert data["result"]["status"] == "refused"
    assert data["result"]["error"].startswith("weights: "), data["result"]["error"]
    data = mesh.wait(unloadable)
    assert data["result"]["status"] == "refused", data
    assert data["result"]["error"] == "unsafe .pt2 archive: not a zip archive (File is not a zip file)"

    # the workers are still healthy: the next job runs, and its output is right
    x = torch.randn(2, 16, generator=gen)
    model, refs = program(mesh, MLP, 9, {"x": x}, "f")
    after = mesh.submit(spec(MLP, refs), refs)
    assert mesh.wait(after)["result"]["status"] == "ok"
    assert all(node.alive for node in mesh.nodes.values())
    same(mesh.output(after)["y"], forward(model, MLP, {"x": x})["y"])
