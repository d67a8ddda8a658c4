#!/usr/bin/env python3
"""Dispatch latency and throughput of trivial jobs on a local mesh, against running in-process.

    python scripts/bench_jobs.py [-n 8] [--jobs 40] [--sequential 30] [--slots 1]

Starts ``n`` node processes on 127.0.0.1 (node 0 submits, every node runs jobs), then:

* **idle dispatch**: ``--sequential`` jobs one after another into an idle mesh; latency is
  submit → the worker's first "running" report, both timestamps taken by the submitting
  node (so one clock): from the moment the submit request is validated (``submitted_at``)
  to the moment the submitter processes the worker's progress message saying "running"
  (``running_at``). In between: ranking, the offer exchange (a new stream, the worker
  writing the job to disk before it accepts), the worker staging the files from its cache,
  forking the sandboxed process, and the progress exchange back. It does not include the
  worker process's own start (interpreter, ``import torch``: seconds), which the result
  latency shows. ``submit_to_accepted`` and ``accepted_to_running`` split it at the accept's
  arrival. With 30 jobs, p99 is the slowest one;
* **burst**: ``--jobs`` jobs submitted back to back; latency submit → accepted and
  submit → running (which includes waiting for a slot), and jobs per second from the
  first submit to the last result;
* **in process**: the same job through ``poolai.node.jobs.worker.execute`` in this process
  (torch imported once), and through ``run_job`` (one sandboxed worker process per job,
  what a worker node does), sequentially.

Prints one JSON object. The job is an MLP 4→8→2 forward pass on one row.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from poolai.node.launcher import NodeProcess, stop_all


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summary_ms(values: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    return {"p50": round(percentile(ms, 50), 1), "p99": round(percentile(ms, 99), 1),
            "mean": round(statistics.fmean(ms), 1), "max": round(max(ms), 1), "n": len(ms)}


def make_job(tmp: Path) -> tuple[Any, dict[str, bytes], dict[str, Any]]:
    import torch
    from safetensors.torch import save_file

    from poolai.node.jobs.models import build_model
    from poolai.node.jobs.spec import BuiltinProgram, FileRef, JobSpec, MLPConfig

    torch.manual_seed(0)
    config = MLPConfig(4, (8,), 2)
    files = {}
    save_file({k: v.contiguous() for k, v in build_model(config).state_dict().items()}, tmp / "w")
    save_file({"x": torch.randn(1, 4)}, tmp / "x")
    files["weights.safetensors"] = (tmp / "w").read_bytes()
    files["inputs.safetensors"] = (tmp / "x").read_bytes()

    def ref(name: str) -> FileRef:
        return FileRef(name, hashlib.sha256(files[name]).hexdigest(), len(files[name]))

    job = JobSpec("bench", "bench", BuiltinProgram(config, ref("weights.safetensors")),
                  ref("inputs.safetensors"))
    spec = {"program": {"kind": "builtin", "family": "mlp",
                        "config": {"in_features": 4, "hidden": [8], "out_features": 2},
                        "weights": vars_of(ref("weights.safetensors"))},
            "inputs": vars_of(ref("inputs.safetensors")), "retry_budget": 2}
    return job, files, spec


def vars_of(ref: Any) -> dict[str, Any]:
    return {"name": ref.name, "sha256": ref.sha256, "size": ref.size}


def in_process(job: Any, files: dict[str, bytes], tmp: Path, n: int, subprocesses: int
               ) -> dict[str, Any]:
    import trio

    from poolai.node.jobs.runner import WorkerPolicy, run_job
    from poolai.node.jobs.worker import execute

    files_dir = tmp / "files"
    files_dir.mkdir()
    for name, data in files.items():
        (files_dir / name).write_bytes(data)
    times = []
    for i in range(n + 1):
        out = tmp / f"out{i}"
        out.mkdir()
        start = time.perf_counter()
        result = execute(job, files_dir, out)
        assert result.status.value == "ok", result
        if i:  # the first one pays for import torch
            times.append(time.perf_counter() - start)

    async def sandboxed() -> list[float]:
        spent = []
        for i in range(subprocesses):
            out = tmp / f"proc{i}"
            out.mkdir()
            start = time.perf_counter()
            outcome = await run_job(job, files_dir, out, WorkerPolicy())
            assert outcome.result.status.value == "ok", outcome.result
            spent.append(time.perf_counter() - start)
        return spent

    procs = trio.run(sandboxed)
    return {"execute_in_process_ms": summary_ms(times),
            "execute_in_process_jobs_per_s": round(len(times) / sum(times), 1),
            "run_job_subprocess_s": round(statistics.fmean(procs), 3),
            "run_job_subprocess_jobs_per_s": round(len(procs) / sum(procs), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=8, help="nodes")
    parser.add_argument("--jobs", type=int, default=40, help="jobs in the burst")
    parser.add_argument("--sequential", type=int, default=30, help="jobs one at a time")
    parser.add_argument("--slots", type=int, default=1, help="job slots per node")
    args = parser.parse_args()
    from poolai.node.auth import auth_headers

    load_at_start = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="bench-jobs-"))
    env = {"POOLAI_CAPACITY_HEARTBEAT": "0.5", "POOLAI_JOB_SLOTS": str(args.slots),
           "POOLAI_LOG_LEVEL": "warning"}
    nodes = [NodeProcess(tmp / "n0", env=env)]
    try:
        nodes[0].start()
        nodes += [NodeProcess(tmp / f"n{i}", "--bootstrap", nodes[0].addr, env=env)
                  for i in range(1, args.n)]
        for node in nodes[1:]:
            node.launch()
        for node in nodes[1:]:
            node.wait_ready()
        client = httpx.Client(base_url=nodes[0].api, headers=auth_headers(nodes[0].data_dir),
                              timeout=60)
        deadline = time.monotonic() + 60
        while len(client.get("/api/capacity").json()["entries"]) < args.n:
            if time.monotonic() > deadline:
                raise SystemExit("the capacity table never listed every node")
            time.sleep(0.2)
        job, files, spec = make_job(tmp)
        refs = {}
        for name, data in files.items():
            reply = client.post("/api/admin/jobs/files", params={"name": name}, content=data)
            reply.raise_for_status()
            refs[name] = reply.json()["file_id"]

        def submit() -> str:
            reply = client.post("/api/admin/jobs", json={"job": spec, "files": refs})
            reply.raise_for_status()
            return reply.json()["job_id"]

        def wait(job_id: str) -> dict[str, Any]:
            while True:
                data = client.get(f"/api/jobs/{job_id}/wait", params={"timeout": "30"}).json()
                if data["phase"] == "done":
                    assert data["result"]["status"] == "ok", data
                    return data

        wait(submit())  # warm-up: connections, worker page cache
        idle = [wait(submit()) for _ in range(args.sequential)]
        burst_start = time.time()
        burst_ids = [submit() for _ in range(args.jobs)]
        submit_s = time.time() - burst_start
        burst = [wait(j) for j in burst_ids]
        span = max(d["finished_at"] for d in burst) - min(d["submitted_at"] for d in burst)

        def accepted(d: dict[str, Any]) -> float:
            return max(a["accepted_at"] for a in d["attempts"] if a["accepted_at"]) - d["submitted_at"]

        workers = {d["worker"] for d in burst}
        report = {
            "nodes": args.n, "slots_per_node": args.slots, "cpus": os.cpu_count(),
            "job": "mlp 4-8-2 forward, batch 1",
            "idle_dispatch_submit_to_running_ms": summary_ms(
                [d["running_at"] - d["submitted_at"] for d in idle]),
            "idle_submit_to_accepted_ms": summary_ms([accepted(d) for d in idle]),
            "idle_accepted_to_running_ms": summary_ms(
                [d["running_at"] - d["submitted_at"] - accepted(d) for d in idle]),
            "idle_submit_to_result_ms": summary_ms([d["finished_at"] - d["submitted_at"] for d in idle]),
            "burst_jobs": args.jobs,
            "burst_submit_calls_per_s": round(args.jobs / submit_s, 1),
            "burst_submit_to_accepted_ms": summary_ms([accepted(d) for d in burst]),
            "burst_submit_to_running_ms": summary_ms([d["running_at"] - d["submitted_at"] for d in burst]),
            "burst_throughput_jobs_per_s": round(args.jobs / span, 2),
            "burst_workers_used": len(workers),
            "burst_offers_per_job": round(statistics.fmean(len(d["attempts"]) for d in burst), 2),
        }
        report.update(in_process(job, files, tmp, n=50, subprocesses=5))
        report["load_average_1m_start_end"] = [round(load_at_start[0], 2), round(os.getloadavg()[0], 2)]
        print(json.dumps(report, indent=2))
    finally:
        stop_all(nodes)


if __name__ == "__main__":
    main()
