"""Six node processes at emulated distances: a GPU job runs on the nearest *capable* peer.

There is no netem here, so each node gets a latency table (``POOLAI_EMULATED_LATENCY``,
see NETWORK.md section 1): the nodes sit on a plane and each holds back what it receives
from a peer by their distance in milliseconds. Nothing tells a node who is near; the
submitter learns it from its own overlay probes and pings, and its capacity ranking picks
the worker. Layout (one-way ms from the submitter):

    sub (0 ms, runs no jobs)   cpu1 (1.4 ms)   cpu2 (2 ms)   small (2 ms, an 8 GiB GPU)
    near (5 ms, a 24 GiB GPU)  far (400 ms, an 80 GiB GPU)

A job needing 16 GiB of GPU memory can run on ``near`` and ``far`` only; ``near`` is 10 ms
away as a round trip and ``far`` 800 ms. The CPU nodes and the small GPU are nearer still
and must never be offered the job. On a loaded machine a starved process can add hundreds of
milliseconds to a measurement (hence the wide gap), so before each job the test waits (polling the submitter's
own estimates within a deadline) until they show the layout again: ``far`` at least
APART_MS beyond ``near``, every worker idle. The ranking then decides by itself.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import torch
from test_jobs_live import GPU_BIG, GPU_SMALL, MLP, Mesh, by_peer, program, same, spec

from poolai.mesh import identity
from poolai.node.jobs.models import forward
from poolai.node.launcher import stop_all, wait_until

pytestmark = [pytest.mark.live, pytest.mark.timeout(400)]

GPU_8G = {"gpus": [{"name": "sim-8G", "memory_total": "8GiB", "compute_capability": "8.6"}]}
PLACES = {  # name: ((x, y) in one-way ms, inventory, job slots)
    "sub": ((0.0, 0.0), None, 0),
    "cpu1": ((1.0, 1.0), None, 1),
    "cpu2": ((-2.0, 0.0), None, 1),
    "small": ((0.0, -2.0), GPU_8G, 1),
    "near": ((5.0, 0.0), GPU_SMALL, 1),
    "far": ((0.0, 400.0), GPU_BIG, 1),
}
APART_MS = 400.0  # how much farther "far" must measure than "near" (emulated: 790 ms)
GPU16 = {"device": "gpu", "min_gpu_memory_mib": 16384}
GPU40 = {"device": "gpu", "min_gpu_memory_mib": 40960}


def one_way_ms(a: str, b: str) -> float:
    (ax, ay), (bx, by) = PLACES[a][0], PLACES[b][0]
    return round(math.hypot(ax - bx, ay - by), 2)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)  # the workers' setting, so references match bit for bit
    root = tmp_path_factory.mktemp("nearest")
    # Identities first: every node's latency table names its peers by id.
    ids = {name: identity.peer_id_of(identity.load_or_create(root / name / "identity.key")[0])
           for name in PLACES}
    m = Mesh(root)
    try:
        for name, (_, inventory, slots) in PLACES.items():
            table = {ids[other]: one_way_ms(name, other) for other in PLACES if other != name}
            path = root / f"{name}-latency.json"
            path.write_text(json.dumps({"version": 1, "one_way_ms": table}))
            node = m.start(name, inventory, slots=slots,
                           env={"POOLAI_EMULATED_LATENCY": str(path)})
            assert node.peer_id == ids[name]
        wait_until(lambda: {e["peer_id"] for e in m.sub.get("/api/capacity")["entries"]}
                   >= set(ids.values()) - {ids["sub"]}, 60,
                   "every node's capacity advert at the submitter")
        yield m
    finally:
        stop_all(list(m.nodes.values()))


def rtts(mesh: Mesh) -> dict[str, float | None]:
    """The submitter's own round-trip estimates (what its ranking uses), by node name."""
    names = by_peer(mesh)
    return {names[e["peer_id"]]: e["rtt_ms"] for e in mesh.sub.get("/api/capacity")["entries"]}


def coord_errors(mesh: Mesh) -> dict[str, float | None]:
    """Vivaldi error estimates in the submitter's table (for failure messages): under 0.8 on
    both ends, the ranking uses predicted round trips instead of pings."""
    names = by_peer(mesh)
    return {names[e["peer_id"]]: e["coord"] and round(e["coord"]["error"], 2)
            for e in mesh.sub.get("/api/capacity")["entries"]}


def test_gpu_jobs_run_on_the_nearest_capable_peer(mesh: Mesh) -> None:
    def ready() -> bool:
        r = rtts(mesh)
        return (r.get("near") is not None and r.get("far") is not None
                and r["far"] > r["near"] + APART_MS and all_idle(mesh))

    wait_until(ready, 120, "the submitter to measure near and far apart")
    measured = rtts(mesh)
    assert measured["far"] >= 400, measured  # what it measured includes the emulated 800 ms

    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(11))
    model, refs = program(mesh, MLP, 12, {"x": x}, "near")
    expected = forward(model, MLP, {"x": x})["y"]
    names = by_peer(mesh)
    offered: list[str] = []
    # One at a time, each into an idle mesh, so only distance and capability decide. (A busy
    # peer is not "capable" in the ranking: its free slot must be back in the submitter's
    # table, which trails the result by up to a heartbeat, before the next job goes in.)
    for _ in range(3):
        wait_until(ready, 120, "an idle mesh, near and far measured apart")
        ranked = capable(mesh, "16GiB")
        job_id = mesh.submit(spec(MLP, refs, requirements=GPU16, retry_budget=2), refs)
        data = mesh.wait(job_id)
        assert data["result"]["status"] == "ok", json.dumps(data, indent=1) + mesh.job_log()
        offered += [names[a["peer"]] for a in data["attempts"]]
        assert names[data["worker"]] == "near", (
            [(names[a["peer"]], a["outcome"]) for a in data["attempts"]], ranked, rtts(mesh),
            coord_errors(mesh), mesh.job_log())
        assert "[simulated GPU 0: sim-24G]" in data["result"]["device"]
        same(mesh.output(job_id)["y"], expected)
    assert set(offered) == {"near"}, offered  # nobody nearer was even asked: none could run it

    # Capability beats distance: only the far node has 40 GiB.
    wait_until(ready, 120, "an idle mesh, near and far measured apart")
    job_id = mesh.submit(spec(MLP, refs, requirements=GPU40, retry_budget=2), refs)
    data = mesh.wait(job_id)
    assert data["result"]["status"] == "ok", json.dumps(data, indent=1) + mesh.job_log()
    assert names[data["worker"]] == "far", json.dumps(data["attempts"])
    same(mesh.output(job_id)["y"], expected)

    # The CPU-only nodes and the too-small GPU were never offered a GPU job.
    for name in ("cpu1", "cpu2", "small"):
        stats = jobs_stats(mesh.nodes[name].status())
        assert stats["accepted"] == 0 and stats["refused"] == 0, (name, stats)


def capable(mesh: Mesh, gpu_mem: str) -> list[tuple[str, float, float | None]]:
    """The submitter's ranking for a GPU job (for failure messages): name, cost, RTT."""
    names = by_peer(mesh)
    reply = mesh.sub.get(f"/api/capacity/capable?gpu_mem={gpu_mem}")
    return [(names[c["peer_id"]], c["cost_ms"], c["rtt_ms"]) for c in reply["candidates"]]


def all_idle(mesh: Mesh) -> bool:
    return all(e["free_slots"] == e["job_slots"] for e in mesh.sub.get("/api/capacity")["entries"])


def jobs_stats(status: dict[str, Any]) -> dict[str, int]:
    return status["jobs"]["stats"]
