"""Credits earned by real work on a mesh of five node processes.

Real jobs (worker processes that import torch) run on simulated-GPU and CPU nodes, their
programs and outputs in real storage; the workers claim credit, the submitters check each
output before they countersign, and every node syncs the receipts. One node is hostile: it
is started by ``tests/evil_node.py``, which corrupts every output it computes (with a
result record that matches the corrupted bytes) and serves forged receipts on its ledger
pages. The submitter ``sub`` runs every job on two peers (``redundancy_fraction`` 1.0).

Storage receipts are not part of this test: the data owner pays for an hour of held
shares after the hour (see NETWORK.md §8), longer than a test runs.

Waits poll the nodes' local API with a deadline (the state lives in other processes).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import evil_node
import httpx
import pytest
import torch
from safetensors.torch import load_file, save_file

from poolai.node.auth import auth_headers
from poolai.node.jobs.models import build_model, forward
from poolai.node.jobs.spec import MLPConfig
from poolai.node.launcher import NodeProcess, poolai_command, stop_all, wait_until

pytestmark = [pytest.mark.live, pytest.mark.timeout(600)]

FAST = {"POOLAI_CAPACITY_HEARTBEAT": "0.5", "POOLAI_OVERLAY_SCALE": "0.2",
        "POOLAI_CREDITS_SYNC_INTERVAL": "1", "POOLAI_REDUNDANCY_FRACTION": "0"}
BIG = {"gpus": [{"name": "sim-80G", "memory_total": "80GiB", "compute_capability": "9.0"}]}
SMALL = {"gpus": [{"name": "sim-24G", "memory_total": "24GiB", "compute_capability": "8.6"}]}
GPU40 = {"device": "gpu", "min_gpu_memory_mib": 40960}
MLP = MLPConfig(16, (32,), 4)
VIEW_KEYS = ("balance", "earned", "spent", "receipts", "priority", "payout_address")


class Pool:
    """Five node processes: ``sub`` (submits, replicates everything), ``b`` (submits only),
    ``gpu`` (honest, 80 GiB), ``late`` (honest, 24 GiB until the test gives it 80 GiB) and
    ``evil`` (hostile, 80 GiB, started last)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.nodes: dict[str, NodeProcess] = {}

    def start(self, name: str, *, slots: int = 1, inventory: dict[str, Any] | None = None,
              env: dict[str, str] | None = None, program: list[str] | None = None) -> NodeProcess:
        environ = {**FAST, "POOLAI_JOB_SLOTS": str(slots), **(env or {})}
        if inventory is not None:
            self.set_inventory(name, inventory)
            environ["POOLAI_INVENTORY_FILE"] = str(self.root / f"{name}-inventory.json")
        extra = ("--bootstrap", self.nodes["sub"].addr) if self.nodes else ()
        node = NodeProcess(self.root / name, *extra, env=environ, program=program)
        self.nodes[name] = node
        return node.start()

    def set_inventory(self, name: str, inventory: dict[str, Any]) -> None:
        path = self.root / f"{name}-inventory.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(inventory))
        os.replace(tmp, path)  # the node re-reads the file when it changes

    def api(self, name: str, method: str, path: str, **kw: Any) -> httpx.Response:
        node = self.nodes[name]
        return httpx.request(method, node.api + path, headers=auth_headers(node.data_dir),
                             timeout=kw.pop("timeout", 60), **kw)

    def get(self, name: str, path: str) -> Any:
        reply = self.api(name, "GET", path)
        reply.raise_for_status()
        return reply.json()

    def submit(self, name: str, seed: int, requirements: dict[str, Any] | None = None
               ) -> tuple[str, torch.Tensor]:
        """Store an MLP's weights and inputs from node ``name`` and submit a forward pass there."""
        torch.manual_seed(seed)
        model = build_model(MLP)
        x = torch.randn(8, 16, generator=torch.Generator().manual_seed(seed))
        refs = {"weights.safetensors": self.upload(name, "weights.safetensors", dict(model.state_dict())),
                "inputs.safetensors": self.upload(name, "inputs.safetensors", {"x": x})}

        def ref(file: str) -> dict[str, Any]:
            return {k: refs[file][k] for k in ("name", "sha256", "size")}

        job = {"program": {"kind": "builtin", "family": "mlp",
                           "config": {"in_features": 16, "hidden": [32], "out_features": 4},
                           "weights": ref("weights.safetensors")},
               "inputs": ref("inputs.safetensors"), "retry_budget": 2,
               **({"requirements": requirements} if requirements else {})}
        files = {file: r["file_id"] for file, r in refs.items()}
        reply = self.api(name, "POST", "/api/admin/jobs", json={"job": job, "files": files})
        assert reply.status_code == 201, reply.text
        return reply.json()["job_id"], forward(model, MLP, {"x": x})["y"]

    def upload(self, name: str, file: str, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
        path = self.root / f"upload-{file}"
        save_file({k: v.contiguous() for k, v in tensors.items()}, path)
        reply = self.api(name, "POST", "/api/admin/jobs/files", params={"name": file},
                         content=path.read_bytes())
        assert reply.status_code == 200, reply.text
        return reply.json()

    def wait(self, name: str, job_id: str, timeout: float = 240) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = self.api(name, "GET", f"/api/jobs/{job_id}/wait", params={"timeout": "10"}).json()
            if data["phase"] in ("done", "cancelled"):
                return data
        raise AssertionError(f"job {job_id} did not end: {self.get(name, f'/api/jobs/{job_id}')}"
                             + self.log())

    def output(self, name: str, job_id: str) -> torch.Tensor:
        reply = self.api(name, "GET", f"/api/admin/jobs/{job_id}/output")
        assert reply.status_code == 200, reply.text
        path = self.root / f"{job_id}.safetensors"
        path.write_bytes(reply.content)
        return load_file(path)["y"]

    def names(self) -> dict[str, str]:
        return {n.peer_id: name for name, n in self.nodes.items()}

    def log(self) -> str:
        lines = [f"{name}: {line}" for name, n in self.nodes.items() for line in n.output
                 if "job" in line or "receipt" in line or "claim" in line]
        return "\n" + "\n".join(lines[-120:])


def same(got: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)


def capable_at(pool: Pool, name: str, query: str) -> list[dict[str, Any]]:
    return pool.get(name, f"/api/capacity/capable?{query}")["candidates"]


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)  # the workers' setting, so references match
    p = Pool(tmp_path_factory.mktemp("credits"))
    try:
        p.start("sub", env={"POOLAI_REDUNDANCY_FRACTION": "1.0"})
        p.start("b", slots=0)
        p.start("gpu", inventory=BIG)
        p.start("late", inventory=SMALL)
        ids = {n.peer_id for n in p.nodes.values()}
        wait_until(lambda: {e["peer_id"] for e in p.get("sub", "/api/capacity")["entries"]} >= ids,
                   90, "every node's capacity advert at sub")
        yield p
    finally:
        stop_all(list(p.nodes.values()))


def test_jobs_earn_credit_and_a_redundant_run_catches_the_wrong_outputs(pool: Pool) -> None:
    names = pool.names()
    # ---- b's jobs run once; sub's job runs on two peers, and both agree
    cpu_jobs = [pool.submit("b", seed) for seed in (1, 2)]
    checked_job, checked_y = pool.submit("sub", 3)
    for job_id, y in cpu_jobs:
        data = pool.wait("b", job_id)
        assert data["result"]["status"] == "ok" and not data["replicated"], data
        assert names[data["worker"]] in ("sub", "gpu", "late")
        same(pool.output("b", job_id), y)
    data = pool.wait("sub", checked_job)
    assert data["result"]["status"] == "ok" and data["replicated"], json.dumps(data) + pool.log()
    assert sorted(names[r["worker"]] for r in data["runs"]) == ["gpu", "late"]  # never sub itself
    assert [r["check"] for r in data["runs"]] == ["passed", "passed"]
    same(pool.output("sub", checked_job), checked_y)

    # ---- the hostile node joins; a 40 GiB job can run only on it and on "gpu"
    evil = pool.start("evil", inventory=BIG, program=evil_node.command())
    names = pool.names()
    wait_until(lambda: {c["peer_id"] for c in capable_at(pool, "sub", "gpu=1&gpu_mem=40GiB")}
               == {pool.nodes["gpu"].peer_id, evil.peer_id}, 60, "sub to see the hostile node's GPU")
    job_id, y = pool.submit("sub", 4, GPU40)

    def both_runs_taken() -> bool:
        runs = pool.get("sub", f"/api/jobs/{job_id}")["runs"]
        return len(runs) == 2 and all(r["worker"] and r["phase"] != "offering" for r in runs)

    wait_until(both_runs_taken, 120, "both runs of the 40 GiB job to be accepted")
    pool.set_inventory("late", BIG)  # now a third peer can break the tie
    data = pool.wait("sub", job_id)
    runs = {names[r["worker"]]: r for r in data["runs"]}
    assert set(runs) == {"gpu", "evil", "late"}, json.dumps(data) + pool.log()
    assert data["result"]["status"] == "ok" and names[data["worker"]] in ("gpu", "late")
    assert runs["evil"]["check"] == "passed"  # its output matches its own record: only the vote shows it
    same(pool.output("sub", job_id), y)

    reputation = pool.get("sub", "/api/credits")["reputation"]
    assert reputation[evil.peer_id] < 0.5 <= reputation[pool.nodes["gpu"].peer_id]
    ranked = capable_at(pool, "sub", "gpu=1&gpu_mem=40GiB")
    assert [c["peer_id"] for c in ranked][-1] == evil.peer_id
    assert ranked[-1]["cost_ms"] >= 500 and ranked[-1]["reputation"] < 0.5


def test_every_node_computes_the_same_balances_and_forgeries_gain_nothing(pool: Pool) -> None:
    names = pool.names()
    ids = {name: n.peer_id for name, n in pool.nodes.items()}
    # What the jobs above must have paid: (job, worker, submitter) for work done for others.
    expected = set()
    for submitter in ("b", "sub"):
        for job in pool.get(submitter, "/api/jobs")["jobs"]:
            for run in job["runs"]:
                worker = run["worker"]
                if worker != ids[submitter] and names[worker] != "evil":
                    expected.add((job["job_id"], names[worker], submitter))
    assert len(expected) == 6, expected  # 2 of b's, 2 + 2 of sub's; nothing for the wrong outputs

    def paid() -> set[tuple[str, str, str]]:
        """(job, earner, payer) of every job receipt, from each node's own statement."""
        rows = set()
        for name in pool.nodes:
            for row in pool.get(name, "/api/credits")["statement"]:
                assert not row["job_or_epoch"].startswith(evil_node.FORGED_JOB), row
                if row["direction"] == "earned" and row["kind"] == "job":
                    rows.add((row["job_or_epoch"], name, names[row["counterparty"]]))
        return rows

    def settled() -> bool:
        docs = {name: pool.get(name, "/api/credits") for name in pool.nodes}
        if any(d["ledger"]["pending"] for d in docs.values()):
            return False  # a claim still waits for its countersignature (or its refusal)
        balances = [pool.get(name, "/api/credits/balances") for name in pool.nodes]
        held = {d["ledger"]["held"] for d in docs.values()}
        return all(b == balances[0] for b in balances) and len(held) == 1 and paid() >= expected

    wait_until(settled, 240, "every claim settled and every node holding the same receipts",
               interval=1.0)
    # Storage receipts appear only after a full hour of audits, so normally there are none;
    # a test that straddles the hour may see some, and every node must agree on those too.
    balances = pool.get("sub", "/api/credits/balances")["balances"]
    held = pool.get("sub", "/api/credits")["ledger"]["held"]
    for name in pool.nodes:  # the same, once more, now that nothing moves
        assert pool.get(name, "/api/credits/balances")["balances"] == balances
    assert sum(a["balance_milli"] for a in balances.values()) == 0
    # Nothing for the wrong outputs, nothing for the forgeries: the hostile node has no job
    # receipt at all, and forged job ids appear nowhere (paid() checks every statement).
    assert paid() == expected
    for name in pool.nodes:
        if name != "evil":  # every honest node pulled the hostile node's forged page, and refused it
            rejected = pool.get(name, "/api/credits")["ledger"]["rejected"]
            assert {"self_signed", "key_mismatch", "unsigned"} <= set(rejected), (name, rejected)

    # ---- the status page's credits section and `poolai credits --json` show the same numbers
    for name, node in pool.nodes.items():
        page = pool.get(name, "/api/page")["credits"]
        cli = subprocess.run([*poolai_command("--data-dir", str(node.data_dir), "credits", "--json")],
                             capture_output=True, timeout=60, check=True)
        shown = json.loads(cli.stdout)
        assert {k: page[k] for k in VIEW_KEYS} == {k: shown[k] for k in VIEW_KEYS}, name
        assert page["ledger_held"] == shown["ledger"]["held"] == held
        account = balances.get(node.peer_id, {"balance_milli": 0})
        assert shown["balance_milli"] == account["balance_milli"]
