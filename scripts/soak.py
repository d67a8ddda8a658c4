#!/usr/bin/env python3
"""A chaos soak: real node processes under continuous work while nodes crash, hang and
restart, a hostile peer churns connections and one holder's disk fills.

    python scripts/soak.py --nodes 16 --minutes 30 [--seed S] [--root DIR] [--out FILE]

Starts ``--nodes`` node processes on 127.0.0.1 (fixed ports, so a restarted node keeps its
address; the fast settings of the live tests) and, for ``--minutes``:

* puts files (1 KiB to 1.5 MiB, k-of-n erasure coded; now and then the same bytes from two
  nodes at once) and gets acknowledged ones back from random nodes, comparing every byte;
* submits jobs (the built-in MLP of ``poolai job demo``, fresh inputs each, CPU or a
  simulated GPU) through the first node, and checks each output against a local answer;
* changes capacity: advertised load, and simulated GPUs' memory (inventory files);
* SIGKILLs (then restarts), SIGSTOPs (then SIGCONTs) and SIGTERM-restarts random nodes,
  never more than ``--max-down`` at once, at most n-k, so every file stays readable; the
  first node, the jobs' submitter (it keeps its submissions in memory), is only stopped;
* runs ``tests/churn_peer.py`` against one node: connect/disconnect cycles from fresh
  identities, from another loopback address;
* fills one holder's disk: its data directory is a small tmpfs (as root; otherwise its
  storage quota is set to what it holds) filled to the last 64 KiB for the middle of the run;

then stops the chaos, restarts what is down, runs a repair pass on every node, and checks
the invariants. Prints ONE JSON object (progress goes to stderr): operations by kind,
failures by kind with short reasons, and the invariants, each with ``ok``. Exit status 0
only if every invariant holds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from soaklib import verdict, workload  # noqa: E402
from soaklib.cluster import (  # noqa: E402
    Cluster,
    Member,
    Tally,
    answer_time,
    free_port,
    gpu_inventory,
    reason_of,
    reply_reason,
)
from soaklib.workload import FileSpec  # noqa: E402

from poolai.node.auth import auth_headers  # noqa: E402
from poolai.node.launcher import stop_all, wait_until  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CHURN_PEER = ROOT / "tests" / "churn_peer.py"
FAST = {"POOLAI_OVERLAY_SCALE": "0.5", "POOLAI_CAPACITY_HEARTBEAT": "2", "POOLAI_STORAGE_INTERVAL": "30",
        "POOLAI_CREDITS_SYNC_INTERVAL": "10", "POOLAI_REDUNDANCY_FRACTION": "0", "POOLAI_JOB_SLOTS": "1",
        "POOLAI_STORAGE_QUOTA": "256MiB", "POOLAI_LOG_LEVEL": "warning"}
SEGMENT = 256 << 10
ATTACKER_IP = "127.0.0.2"
# A node is stuck when its API gives no answer within STUCK_AFTER_S; it is prompt when at
# least PROMPT_SHARE of its answers come within PROMPT_S. Both are judged (no_node_stuck).
STUCK_AFTER_S = 5.0
PROMPT_S = 1.0
PROMPT_SHARE = 0.99
PROBE_EVERY_S = 2.0
SAMPLE_EVERY_S = 3.0
DEFAULT_BOUNDS = verdict.Bounds()
GPU_JOB = {"device": "gpu", "min_gpu_memory_mib": 8192}


class Soak:
    """One soak: the workload's loops, the chaos, the watchers, the checks at the end."""

    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args = args
        self.root = root
        self.rng = random.Random(args.seed)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.tally = Tally()
        self.count, self.fail, self.say, self.now = (self.tally.count, self.tally.fail, self.tally.say,
                                                     self.tally.now)
        self.cluster = Cluster(root, FAST, self.tally, self.stop)
        self.members = self.cluster.members
        self.pick, self.http, self.client = self.cluster.pick, self.cluster.http, self.cluster.client
        self.acked: dict[str, FileSpec] = {}  # file id -> what was put
        self.puts = 0
        self.wrong: list[dict[str, Any]] = []
        self.gets_checked = 0
        self.jobs = verdict.JobRecord()
        self.outputs_to_check: set[str] = set()
        self.samples: dict[str, list[verdict.Sample]] = defaultdict(list)
        self.probes = 0
        self.stuck: list[dict[str, Any]] = []
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.weights = workload.safetensors_bytes(workload.mlp_weights(args.seed))
        self.control: tuple[subprocess.Popen[bytes], str] | None = None
        self.control_times: list[float] = []
        self.crashes: list[dict[str, Any]] = []

    # -- workload ---------------------------------------------------------------------------

    def every(self, gap: tuple[float, float], rng: random.Random,
              step: Callable[[random.Random], None]) -> None:
        while not self.stop.wait(rng.uniform(*gap)):
            step(rng)

    def put_step(self, rng: random.Random) -> None:
        with self.lock:
            index = self.puts
            self.puts += 1
        spec = workload.file_spec(self.args.seed, index)
        twin = index % 8 == 7
        targets = [self.pick(rng), self.pick(rng)] if twin else [self.pick(rng)]
        targets = [t for t in targets if t is not None]
        if not targets:
            return
        kind = "put_twin" if twin else "put"
        data = spec.data()

        def one(m: Member) -> None:
            self.count(kind)
            try:
                reply = self.http(m, "POST", "/api/files", params={"k": self.args.k, "n": self.args.n,
                                                                   "segment": SEGMENT}, content=data)
            except httpx.HTTPError as exc:
                self.fail(kind, reason_of(exc))
                return
            if reply.status_code != 201:
                self.fail(kind, reply_reason(reply))
                return
            with self.lock:
                self.acked[reply.json()["file_id"]] = spec

        with ThreadPoolExecutor(len(targets)) as pool:
            list(pool.map(one, targets))

    def get_step(self, rng: random.Random) -> None:
        with self.lock:
            if not self.acked:
                return
            file_id, spec = rng.choice(list(self.acked.items()))
        m = self.pick(rng)
        if m is None:
            return
        self.count("get")
        body = bytearray()
        try:
            with self.client.stream("GET", f"{m.process.api}/api/files/{file_id}",
                              headers=auth_headers(m.process.data_dir), timeout=60) as reply:
                if reply.status_code != 200:
                    reply.read()
                    self.fail("get", reply_reason(reply))
                    return
                for chunk in reply.iter_bytes():
                    body += chunk
            error = None
        except httpx.HTTPError as exc:
            error = reason_of(exc)
        expected = spec.data()
        wrong_at = workload.first_difference(expected, bytes(body))
        with self.lock:
            self.gets_checked += 1
            if wrong_at is not None:
                self.wrong.append({"file_id": file_id, "node": m.name, "offset": wrong_at, "got": len(body)})
        if error is not None or len(body) != len(expected):
            self.fail("get", error or f"short body ({len(body)} of {len(expected)} bytes)")

    def job_step(self, rng: random.Random) -> None:
        with self.lock:
            running = len(self.jobs.submitted) - len(self.jobs.terminal)
        if running >= self.args.jobs_in_flight:
            return
        anchor = self.members[0]
        if anchor.state != "up":
            return
        index = len(self.jobs.submitted)
        inputs = workload.mlp_inputs(self.args.seed, index)
        self.count("job")
        try:
            refs = {}
            for name, data in (("weights.safetensors", self.weights),
                               ("inputs.safetensors", workload.safetensors_bytes(inputs))):
                reply = self.http(anchor, "POST", "/api/admin/jobs/files", params={"name": name},
                                  content=data)
                if reply.status_code != 200:
                    self.fail("job", f"upload: {reply_reason(reply)}")
                    return
                refs[name] = reply.json()

            def ref(name: str) -> dict[str, Any]:
                return {k: refs[name][k] for k in ("name", "sha256", "size")}

            job = {"program": {"kind": "builtin", "family": "mlp", "config": workload.MLP_CONFIG,
                               "weights": ref("weights.safetensors")},
                   "inputs": ref("inputs.safetensors"), "timeout_s": 120, "retry_budget": 4,
                   "requirements": GPU_JOB if rng.random() < 0.3 else {"device": "cpu"}}
            reply = self.http(anchor, "POST", "/api/admin/jobs",
                              json={"job": job, "files": {n: r["file_id"] for n, r in refs.items()}})
        except httpx.HTTPError as exc:
            self.fail("job", reason_of(exc))
            return
        if reply.status_code != 201:
            self.fail("job", f"submit: {reply_reason(reply)}")
            return
        with self.lock:
            expected = workload.mlp_forward(workload.mlp_weights(self.args.seed), inputs)
            self.jobs.submit(reply.json()["job_id"], expected)

    def watch_jobs(self, rng: random.Random) -> None:
        anchor = self.members[0]
        if anchor.state != "up":
            return
        try:
            listed = self.http(anchor, "GET", "/api/jobs", timeout=10).json()["jobs"]
        except (httpx.HTTPError, ValueError, KeyError):
            return
        with self.lock:
            for job in listed:
                if job["job_id"] in self.jobs.submitted and self.jobs.observe(job):
                    if job["result"] and job["result"]["status"] == "ok":
                        self.outputs_to_check.add(job["job_id"])
            pending = list(self.outputs_to_check)
        for job_id in pending:
            try:
                reply = self.http(anchor, "GET", f"/api/admin/jobs/{job_id}/output", timeout=30)
            except httpx.HTTPError:
                continue
            if reply.status_code != 200:
                continue
            with self.lock:
                self.outputs_to_check.discard(job_id)
                if not workload.output_matches(self.jobs.submitted[job_id], reply.content):
                    self.jobs.wrong_output.append(job_id)

    def capacity_step(self, rng: random.Random) -> None:
        m = self.pick(rng)
        if m is None:
            return
        self.count("capacity")
        if m.inventory is not None and rng.random() < 0.5:
            tmp = m.inventory.with_suffix(".tmp")
            tmp.write_text(json.dumps(gpu_inventory(rng.choice((24, 48, 80)))))
            os.replace(tmp, m.inventory)  # the node re-reads the file when it changes
            return
        try:
            reply = self.http(m, "POST", "/api/admin/capacity/load", timeout=10,
                              json={"busy_slots": rng.randint(0, 1), "queue_length": rng.randint(0, 3)})
        except httpx.HTTPError as exc:
            self.fail("capacity", reason_of(exc))
            return
        if reply.status_code != 200:
            self.fail("capacity", reply_reason(reply))

    def chaos_step(self, rng: random.Random) -> None:
        self.cluster.chaos_step(rng, self.args.max_down)

    # -- watching -----------------------------------------------------------------------------

    def probe(self, m: Member) -> None:
        seen = self.cluster.snapshot(m)
        if seen[0] != "up":
            return
        took, error = answer_time(m.process.api, "/api/status", STUCK_AFTER_S)
        if self.cluster.snapshot(m) != seen:
            return  # stopped or restarted meanwhile: deliberately unavailable
        with self.lock:
            self.probes += 1
            self.latencies[m.name].append(took if error is None else float("inf"))
            if error is not None or took > STUCK_AFTER_S:
                self.stuck.append({"node": m.name, "at_s": round(self.now(), 1), "seconds": round(took, 2),
                                   "error": error})

    def probe_all(self, rng: random.Random) -> None:
        with ThreadPoolExecutor(len(self.members) + 1) as pool:
            list(pool.map(self.probe, self.members))
            if self.control is not None:
                took, error = pool.submit(answer_time, self.control[1], "/", STUCK_AFTER_S).result()
                with self.lock:
                    self.control_times.append(took if error is None else float("inf"))

    def start_control(self) -> None:
        """A plain HTTP server in a process of its own, probed with the nodes: how long any
        process on this machine takes to answer, to read the nodes' times against."""
        port = free_port()
        empty = self.root / "control"
        empty.mkdir(exist_ok=True)
        proc = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port),
                                 "--directory", str(empty)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: answer_time(url, "/", 5.0)[1] is None, 30, "the control server")
        self.control = (proc, url)

    def stuck_report(self) -> dict[str, Any]:
        def worst(values: list[float | None]) -> float | None:  # None: some probe got no answer
            return None if None in values else max(values, default=0.0)

        with self.lock:
            nodes = {name: verdict.responsiveness(times, PROMPT_S) for name, times in self.latencies.items()}
            control = verdict.responsiveness(self.control_times, PROMPT_S)
        slow = {name: r for name, r in nodes.items() if r["prompt_share"] < PROMPT_SHARE}
        return {"ok": not self.stuck and not slow, "probes": self.probes,
                "stuck_after_s": STUCK_AFTER_S, "prompt_s": PROMPT_S, "prompt_share": PROMPT_SHARE,
                "stuck": len(self.stuck), "first_stuck": self.stuck[:10], "not_prompt": slow,
                "over_prompt_s": sum(r["over"] for r in nodes.values()),
                "worst_latency_s": worst([r["worst_s"] for r in nodes.values()]),
                "p99_latency_s": worst([r["p99_s"] for r in nodes.values()]),
                "control_process": control}

    def sample(self, rng: random.Random) -> None:
        t = self.now()
        for m in self.members:
            if not m.process.alive:
                if self.cluster.snapshot(m)[0] == "up":  # nobody stopped it: it died
                    self.cluster.set_state(m, "down")  # the chaos's end starts it again
                    with self.lock:
                        self.crashes.append({"node": m.name, "at_s": round(t, 1),
                                             "code": m.process.returncode, "log": m.process.output[-3:]})
                    self.say(f"{m.name} exited by itself (code {m.process.returncode})")
                continue
            pid = m.process.pid
            try:
                rss = next(int(line.split()[1]) * 1024 for line in open(f"/proc/{pid}/status")
                           if line.startswith("VmRSS:"))
                fds = len(os.listdir(f"/proc/{pid}/fd"))
            except (OSError, StopIteration):
                continue
            with self.lock:
                self.samples[m.name].append(verdict.Sample(t, pid, rss, fds))

    # -- the run --------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        self.say(f"starting {self.args.nodes} nodes in {self.root}")
        self.cluster.start(self.args.nodes)
        self.start_control()
        self.tally.t0 = time.monotonic()
        chaos_s = self.args.minutes * 60
        self.say(f"mesh up; {chaos_s:.0f} s of chaos")
        target = self.members[1 % len(self.members)]
        churn = subprocess.Popen(
            [sys.executable, str(CHURN_PEER), target.process.addr, "--cycles", str(10**9), "--parallel", "2",
             "--seconds", str(chaos_s), "--source-ip", ATTACKER_IP],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        loops = [((1.0, 3.0), self.put_step), ((1.0, 3.0), self.put_step), ((0.5, 2.0), self.get_step),
                 ((0.5, 2.0), self.get_step), ((3.0, 6.0), self.job_step), ((1.5, 2.5), self.watch_jobs),
                 ((3.0, 6.0), self.capacity_step), ((5.0, 12.0), self.chaos_step),
                 ((PROBE_EVERY_S, PROBE_EVERY_S), self.probe_all),
                 ((SAMPLE_EVERY_S, SAMPLE_EVERY_S), self.sample)]
        threads = [threading.Thread(target=self.every, args=(gap, random.Random(self.rng.random()), step),
                                    daemon=True) for gap, step in loops]
        watching = {self.watch_jobs, self.probe_all, self.sample}  # these go on through the checks
        for thread in threads:
            thread.start()
        if not self.stop.wait(chaos_s * 0.25):
            self.cluster.fill_disk()
        if not self.stop.wait(chaos_s * 0.5):
            self.cluster.empty_disk(FAST["POOLAI_STORAGE_QUOTA"])
        self.stop.wait(chaos_s * 0.25)
        self.stop.set()
        self.say("chaos over; healing")
        for thread in threads:
            thread.join(180)
        try:
            churned = json.loads(churn.communicate(timeout=120)[0].strip().splitlines()[-1])
        except (subprocess.TimeoutExpired, ValueError, IndexError):
            churn.kill()
            churned = {"error": "the churn peer did not report"}
        self.cluster.heal()
        chaos_end = self.now()
        end_stop = threading.Event()
        watchers = [threading.Thread(target=lambda step=step, gap=gap: self.watch_after(end_stop, gap, step),
                                     daemon=True) for gap, step in loops if step in watching]
        for thread in watchers:
            thread.start()
        try:
            report = self.check(chaos_end)
        finally:
            end_stop.set()
            for thread in watchers:
                thread.join(30)
        report["churn"] = {"target": target.name, "from": ATTACKER_IP, **churned,
                           "target_inbound": self.inbound_of(target)}
        stop_all([m.process for m in self.members])
        report["invariants"]["resources_bounded"] = verdict.resources(
            self.samples, self.now() / 2, self.bounds())
        report["invariants"]["no_node_stuck"] = self.stuck_report()
        report["invariants"]["no_node_crashed"] = {"ok": not self.crashes, "crashes": self.crashes[:10]}
        report["ok"] = all(v["ok"] for v in report["invariants"].values())
        return report

    def watch_after(self, end: threading.Event, gap: tuple[float, float], step: Callable[..., None]) -> None:
        while not end.wait(gap[0]):
            step(self.rng)

    def bounds(self) -> verdict.Bounds:
        a = self.args
        return verdict.Bounds(a.max_rss_mib, a.max_fds, a.max_rss_slope, a.max_fds_slope)

    def inbound_of(self, m: Member) -> Any:
        try:
            return m.process.status().get("connections", {}).get("inbound")
        except (httpx.HTTPError, ValueError):
            return None

    def check(self, chaos_end: float) -> dict[str, Any]:
        invariants: dict[str, dict[str, Any]] = {"no_wrong_bytes": {}}
        self.say(f"reading back {len(self.acked)} acknowledged files")
        invariants["acknowledged_puts_readable"] = self.check_files()
        self.say("waiting for every job to end")
        invariants["jobs_one_result"] = self.check_jobs()
        self.say("waiting for the ledgers to settle")
        invariants["ledgers_agree"] = self.check_ledgers()
        invariants["no_wrong_bytes"] = {"ok": not self.wrong, "bytes_compared_in_gets": self.gets_checked,
                                        "wrong": self.wrong[:20]}
        return {"config": {"nodes": self.args.nodes, "minutes": self.args.minutes, "seed": self.args.seed,
                           "k": self.args.k, "n": self.args.n, "max_down": self.args.max_down,
                           "disk": "tmpfs" if self.cluster.tmpfs else "quota", "env": FAST},
                "seconds": {"chaos": round(chaos_end, 1), "checks": round(self.now() - chaos_end, 1)},
                **self.tally.report(), "invariants": invariants}

    def check_files(self) -> dict[str, Any]:
        """Every acknowledged put read back whole from some node, after repair passes."""
        with self.lock:
            todo = dict(self.acked)
        rounds = 0
        rng = random.Random(self.args.seed + 1)

        def read_back(item: tuple[str, FileSpec]) -> str | None:
            file_id, spec = item
            m = rng.choice(self.members)
            self.count("final_get")
            try:
                reply = self.client.get(f"{m.process.api}/api/files/{file_id}", timeout=120)
            except httpx.HTTPError as exc:
                self.fail("final_get", reason_of(exc))
                return None
            if reply.status_code != 200:
                self.fail("final_get", reply_reason(reply))
                return None
            wrong_at = workload.first_difference(spec.data(), reply.content)
            if wrong_at is not None:
                with self.lock:
                    self.wrong.append({"file_id": file_id, "node": m.name, "offset": wrong_at, "final": True})
            elif len(reply.content) == spec.size:
                return file_id
            return None

        while todo and rounds < 3:
            rounds += 1
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(self.repair, self.members))
                for file_id in pool.map(read_back, list(todo.items())):
                    todo.pop(file_id or "", None)
        return {"ok": not todo, "acknowledged": len(self.acked), "unreadable": sorted(todo)[:20],
                "repair_rounds": rounds}

    def repair(self, m: Member) -> None:
        self.count("repair")
        try:
            reply = self.http(m, "POST", "/api/storage/repair", timeout=600)
            if reply.status_code != 200:
                self.fail("repair", reply_reason(reply))
        except httpx.HTTPError as exc:
            self.fail("repair", reason_of(exc))

    def check_jobs(self) -> dict[str, Any]:
        def ended() -> bool:
            with self.lock:
                return set(self.jobs.terminal) >= set(self.jobs.submitted) and not self.outputs_to_check

        try:
            wait_until(ended, 300, "every job ended", interval=1.0)
        except AssertionError:
            pass
        with self.lock:
            return {**self.jobs.verdict(), "outputs_unchecked": sorted(self.outputs_to_check)[:20]}

    def check_ledgers(self) -> dict[str, Any]:
        """Wait until no claim awaits a countersignature and every node computes the same
        balances (sync runs every 10 s), then judge what the nodes hold."""
        last: dict[str, Any] = {}

        def settled() -> bool:
            docs = {m.process.peer_id: m.process.get("/api/credits") for m in self.members}
            balances = {m.process.peer_id: m.process.get("/api/credits/balances")["balances"]
                        for m in self.members}
            last.update(verdict.ledgers_agree(balances, {p: d["statement"] for p, d in docs.items()}))
            last["pending"] = sum(d["ledger"]["pending"] for d in docs.values())
            return last["ok"] and last["pending"] == 0

        try:
            wait_until(settled, 240, "the ledgers settled and agreeing", interval=2.0)
        except AssertionError as exc:
            last.setdefault("problems", []).append(str(exc)[:200])
            last["ok"] = False
        return last


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=6)
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--k", type=int, help="data shares (default: 2 below 12 nodes, else 4)")
    parser.add_argument("--n", type=int, help="all shares (default: 5 below 12 nodes, else 10)")
    parser.add_argument("--max-down", type=int,
                        help="nodes down at once (default: 2, from 12 nodes 3; <= n-k)")
    parser.add_argument("--jobs-in-flight", type=int, help="unfinished jobs at once (default: nodes / 3)")
    parser.add_argument("--root", type=Path, help="where the nodes' data goes (default: a new temporary dir)")
    parser.add_argument("--keep", action="store_true", help="keep the nodes' data and logs")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--max-rss-mib", type=float, default=DEFAULT_BOUNDS.rss_mib)
    parser.add_argument("--max-fds", type=int, default=DEFAULT_BOUNDS.fds)
    parser.add_argument("--max-rss-slope", type=float, default=DEFAULT_BOUNDS.rss_slope_mib_per_min,
                        help="MiB per minute over the second half")
    parser.add_argument("--max-fds-slope", type=float, default=DEFAULT_BOUNDS.fds_slope_per_min)
    args = parser.parse_args()
    if args.nodes < 3:
        parser.error("--nodes must be at least 3")
    big = args.nodes >= 12
    args.k = args.k or (4 if big else 2)
    args.n = args.n or min(10 if big else 5, args.nodes - 1)
    args.max_down = args.max_down if args.max_down is not None else (3 if big else 2)
    if not 1 <= args.k < args.n or args.max_down > args.n - args.k:
        parser.error("need 1 <= k < n and max-down <= n - k")
    args.jobs_in_flight = args.jobs_in_flight or max(2, args.nodes // 3)
    root = args.root or Path(tempfile.mkdtemp(prefix="poolai-soak-"))
    root.mkdir(parents=True, exist_ok=True)
    soak = Soak(args, root)
    try:
        report = soak.run()
    finally:
        stop_all([m.process for m in soak.members])
        if soak.control is not None:
            soak.control[0].terminate()
            soak.control[0].wait()
        soak.cluster.unmount()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    report["root"] = str(root) if args.keep else None
    text = json.dumps(report, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text, flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
