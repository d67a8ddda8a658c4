#!/usr/bin/env python3
"""One GPU job end to end on a 2-node local mesh; prints the worker's inventory and the result.

    python scripts/gpu_job_check.py [--simulate] [--gpu-mem-mib 1024]

Starts two node processes on 127.0.0.1: a submitter that runs no jobs, and a worker
whose inventory is read through NVML (what a volunteer's node does). The submitter asks
for a GPU job (an MLP forward pass, 256 rows); it must run on the worker, on a CUDA
device, and its output must match the same model run on this machine's CPU (within
float32 tolerance: GPU kernels round differently).

``--simulate`` gives the worker a simulated 24 GiB GPU instead (a CPU machine can
check the script's path; the job then runs on the CPU, as every simulated GPU job does).

Prints one JSON object; exits 1 when the job did not run on a capable GPU or its
output differs. Needs the dev extra (httpx) and torch, like the benchmarks.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_jobs import Node  # noqa: E402 - the same node launcher as the jobs benchmark

SIMULATED = {"gpus": [{"name": "sim-24G", "memory_total": "24GiB", "compute_capability": "8.6"}]}
FAST = {"POOLAI_CAPACITY_HEARTBEAT": "0.5", "POOLAI_OVERLAY_SCALE": "0.2",
        "POOLAI_REDUNDANCY_FRACTION": "0"}
TOLERANCE = 1e-4


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--simulate", action="store_true", help="a simulated GPU on the worker")
    parser.add_argument("--gpu-mem-mib", type=int, default=1024, help="the job's GPU memory need")
    args = parser.parse_args()

    import torch
    from safetensors.torch import load_file, save_file

    from poolai.node.auth import auth_headers
    from poolai.node.jobs.models import build_model, forward
    from poolai.node.jobs.spec import MLPConfig

    with tempfile.TemporaryDirectory(prefix="poolai-gpu-check-") as tmp_name:
        tmp = Path(tmp_name)
        worker_env = {**FAST, "POOLAI_JOB_SLOTS": "1"}
        if args.simulate:
            (tmp / "inventory.json").write_text(json.dumps(SIMULATED))
            worker_env["POOLAI_INVENTORY_FILE"] = str(tmp / "inventory.json")
        sub = Node(tmp / "sub", {**FAST, "POOLAI_JOB_SLOTS": "0"})
        nodes = [sub]
        try:
            sub.wait_ready()
            worker = Node(tmp / "worker", worker_env, "--bootstrap", sub.info["listening"])
            nodes.append(worker)
            worker.wait_ready()
            client = httpx.Client(base_url=sub.info["api"], headers=auth_headers(sub.data_dir),
                                  timeout=60)
            inventory = wait_for_advert(client, worker.info["peer id"])

            torch.manual_seed(0)
            config = MLPConfig(64, (256,), 16)
            model = build_model(config)
            x = torch.randn(256, 64)
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "w.st")
            save_file({"x": x}, tmp / "x.st")
            refs = {name: upload(client, name, path.read_bytes())
                    for name, path in (("weights.safetensors", tmp / "w.st"),
                                       ("inputs.safetensors", tmp / "x.st"))}
            job = {"program": {"kind": "builtin", "family": "mlp",
                               "config": {"in_features": 64, "hidden": [256], "out_features": 16},
                               "weights": refs["weights.safetensors"][0]},
                   "inputs": refs["inputs.safetensors"][0],
                   "requirements": {"device": "gpu", "min_gpu_memory_mib": args.gpu_mem_mib},
                   "timeout_s": 300, "retry_budget": 1}
            reply = client.post("/api/admin/jobs", json={
                "job": job, "files": {name: r[1] for name, r in refs.items()}})
            reply.raise_for_status()
            job_id = reply.json()["job_id"]
            data = wait(client, job_id)
            report: dict[str, Any] = {"worker_inventory": inventory, "job": data}
            ok = data.get("result", {}).get("status") == "ok" and data.get("worker") == worker.info["peer id"]
            if ok:
                out = tmp / "out.st"
                reply = client.get(f"/api/admin/jobs/{job_id}/output")
                reply.raise_for_status()
                out.write_bytes(reply.content)
                expected = forward(model, config, {"x": x})["y"]
                diff = float((load_file(out)["y"] - expected).abs().max())
                device = data["result"].get("device", "")
                report["max_abs_diff_vs_cpu"] = diff
                report["ran_on_cuda"] = device.startswith("cuda")
                ok = diff <= TOLERANCE and (args.simulate or report["ran_on_cuda"])
            report["ok"] = ok
            print(json.dumps(report, indent=2))
            return 0 if ok else 1
        finally:
            for node in nodes:
                node.stop()


def wait_for_advert(client: httpx.Client, peer_id: str, timeout: float = 60) -> dict[str, Any]:
    """The worker's capacity advert as the submitter's table holds it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in client.get("/api/capacity").json()["entries"]:
            if entry["peer_id"] == peer_id:
                return entry
        time.sleep(0.2)
    raise SystemExit("the worker's capacity advert never reached the submitter")


def upload(client: httpx.Client, name: str, data: bytes) -> tuple[dict[str, Any], str]:
    reply = client.post("/api/admin/jobs/files", params={"name": name}, content=data)
    reply.raise_for_status()
    body = reply.json()
    return {k: body[k] for k in ("name", "sha256", "size")}, body["file_id"]


def wait(client: httpx.Client, job_id: str, timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = client.get(f"/api/jobs/{job_id}/wait", params={"timeout": "10"}).json()
        if data["phase"] in ("done", "cancelled"):
            return data
    raise SystemExit(f"job {job_id} did not end within {timeout:g} s")


if __name__ == "__main__":
    sys.exit(main())
