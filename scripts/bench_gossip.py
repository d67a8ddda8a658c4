#!/usr/bin/env python3
"""Capacity gossip on N node processes on 127.0.0.1: change-to-arrival latency and bytes sent.

    python scripts/bench_gossip.py [-n 16] [--heartbeat 10] [--changes 20] [--window 60]

Starts N ``poolai node run`` processes joined by bootstrap chains, waits until
every capacity table lists all N, then:

- latency: ``--changes`` times, fills or frees a job slot on a random node
  through its admin API and reads, from every other node's table, the local
  arrival time of the advert carrying it (all processes share one clock).
  ``change_to_arrival`` counts from just before the API call; ``publish_to_arrival``
  from the advert's own timestamp. A sample where a later advert had already
  replaced the one carrying the change is not counted (reported as ``overtaken``).
- bytes: pubsub bytes each node wrote (frames before Noise/yamux framing) over
  a ``--window`` of heartbeats only, per node per minute.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from poolai.node.auth import auth_headers
from poolai.node.launcher import NodeProcess, stop_all, wait_until


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def summary(values: list[float]) -> dict[str, float | int]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50_ms": round(percentile(values, 0.5) * 1000, 1),
            "p99_ms": round(percentile(values, 0.99) * 1000, 1),
            "max_ms": round(max(values) * 1000, 1), "mean_ms": round(statistics.fmean(values) * 1000, 1)}


def entries(node: NodeProcess) -> dict[str, dict]:
    return {e["peer_id"]: e for e in node.get("/api/capacity", timeout=10)["entries"]}


def start_all(n: int, base: Path, env: dict[str, str], rng: random.Random) -> list[NodeProcess]:
    nodes = [NodeProcess(base / "n0", env=env).start(timeout=90)]
    while len(nodes) < n:
        wave = []
        for i in range(len(nodes), min(n, 2 * len(nodes) + 1)):
            via = rng.choice(nodes)  # a chain: each newcomer knows one earlier node
            wave.append(NodeProcess(base / f"n{i}", "--bootstrap", via.addr, env=env))
        with ThreadPoolExecutor(len(wave)) as pool:
            nodes += list(pool.map(lambda p: p.start(timeout=120), wave))
    return nodes


def change_once(nodes: list[NodeProcess], rng: random.Random, busy: dict[str, int],
                timeout: float) -> tuple[list[float], list[float], int, int]:
    target = rng.choice(nodes)
    busy[target.peer_id] = 1 - busy.get(target.peer_id, 0)
    free = 1 - busy[target.peer_id]
    t0 = time.time()
    httpx.post(target.api + "/api/admin/capacity/load", json={"busy_slots": busy[target.peer_id]},
               headers=auth_headers(target.data_dir), timeout=10).raise_for_status()
    mine: dict = {}

    def published() -> bool:
        mine.update(entries(target)[target.peer_id])
        return mine["free_slots"] == free

    wait_until(published, timeout, "the change to be published", interval=0.1)
    seq, stamp = mine["seq"], mine["timestamp"]
    change, publish, overtaken, lost = [], [], 0, 0
    waiting = [n for n in nodes if n is not target]
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        # Arrival times come from the nodes' own clocks, so polling slowly loses no precision,
        # and polling fast would load the CPUs the nodes are measured on.
        time.sleep(0.5)
        still = []
        for node in waiting:
            try:
                entry = entries(node).get(target.peer_id)
            except httpx.HTTPError:  # a starved node answers late; ask it again next round
                still.append(node)
                continue
            if entry is None or entry["seq"] < seq:
                still.append(node)
            elif entry["seq"] == seq:
                change.append(entry["received_at"] - t0)
                publish.append(entry["received_at"] - stamp)
            else:
                overtaken += 1
        waiting = still
    lost = len(waiting)
    return change, publish, overtaken, lost


def gossip_counters(nodes: list[NodeProcess]) -> dict[str, dict]:
    return {n.peer_id: n.status()["capacity"]["gossip"] for n in nodes}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=16)
    parser.add_argument("--heartbeat", type=float, default=10.0, help="capacity advert heartbeat (s)")
    parser.add_argument("--expiry", type=int, default=3, help="missed heartbeats before expiry")
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--window", type=float, default=60.0, help="seconds of heartbeat-only traffic")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    env = {"POOLAI_CAPACITY_HEARTBEAT": str(args.heartbeat), "POOLAI_CAPACITY_EXPIRY": str(args.expiry),
           "POOLAI_JOB_SLOTS": "1", "POOLAI_LOG_LEVEL": "warning"}
    result: dict = {"nodes": args.n, "heartbeat_s": args.heartbeat, "changes": args.changes,
                    "cpus": os.cpu_count(), "loadavg_1m_start": round(os.getloadavg()[0], 1)}
    with tempfile.TemporaryDirectory(prefix="poolai-bench-gossip-") as tmp:
        nodes: list[NodeProcess] = []
        try:
            started = time.monotonic()
            nodes = start_all(args.n, Path(tmp), env, rng)
            result["start_s"] = round(time.monotonic() - started, 1)
            ids = {n.peer_id for n in nodes}
            converge = time.monotonic()
            wait_until(lambda: all(set(entries(n)) == ids for n in nodes), 60 + 3 * args.heartbeat,
                       "every table to list every node", interval=0.5)
            result["converge_s"] = round(time.monotonic() - converge, 1)

            change, publish, overtaken, lost = [], [], 0, 0
            busy: dict[str, int] = {}
            for _ in range(args.changes):
                c, p, o, lo = change_once(nodes, rng, busy, timeout=10.0)
                change += c
                publish += p
                overtaken += o
                lost += lo
                time.sleep(1.1)  # a node publishes at most every 0.5 s; let each change stand alone
            result["change_to_arrival"] = summary(change)
            result["publish_to_arrival"] = summary(publish)
            result["overtaken"] = overtaken
            result["lost"] = lost

            before = gossip_counters(nodes)
            t0 = time.monotonic()
            time.sleep(args.window)
            after = gossip_counters(nodes)
            minutes = (time.monotonic() - t0) / 60.0
            per_node = [(after[p]["bytes_sent"] - before[p]["bytes_sent"]) / minutes for p in ids]
            rpcs = [(after[p]["rpcs_sent"] - before[p]["rpcs_sent"]) / minutes for p in ids]
            sizes = [n.status()["capacity"]["advert_bytes"] for n in nodes]
            result["bytes_per_node_per_min"] = {
                "mean": round(statistics.fmean(per_node)), "min": round(min(per_node)),
                "max": round(max(per_node)), "rpcs_per_node_per_min": round(statistics.fmean(rpcs), 1),
            }
            result["adverts_per_node_per_min"] = round(60.0 / args.heartbeat, 2)
            result["advert_bytes_mean"] = round(statistics.fmean(sizes))
            rejected = {}
            for stats in after.values():
                for reason, count in stats["rejected"].items():
                    rejected[reason] = rejected.get(reason, 0) + count
            result["rejected"] = rejected
        finally:
            stop_all(nodes)
    result["loadavg_1m_end"] = round(os.getloadavg()[0], 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
