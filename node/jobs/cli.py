"""``poolai job``: submit a job through the local node, follow it, fetch its output.

    poolai job demo DIR                                       write a small MLP job to try
    poolai job submit PROGRAM --weights W --input X [--gpu-mem 8GiB | --cpu] [--timeout 10m] [--wait]
    poolai job status|result|cancel ID
    poolai job list

PROGRAM is a built-in family (a JSON file ``{"family": "mlp", "config": {...}}``) or a
``torch.export`` archive (``*.pt2``). Files are uploaded to the local node, which puts
them in storage; the node then routes the job to the nearest capable peer.
This module never imports torch.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from poolai.mesh.short_ids import short_id
from poolai.node import config as config_mod
from poolai.node.cli.errors import CliError
from poolai.node.jobs.sanitise import safetensors_f32
from poolai.node.units import parse_duration, parse_size

UPLOAD_TIMEOUT_S = 600.0


def register(sub: Any) -> None:
    """Add the ``job`` command group to the ``poolai`` subparsers."""
    job = sub.add_parser("job", help="run PyTorch jobs on the mesh")
    actions = job.add_subparsers(dest="job_command", metavar="ACTION")
    actions.required = True

    s = actions.add_parser("submit", help="submit a job through the local node")
    s.add_argument("program", type=Path, help="family config JSON, or a torch.export .pt2 archive")
    s.add_argument("--weights", type=Path, required=True, help="safetensors weights")
    s.add_argument("--input", type=Path, required=True, help="safetensors inputs")
    s.add_argument("--cpu", action="store_true", help="run on a CPU (the default without --gpu*)")
    s.add_argument("--gpu", action="store_true", help="run on a GPU")
    s.add_argument("--gpu-mem", help="GPU memory needed, e.g. 8GiB (implies --gpu)")
    s.add_argument("--cc", help="minimum compute capability, e.g. 8.0 (implies --gpu)")
    s.add_argument("--memory", default="2GiB", help="worker address-space cap for CPU jobs")
    s.add_argument("--timeout", default="10m", help="wall-clock limit, e.g. 90s, 10m")
    s.add_argument("--expected", default="1s", help="expected runtime (a placement hint)")
    s.add_argument("--retries", type=int, default=2, help="re-runs elsewhere if a worker is lost")
    s.add_argument("--priority", type=int, default=0, help="-100..100, higher runs first")
    s.add_argument("--train-steps", type=int, help="train for N steps instead of a forward pass")
    s.add_argument("--lr", type=float, default=0.01)
    s.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"])
    s.add_argument("--loss", default="mse", choices=["mse", "cross_entropy"])
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--wait", action="store_true", help="wait for the result")
    s.add_argument("--out", type=Path, help="with --wait: save the output here")
    s.add_argument("--json", action="store_true", help="print the raw JSON")
    s.set_defaults(func=_submit)

    for name, helptext in (("status", "show a job's state"), ("result", "show a job's result"),
                           ("cancel", "cancel a job")):
        a = actions.add_parser(name, help=helptext)
        a.add_argument("job_id")
        a.add_argument("--json", action="store_true", help="print the raw JSON")
        if name == "result":
            a.add_argument("--out", type=Path, help="save the output (safetensors) here")
            a.add_argument("--wait", action="store_true", help="wait until the job ends")
        a.set_defaults(func={"status": _status, "result": _result, "cancel": _cancel}[name])
    ls = actions.add_parser("list", help="jobs submitted through this node")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_list)
    demo = actions.add_parser("demo", help="write a small MLP job (program, weights, inputs) to try")
    demo.add_argument("dir", type=Path)
    demo.set_defaults(func=_demo)


# ----------------------------------------------------------------------------- talking to the node


class _Node:
    def __init__(self, args: argparse.Namespace) -> None:
        from poolai.node.cli.local_api import find_node

        node = find_node(config_mod.load(args.data_dir, {}).data_dir)
        self.client = node.client(30.0, base_url=node.base, headers=node.headers)

    def request(self, method: str, path: str, **kw: Any) -> Any:
        try:
            response = self.client.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise CliError(f"the node did not answer: {exc}") from None
        if response.status_code >= 400:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text
            raise CliError(message[:2000])
        return response

    def upload(self, path: Path, name: str) -> dict[str, Any]:
        try:
            with open(path, "rb") as f:
                return self.request("POST", "/api/admin/jobs/files", params={"name": name}, content=f,
                                    timeout=UPLOAD_TIMEOUT_S).json()
        except OSError as exc:
            raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None

    def wait(self, job_id: str) -> dict[str, Any]:
        while True:
            data = self.request("GET", f"/api/jobs/{job_id}/wait", params={"timeout": "30"},
                                timeout=45.0).json()
            if data["phase"] in ("done", "cancelled"):
                return data

    def save_output(self, job_id: str, out: Path) -> None:
        response = self.request("GET", f"/api/admin/jobs/{job_id}/output", timeout=UPLOAD_TIMEOUT_S)
        out.write_bytes(response.content)


# ----------------------------------------------------------------------------- commands


def job_map(args: argparse.Namespace, refs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The spec map (without id and submitter) the flags describe; ``refs`` by file name."""

    def ref(name: str) -> dict[str, Any]:
        return {k: refs[name][k] for k in ("name", "sha256", "size")}

    if args.program.suffix == ".pt2":
        program = {"kind": "pt2", "archive": ref("program.pt2"), "weights": ref("weights.safetensors")}
    else:
        try:
            doc = json.loads(args.program.read_text())
            program = {"kind": "builtin", "family": doc["family"], "config": doc["config"],
                       "weights": ref("weights.safetensors")}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CliError(f"{args.program} is not a program ({{\"family\", \"config\"}} JSON or "
                           f".pt2): {exc}") from None
    gpu = args.gpu or args.gpu_mem is not None or args.cc is not None
    if gpu and args.cpu:
        raise CliError("--cpu cannot be combined with --gpu, --gpu-mem or --cc")
    try:
        requirements: dict[str, Any] = {"device": "gpu" if gpu else "cpu",
                                        "expected_runtime_s": parse_duration(args.expected),
                                        "memory_mib": parse_size(args.memory) >> 20}
        if args.gpu_mem is not None:
            requirements["min_gpu_memory_mib"] = parse_size(args.gpu_mem) >> 20
        if args.cc is not None:
            major, _, minor = args.cc.partition(".")
            requirements["min_compute_capability"] = [int(major), int(minor or 0)]
        timeout = parse_duration(args.timeout)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    job: dict[str, Any] = {"program": program, "inputs": ref("inputs.safetensors"),
                           "requirements": requirements, "timeout_s": timeout,
                           "retry_budget": args.retries, "priority": args.priority}
    if args.train_steps is not None:
        job["mode"] = "train"
        job["train"] = {"steps": args.train_steps, "lr": args.lr, "optimizer": args.optimizer,
                        "loss": args.loss, "seed": args.seed}
    return job


def _submit(args: argparse.Namespace) -> int:
    node = _Node(args)
    uploads = [(args.weights, "weights.safetensors"), (args.input, "inputs.safetensors")]
    if args.program.suffix == ".pt2":
        uploads.append((args.program, "program.pt2"))
    refs = {name: node.upload(path, name) for path, name in uploads}
    job = job_map(args, refs)
    files = {name: ref["file_id"] for name, ref in refs.items()}
    data = node.request("POST", "/api/admin/jobs", json={"job": job, "files": files}).json()
    job_id = data["job_id"]
    if not args.wait:
        print(json.dumps(data, indent=2) if args.json else job_id)
        return 0
    print(f"submitted {job_id}; waiting", file=sys.stderr)
    data = node.wait(job_id)
    return _show_result(node, data, args.json, args.out)


def _status(args: argparse.Namespace) -> int:
    data = _Node(args).request("GET", f"/api/jobs/{args.job_id}").json()
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(describe(data))
    for a in data["attempts"]:
        print(f"  attempt {a['attempt']}: {a['peer']}  {a['outcome'] or 'current'}")
    return 0


def _result(args: argparse.Namespace) -> int:
    node = _Node(args)
    data = node.wait(args.job_id) if args.wait else node.request("GET", f"/api/jobs/{args.job_id}").json()
    return _show_result(node, data, args.json, args.out)


def _show_result(node: _Node, data: dict[str, Any], as_json: bool, out: Path | None) -> int:
    result = data.get("result")
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        print(describe(data))
        if result:
            t = result["timings"]
            print(f"  device {result['device'] or '-'}; wall {t['wall_s']:.2f} s, run {t['run_s']:.3f} s,"
                  f" peak memory {result['peak_rss_bytes'] >> 20} MiB")
            if result["error"]:
                print(f"  error: {result['error']}")
            if result["losses"]:
                print(f"  loss {result['losses'][0]:.6g} -> {result['losses'][-1]:.6g}")
    if out is not None and result and result["status"] == "ok":
        node.save_output(data["job_id"], out)
        print(f"output saved to {out}", file=sys.stderr)
    return 0 if result and result["status"] == "ok" else 1


def _cancel(args: argparse.Namespace) -> int:
    data = _Node(args).request("POST", f"/api/admin/jobs/{args.job_id}/cancel").json()
    print("cancelled" if data["cancelled"] else "already ended")
    return 0


def _list(args: argparse.Namespace) -> int:
    jobs = _Node(args).request("GET", "/api/jobs").json()["jobs"]
    if args.json:
        print(json.dumps(jobs, indent=2))
        return 0
    for data in jobs:
        print(describe(data))
    return 0


def describe(data: dict[str, Any]) -> str:
    """One line about a job's status."""
    result = data.get("result")
    state = data["state"] + (f": {result['status']}" if result else "")
    worker = data.get("worker") or ""
    where = f" on {short_id(worker)}" if worker else ""
    age = time.time() - data["submitted_at"]
    return (f"{data['job_id']}  {state}{where}  ({len(data['attempts'])} offer(s), "
            f"{data['retries_used']}/{data['retry_budget']} retries, {age:.0f} s ago)")


# ----------------------------------------------------------------------------- demo job


def _demo(args: argparse.Namespace) -> int:
    out: Path = args.dir
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    widths = [8, 32, 4]
    config = {"in_features": 8, "hidden": [32], "out_features": 4, "activation": "relu"}
    (out / "mlp.json").write_text(json.dumps({"family": "mlp", "config": config}, indent=2) + "\n")
    weights = {}
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        bound = 1 / a ** 0.5
        weights[f"layers.{i}.weight"] = ([b, a], [rng.uniform(-bound, bound) for _ in range(a * b)])
        weights[f"layers.{i}.bias"] = ([b], [rng.uniform(-bound, bound) for _ in range(b)])
    (out / "weights.safetensors").write_bytes(safetensors_f32(weights))
    (out / "inputs.safetensors").write_bytes(
        safetensors_f32({"x": ([16, 8], [rng.gauss(0, 1) for _ in range(128)])}))
    (out / "train.safetensors").write_bytes(safetensors_f32({
        "x": ([16, 8], [rng.gauss(0, 1) for _ in range(128)]),
        "target": ([16, 4], [rng.gauss(0, 1) for _ in range(64)])}))
    d = str(out)
    print(f"wrote {d}/mlp.json, weights.safetensors, inputs.safetensors, train.safetensors\n")
    print("run it (forward pass, then 200 training steps):")
    print(f"  poolai job submit {d}/mlp.json --weights {d}/weights.safetensors "
          f"--input {d}/inputs.safetensors --wait --out {d}/y.safetensors")
    print(f"  poolai job submit {d}/mlp.json --weights {d}/weights.safetensors "
          f"--input {d}/train.safetensors --train-steps 200 --wait --out {d}/trained.safetensors")
    return 0
