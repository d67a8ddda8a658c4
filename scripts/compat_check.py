#!/usr/bin/env python3
"""Wire compatibility: a node built from an older commit in a mesh with nodes of this tree.

    python scripts/compat_check.py [--old b9ef100] [--keep]

Checks out ``--old`` as a git worktree in a temporary directory, with a virtual
environment there that installs only that tree (``--no-deps -e``) over this
interpreter's dependencies, and starts three nodes on 127.0.0.1:

* ``new-a``: this tree, submits jobs and runs none (``job_slots = 0``), no GPU;
* ``old``: the old commit, a simulated 80 GiB GPU of compute capability 8.0;
* ``new-b``: this tree, a simulated 24 GiB GPU of compute capability 9.0.

Then: the three must connect to each other; a file put from ``old`` (``poolai put
--k 2 --n 3`` with the old CLI) is got from ``new-a`` with this tree's CLI, and one
put from ``new-a`` is got from ``old``, byte for byte; the demo job of
``scripts/make_demo_job.py`` submitted from ``new-a`` with ``--gpu-mem 40GiB`` can
run only on ``old``, and submitted from ``old`` with ``--cc 9.0`` only on ``new-b``;
each must run there and match the locally computed output.

Prints one JSON object; exit code 0 when every check passed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from poolai.node.launcher import NodeProcess, poolai_command, stop_all, wait_until

ROOT = Path(__file__).resolve().parent.parent
FAST = {"POOLAI_CAPACITY_HEARTBEAT": "0.5", "POOLAI_OVERLAY_SCALE": "0.2",
        "POOLAI_REDUNDANCY_FRACTION": "0", "POOLAI_LOG_LEVEL": "info"}
OLD_GPU = {"gpus": [{"name": "sim-80G", "memory_total": "80GiB", "compute_capability": "8.0"}]}
NEW_GPU = {"gpus": [{"name": "sim-24G", "memory_total": "24GiB", "compute_capability": "9.0"}]}


def run(cmd: list[str], timeout: float = 600, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def build_old(commit: str, where: Path) -> Path:
    """A worktree of ``commit`` at ``where`` with its own venv; the old ``poolai`` command."""
    done = run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), commit])
    if done.returncode != 0:
        raise SystemExit(f"git worktree add failed: {done.stderr.strip()}")
    venv = where / ".venv"
    run([sys.executable, "-m", "venv", str(venv)], check=True)
    shared = Path(trio.__file__).resolve().parent.parent  # this interpreter's dependencies
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "shared_deps.pth").write_text(f"{shared}\n")
    # The shared setuptools first: the venv's own may be too old to build an editable install.
    env = {**os.environ, "PYTHONPATH": str(shared)}
    done = run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps", "--no-build-isolation",
                "-e", str(where)], env=env)
    if done.returncode != 0:
        raise SystemExit(f"installing {commit} failed: {done.stderr.strip()[-2000:]}")
    found = run([str(venv / "bin" / "python"), "-c", "import poolai.node; print(poolai.node.__file__)"],
                check=True).stdout.strip()
    if not Path(found).is_relative_to(where):
        raise SystemExit(f"the old venv imports poolai from {found}, not from {where}")
    return venv / "bin" / "poolai"


def cli(program: list[str], node: NodeProcess, *args: str, timeout: float = 300) -> str:
    done = run([*program, "--data-dir", str(node.data_dir), *args], timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:2])} on {node.data_dir.name} failed: {done.stderr.strip()}")
    return done.stdout


def transfer(src: tuple[list[str], NodeProcess], dst: tuple[list[str], NodeProcess], data: bytes,
             tmp: Path, name: str) -> dict[str, Any]:
    """Put ``data`` through ``src``'s CLI and node, get it through ``dst``'s; the outcome."""
    path, out = tmp / f"{name}.bin", tmp / f"{name}.out"
    path.write_bytes(data)
    start = time.monotonic()
    try:
        file_id = cli(src[0], src[1], "put", str(path), "--k", "2", "--n", "3").strip().splitlines()[-1]
        cli(dst[0], dst[1], "get", file_id, "-o", str(out))
    except RuntimeError as exc:
        return {"ok": False, "error": str(exc)}
    same = out.read_bytes() == data
    return {"ok": same, "bytes": len(data), "seconds": round(time.monotonic() - start, 2),
            **({} if same else {"error": "the bytes got differ from the bytes put"})}


def job(program: list[str], submitter: NodeProcess, worker: NodeProcess, demo: Path, tmp: Path,
        name: str, *requirement: str) -> dict[str, Any]:
    """Submit the demo job through ``submitter``; it must run on ``worker`` and match."""
    import torch
    from safetensors.torch import load_file

    out = tmp / f"{name}.safetensors"
    start = time.monotonic()
    done = run([*program, "--data-dir", str(submitter.data_dir), "job", "submit", str(demo / "model.pt2"),
                "--weights", str(demo / "model.safetensors"), "--input", str(demo / "inputs.safetensors"),
                *requirement, "--timeout", "5m", "--wait", "--json", "--out", str(out)], timeout=400)
    try:
        data = json.loads(done.stdout)
    except ValueError:
        return {"ok": False, "error": f"exit {done.returncode}: {done.stderr.strip()[-1000:]}"}
    result = data.get("result") or {}
    report = {"status": result.get("status"), "ran_on_expected_worker": data.get("worker") == worker.peer_id,
              "device": result.get("device"), "seconds": round(time.monotonic() - start, 2)}
    matches = False
    if out.exists():
        got, want = load_file(out)["output"], load_file(demo / "expected.safetensors")["output"]
        matches = got.shape == want.shape and bool(torch.allclose(got, want, atol=1e-5))
    report["output_matches"] = matches
    report["ok"] = report["status"] == "ok" and report["ran_on_expected_worker"] and matches
    if not report["ok"]:
        report["error"] = (result.get("error") or done.stderr.strip()[-1000:])
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", default="b9ef100", help="the older commit (default b9ef100)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="poolai-compat-"))
    old_tree = tmp / "old-tree"
    report: dict[str, Any] = {"old_commit": args.old, "new_commit": run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]).stdout.strip()}
    nodes: list[NodeProcess] = []
    try:
        start = time.monotonic()
        old_poolai = [str(build_old(args.old, old_tree))]
        new_poolai = poolai_command()
        report["old_build_s"] = round(time.monotonic() - start, 1)
        for name, inventory in (("old", OLD_GPU), ("new-b", NEW_GPU)):
            (tmp / f"{name}-inventory.json").write_text(json.dumps(inventory))
        new_a = NodeProcess(tmp / "new-a", env={**FAST, "POOLAI_JOB_SLOTS": "0"})
        nodes.append(new_a.start())
        old = NodeProcess(tmp / "old", "--bootstrap", new_a.addr, program=old_poolai,
                          env={**FAST, "POOLAI_INVENTORY_FILE": str(tmp / "old-inventory.json")})
        nodes.append(old.start())
        new_b = NodeProcess(tmp / "new-b", "--bootstrap", old.addr,
                            env={**FAST, "POOLAI_INVENTORY_FILE": str(tmp / "new-b-inventory.json")})
        nodes.append(new_b.start())
        report["versions"] = {n.data_dir.name: n.status().get("version") for n in nodes}
        ids = {n.peer_id for n in nodes}
        start = time.monotonic()
        wait_until(lambda: all(n.connected() >= ids - {n.peer_id} for n in nodes), 60,
                   "the three nodes to connect to each other")
        report["mesh"] = {"ok": True, "seconds": round(time.monotonic() - start, 2)}

        rng = random.Random(5)
        report["storage"] = {
            "old_puts_new_gets": transfer((old_poolai, old), (new_poolai, new_a), rng.randbytes(3 << 20),
                                          tmp, "old-to-new"),
            "new_puts_old_gets": transfer((new_poolai, new_a), (old_poolai, old), rng.randbytes(3 << 20),
                                          tmp, "new-to-old"),
        }

        demo = tmp / "demo"
        made = run([sys.executable, str(ROOT / "scripts" / "make_demo_job.py"), str(demo)])
        if made.returncode != 0:
            raise SystemExit(f"make_demo_job.py failed: {made.stderr.strip()}")

        def advertised(at: NodeProcess, peer: NodeProcess) -> bool:
            return peer.peer_id in {e["peer_id"] for e in at.get("/api/capacity")["entries"]}

        wait_until(lambda: advertised(new_a, old) and advertised(old, new_b), 60,
                   "the workers' capacity adverts at the submitters")
        report["jobs"] = {
            "new_submits_old_runs": job(new_poolai, new_a, old, demo, tmp, "new-to-old",
                                        "--gpu-mem", "40GiB"),
            "old_submits_new_runs": job(old_poolai, old, new_b, demo, tmp, "old-to-new",
                                        "--cc", "9.0"),
        }
    except (AssertionError, RuntimeError) as exc:
        report["error"] = str(exc)
    finally:
        stop_all(nodes)
        report["node_logs_tail"] = {n.data_dir.name: n.log(8) for n in nodes
                                    if "error" in report or n.returncode not in (0, None)}
        if not report["node_logs_tail"]:
            del report["node_logs_tail"]
        if args.keep:
            report["kept"] = str(tmp)  # remove with: git worktree remove --force TMP/old-tree
        else:
            run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old_tree)])
            shutil.rmtree(tmp, ignore_errors=True)
    checks = [report.get("mesh", {}), *report.get("storage", {}).values(), *report.get("jobs", {}).values()]
    report["ok"] = "error" not in report and len(checks) == 5 and all(c.get("ok") for c in checks)
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
