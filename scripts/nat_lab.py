#!/usr/bin/env python3
"""Real nodes behind real NATs on one machine: who can reach whom; prints one JSON object.

    sudo .venv/bin/python scripts/nat_lab.py [--only eim,adpm,firewall,cgnat,lan]
        [--public 2] [--settle 60 | --minutes 2] [--seed 1] [--keep]

Builds an "internet" and home networks in network namespaces (scripts/natlib/topology.py
has the addresses; docs/reachability.md the diagram): public nodes, and one home of each
kind given to ``--only`` behind a router running iptables: port-preserving NAT (eim),
port-randomising NAT (adpm), a firewall without NAT, two NATs in series (cgnat), and a
LAN of two nodes behind one NAT. Starts a ``poolai node run`` in every node namespace,
all joining through the first public node, waits ``--settle`` seconds and reports:

* ``pairs``: for every pair of nodes whether they are connected and how (``lan``,
  ``direct-tcp``, ``relayed``, ``unknown``: connected but no TCP path found, ``none``),
  the socket that shows it, and the seconds from both being up to the first connection;
* ``summary``: counts by how and by NAT pair type;
* ``reachability``: what each node concluded of its own reachability (its status);
* ``inbound``: a plain TCP connect from a public node to each node's listen address and
  to the address its connections come from (a NATed node must refuse both);
* ``mapping``: the source port a public node sees for a connection from local port
  40000 (kept by port-preserving NAT, replaced by a randomising one);
* ``hole_punch``: DCUtR attempts and successes by NAT pair type of nodes in different
  homes, and each pair's seconds to a direct connection;
* ``timings``: time to first connection and to a direct one (p50, p99) by NAT pair type;
* ``relays``: which nodes serve as relays, and on which relays each private node holds
  a reservation;
* ``put_get``: a file put from one NATed node and got from another, compared;
* ``job``: a job submitted on one NATed node that only a node behind another NAT can
  run (a simulated GPU), its output compared with a local run.

Failures of the last two are reported, not raised: they are what the lab is for.
Namespaces are named ``natlab-<pid>-<hex>-...`` and removed at the end, also after an
error or Ctrl-C; a lab killed outright leaves them for the next run to remove.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import httpx  # noqa: E402
from natlib import netns, topology  # noqa: E402
from natlib.classify import Pair, classify_all, summarise  # noqa: E402
from natlib.lab import Lab, open_lab  # noqa: E402
from natlib.topology import LabNode, Topology  # noqa: E402

from poolai.node.launcher import poolai_command  # noqa: E402

MiB = 1 << 20
SCRIPTS = Path(__file__).resolve().parent
GPU = {"gpus": [{"name": "sim-24G", "memory_total": "24GiB", "compute_capability": "8.6"}]}
ECHO_PORT, MAPPED_FROM = 3478, 40000
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def pick_pair(topo: Topology) -> tuple[LabNode, LabNode] | None:
    """Two non-public nodes in different homes, NATed ones first: put/get and job run
    from the first to the second."""
    homed = sorted((n for n in topo.nodes if n.home is not None), key=lambda n: not n.natted)
    for a in homed:
        for b in homed:
            if a.home != b.home:
                return a, b
    return None


def cli(node: Lab, name: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``poolai --data-dir <name's dir> args...``, talking to the node over its API socket."""
    return subprocess.run(poolai_command("--data-dir", str(node.nodes[name].data_dir), *args),
                          capture_output=True, text=True, timeout=timeout)


def failure(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit {done.returncode}: {(done.stderr or done.stdout).strip()[-400:]}"


# ----------------------------------------------------------------------------- probes


def inbound(topo: Topology) -> dict[str, dict[str, str]]:
    """From the bootstrap's namespace, a TCP connect to each other node's listen address and
    to the address its connections come from."""
    boot = topo.bootstrap
    out = {}
    for node in topo.nodes:
        if node is boot:
            continue
        row = {"listen_address": netns.tcp_connect(boot.namespace, node.address, topology.PORT)}
        if node.public_address != node.address:
            row["public_address"] = netns.tcp_connect(boot.namespace, node.public_address, topology.PORT)
        out[node.name] = row
    return out


_ECHO = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(); print("ready", flush=True)
while True:
    c, peer = s.accept(); c.sendall(f"{peer[0]}:{peer[1]}".encode()); c.close()
"""
_ASK = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", int(sys.argv[3]))); s.settimeout(5); s.connect((sys.argv[1], int(sys.argv[2])))
print(s.recv(100).decode())
"""


def mapping(topo: Topology) -> dict[str, dict[str, Any]]:
    """For each non-public node: the address and port the bootstrap sees for a connection
    from local port 40000."""
    boot = topo.bootstrap
    echo = subprocess.Popen(netns.in_ns(boot.namespace) + [sys.executable, "-c", _ECHO, boot.address,
                                                             str(ECHO_PORT)],
                            stdout=subprocess.PIPE, text=True)
    out: dict[str, dict[str, Any]] = {}
    try:
        assert echo.stdout is not None
        echo.stdout.readline()  # "ready"
        for node in topo.nodes:
            if node.kind == "public":
                continue
            seen = netns.sh(netns.in_ns(node.namespace) + [sys.executable, "-c", _ASK, boot.address,
                                                           str(ECHO_PORT), str(MAPPED_FROM)]).strip()
            host, _, port = seen.rpartition(":")
            out[node.name] = {"seen_as": seen, "port_preserved": int(port) == MAPPED_FROM}
    finally:
        echo.kill()
        echo.wait()
    return out


# ----------------------------------------------------------------------------- put/get, job


def put_get(lab: Lab, src: str, dst: str, size: int, k: int, n: int, seed: int,
            limit: float) -> dict[str, Any]:
    path = lab.root / "put.bin"
    path.write_bytes(random.Random(seed).randbytes(size))
    out: dict[str, Any] = {"from": src, "to": dst, "bytes": size, "k": k, "n": n}
    start = time.monotonic()
    try:
        put = cli(lab, src, "put", str(path), "--k", str(k), "--n", str(n), timeout=limit)
    except subprocess.TimeoutExpired:
        return {**out, "put": f"no answer in {limit:g} s", "get": "not tried", "log": log_tail(lab, src)}
    out["put_s"] = round(time.monotonic() - start, 2)
    if put.returncode != 0:
        return {**out, "put": failure(put), "get": "not tried", "log": log_tail(lab, src)}
    file_id = put.stdout.strip().splitlines()[-1]
    out.update(put="ok", file_id=file_id)
    stat = cli(lab, src, "stat", file_id, "--json", timeout=60)
    if stat.returncode == 0:
        segments = json.loads(stat.stdout).get("segment_health", ())
        holders = {h for seg in segments for h in seg.get("holders", ()) if isinstance(h, str)}
        names = {lab.peer_id(name): name for name in lab.nodes}
        out["holders"] = sorted(names.get(h, h) for h in holders)
    got = lab.root / "got.bin"
    start = time.monotonic()
    try:
        get = cli(lab, dst, "get", file_id, "-o", str(got), timeout=limit)
    except subprocess.TimeoutExpired:
        return {**out, "get": f"no answer in {limit:g} s", "log": log_tail(lab, dst)}
    out["get_s"] = round(time.monotonic() - start, 2)
    if get.returncode != 0:
        return {**out, "get": failure(get), "log": log_tail(lab, dst)}
    same = hashlib.sha256(got.read_bytes()).digest() == hashlib.sha256(path.read_bytes()).digest()
    return {**out, "get": "ok", "identical": same}


def log_tail(lab: Lab, name: str, lines: int = 6) -> list[str]:
    """The node's last logged events (not its start-up lines, which carry the admin token)."""
    logged = [line for line in lab.nodes[name].output if any(f" {level} " in line for level in LEVELS)]
    return [line[-300:] for line in logged[-lines:]]


def job(lab: Lab, src: str, dst: str, wait_s: float) -> dict[str, Any]:
    demo = lab.root / "demo"
    out: dict[str, Any] = {"submitted_on": src, "only_runner": dst}
    made = subprocess.run([sys.executable, str(SCRIPTS / "make_demo_job.py"), str(demo)],
                          capture_output=True, text=True, timeout=300)
    if made.returncode != 0:
        return {**out, "result": f"could not make the demo job: {failure(made)}"}
    submit = cli(lab, src, "job", "submit", str(demo / "model.pt2"),
                 "--weights", str(demo / "model.safetensors"), "--input", str(demo / "inputs.safetensors"),
                 "--gpu-mem", "8GiB", "--timeout", "60s", "--retries", "0", "--json", timeout=120)
    if submit.returncode != 0:
        return {**out, "result": f"submit failed: {failure(submit)}"}
    job_id = json.loads(submit.stdout)["job_id"]
    out["job_id"] = job_id
    deadline = time.monotonic() + wait_s
    data: dict[str, Any] = {}
    while time.monotonic() < deadline:
        data = lab.api(src, "GET", f"/api/jobs/{job_id}/wait", params={"timeout": "10"}, timeout=30).json()
        if data.get("phase") in ("done", "cancelled"):
            break
    names = {lab.peer_id(name): name for name in lab.nodes}
    out["state"] = data.get("state")
    attempts = [f"{names.get(a.get('peer'), a.get('peer'))}: {a.get('outcome') or 'current'}"
                for a in data.get("attempts", ())]
    out["attempts"] = {what: attempts.count(what) for what in dict.fromkeys(attempts)}  # "peer: outcome" -> n
    result = data.get("result") or {}
    if data.get("phase") != "done":
        lab.api(src, "POST", f"/api/admin/jobs/{job_id}/cancel")
        return {**out, "result": f"not done after {wait_s:g} s (cancelled)"}
    if result.get("status") != "ok":
        return {**out, "result": f"{result.get('status')}: {result.get('error')}"}
    reply = lab.api(src, "GET", f"/api/admin/jobs/{job_id}/output", timeout=60)
    if reply.status_code != 200:
        return {**out, "result": f"output: HTTP {reply.status_code} {reply.text[:200]}"}
    got = lab.root / "job-output.safetensors"
    got.write_bytes(reply.content)
    expected = demo / "expected.safetensors"
    same = subprocess.run([sys.executable, __file__, "--same-output", str(got), str(expected)],
                          capture_output=True, text=True, timeout=120)
    return {**out, "result": "ok", "same_output_as_local_run": same.stdout.strip() == "same"}


def same_output(got: str, expected: str) -> None:
    import numpy
    from safetensors.numpy import load_file

    a, b = load_file(got), load_file(expected)
    equal = a.keys() == b.keys() and all(numpy.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)
    print("same" if equal else "different")


# ----------------------------------------------------------------------------- the run


def reachability(lab: Lab, name: str) -> dict[str, Any] | str:
    """What the node concluded of its own reachability (the ``reach`` section of its status)."""
    verdict = lab.status(name).get("reach")
    if not isinstance(verdict, dict):
        return "not reported by this node"
    keep = ("state", "line", "public_addr", "observed_ip", "asked", "answers", "confirmed", "rounds")
    return {k: verdict.get(k) for k in keep}


def percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank ``q``-th percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))]


def timings(values: list[float]) -> dict[str, Any]:
    return {"n": len(values), "p50_s": percentile(values, 50), "p99_s": percentile(values, 99)}


def punch_records(lab: Lab) -> dict[str, dict[str, dict[str, Any]]]:
    """Each node's hole-punch records by peer id (from the ``relay`` part of its status)."""
    out = {}
    for name in lab.nodes:
        try:
            relay = lab.status(name).get("relay") or {}
        except (httpx.HTTPError, OSError, ValueError):
            relay = {}
        out[name] = (relay.get("hole_punch") or {}).get("peers") or {}
    return out


def hole_punch(lab: Lab, topo: Topology, found: list[Pair]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Hole-punch attempts and successes by NAT pair type (pairs in different homes), and
    each pair's seconds from both nodes being up to a direct connection; and the timings
    (p50, p99) of first connection and of direct connection by NAT pair type."""
    records = punch_records(lab)
    ids = {name: lab.peer_id(name) for name in lab.nodes}
    by_type: dict[str, dict[str, Any]] = {}
    first: dict[str, list[float]] = {}
    direct: dict[str, list[float]] = {}
    per_pair = []
    for p in found:
        a, b = topo.node(p.a), topo.node(p.b)
        recs = [r for r in (records[p.a].get(ids[p.b]), records[p.b].get(ids[p.a])) if r]
        attempts = sum(int(r.get("attempts") or 0) for r in recs)
        successes = sum(int(r.get("successes") or 0) for r in recs)
        went_direct = [r["direct_at"] for r in recs if r.get("direct_at")]
        up = max(lab.ready_wall[p.a], lab.ready_wall[p.b])
        to_direct: float | None = None
        if p.how in ("direct-tcp", "lan"):
            to_direct = round(min(went_direct) - up, 1) if went_direct else p.first_connected_s
        if p.first_connected_s is not None:
            first.setdefault(p.nat_pair, []).append(p.first_connected_s)
        if to_direct is not None:
            direct.setdefault(p.nat_pair, []).append(to_direct)
        if a.home is None or b.home is None or a.home == b.home:
            continue
        row = by_type.setdefault(p.nat_pair, {"pairs": 0, "attempts": 0, "successes": 0,
                                               "pairs_tried": 0, "pairs_punched": 0,
                                               "direct_now": 0, "relayed_now": 0})
        row["pairs"] += 1
        row["attempts"] += attempts
        row["successes"] += successes
        row["pairs_tried"] += attempts > 0
        row["pairs_punched"] += successes > 0
        row["direct_now"] += p.how == "direct-tcp"
        row["relayed_now"] += p.how == "relayed"
        per_pair.append({"a": p.a, "b": p.b, "nat_pair": p.nat_pair, "how": p.how, "attempts": attempts,
                         "successes": successes, "relayed_first": bool(recs), "direct_s": to_direct})
    punch = {"built": True, "by_nat_pair": dict(sorted(by_type.items())), "pairs": per_pair,
             "attempts": sum(r["attempts"] for r in by_type.values()),
             "successes": sum(r["successes"] for r in by_type.values())}
    times = {"first_connection": {t: timings(v) for t, v in sorted(first.items())},
             "direct": {t: timings(v) for t, v in sorted(direct.items())},
             "all_first_connection": timings([x for v in first.values() for x in v]),
             "all_direct": timings([x for v in direct.values() for x in v])}
    return punch, times


def relays(lab: Lab) -> dict[str, Any]:
    """What each node says of its relay roles: serving (with its counters) or holding
    reservations (on which relays)."""
    names = {lab.peer_id(name): name for name in lab.nodes}
    out: dict[str, Any] = {}
    for name in lab.nodes:
        try:
            relay = lab.status(name).get("relay") or {}
        except (httpx.HTTPError, OSError, ValueError):
            continue
        row: dict[str, Any] = {"private": relay.get("private"), "serving": relay.get("serving")}
        server = relay.get("server")
        if server:
            row["server"] = {k: server.get(k) for k in ("reservations", "circuits", "circuits_opened",
                                                         "bytes_relayed", "reservations_refused")}
        held = (relay.get("client") or {}).get("relays") or []
        if held:
            row["relays"] = [names.get(r.get("relay"), r.get("relay")) for r in held]
        out[name] = row
    return out


def run(args: argparse.Namespace, topo: Topology) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="natlab-"))  # short: the API socket's path must fit
    pair = pick_pair(topo)
    env: dict[str, dict[str, str]] = {n.name: {"POOLAI_LOG_LEVEL": args.log_level} for n in topo.nodes}
    for n in topo.nodes:
        if n.kind == "firewall":  # a routable address: until its first reachability check says
            env[n.name]["POOLAI_RELAY_CLIENT"] = "on"  # private, it would take itself for public
    if pair:
        inventory = root / "gpu.json"
        inventory.write_text(json.dumps(GPU))
        env[pair[1].name] |= {"POOLAI_INVENTORY_FILE": str(inventory), "POOLAI_JOB_SLOTS": "1"}
    out: dict[str, Any] = {"lab": {
        "prefix": topo.prefix, "seed": args.seed, "settle_s": args.settle, "routers": topo.routers,
        "nodes": {n.name: {"kind": n.kind, "namespace": n.namespace, "address": n.address,
                           "public_address": n.public_address} for n in topo.nodes}}}
    try:
        with open_lab(topo, root, env, keep=args.keep) as lab:
            for name, node in lab.nodes.items():
                out["lab"]["nodes"][name]["peer_id"] = node.peer_id
            first = lab.watch(args.settle)
            found = classify_all(topo, lab.snapshot(), first)
            out["pairs"] = [p.to_json() for p in found]
            out["summary"] = summarise(found)
            out["reachability"] = {name: reachability(lab, name) for name in lab.nodes}
            out["inbound"] = inbound(topo)
            out["mapping"] = mapping(topo)
            out["hole_punch"], out["timings"] = hole_punch(lab, topo, found)
            out["relays"] = relays(lab)
            if pair is None:
                out["put_get"] = out["job"] = "needs two non-public nodes in different homes"
            else:
                src, dst = pair[0].name, pair[1].name
                out["put_get"] = ("skipped" if args.no_put else
                                  put_get(lab, src, dst, args.put_mib * MiB, args.k, args.n, args.seed,
                                          args.transfer_timeout))
                out["job"] = "skipped" if args.no_job else job(lab, src, dst, args.job_wait)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"kept the nodes running, data under {root}", file=sys.stderr)
    return out


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help=f"home kinds, comma-separated (default: {','.join(topology.HOME_KINDS)})")
    ap.add_argument("--public", type=int, default=2,
                    help="public nodes; the first is the bootstrap (default 2)")
    wait = ap.add_mutually_exclusive_group()
    wait.add_argument("--settle", type=float, default=45.0, help="seconds to let the mesh form (default 45)")
    wait.add_argument("--minutes", type=float, help="the same, in minutes")
    ap.add_argument("--routers", choices=topology.ROUTERS, default="drop",
                    help="what home routers do with an unexpected connection to their own address: "
                         "drop it (default) or reject it with a reset")
    ap.add_argument("--seed", type=int, default=1, help="the put file's bytes (default 1)")
    ap.add_argument("--keep", action="store_true",
                    help="leave namespaces and nodes up for debugging (the next run removes them)")
    ap.add_argument("--put-mib", type=int, default=4, help="size of the put/get file in MiB (default 4)")
    ap.add_argument("--k", type=int, default=2, help="put: shares needed (default 2)")
    ap.add_argument("--n", type=int, default=4, help="put: shares stored (default 4)")
    ap.add_argument("--job-wait", type=float, default=90.0, help="seconds to wait for the job (default 90)")
    ap.add_argument("--transfer-timeout", type=float, default=120.0,
                    help="seconds the put and the get may each take (default 120)")
    ap.add_argument("--log-level", default="warning", help="the nodes' log level (default warning)")
    ap.add_argument("--no-put", action="store_true", help="skip the put/get")
    ap.add_argument("--no-job", action="store_true", help="skip the job")
    ap.add_argument("--same-output", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.same_output:
        return same_output(*args.same_output)
    if args.minutes is not None:
        args.settle = args.minutes * 60
    why = netns.missing_tools()
    if why:
        raise SystemExit(f"nat_lab: {why}")
    # SIGTERM unwinds like Ctrl-C, so the namespaces go either way.
    signal.signal(signal.SIGTERM, _interrupt)
    stale = netns.remove_stale()
    if stale:
        print(f"removed {len(stale)} namespaces left by an earlier lab", file=sys.stderr)
    try:
        topo = topology.build(netns.new_prefix(), args.only.split(",") if args.only else topology.HOME_KINDS,
                              public=args.public, routers=args.routers)
    except ValueError as exc:
        raise SystemExit(f"nat_lab: {exc}") from None
    try:
        out = run(args, topo)
    except KeyboardInterrupt:
        raise SystemExit("nat_lab: interrupted; the lab's namespaces are removed") from None
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
