"""``poolai peers``: the capacity table of the running local node, or who can run a job.

    poolai peers                                   every live advert
    poolai peers --capable --gpu 1 --gpu-mem 8GiB  peers that can run it, best first
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any
from urllib.parse import urlencode

from poolai.node import config as config_mod
from poolai.node.capacity.inventory import format_size
from poolai.node.capacity.rules import Requirements
from poolai.node.cli.errors import CliError
from poolai.node.cli.local_api import fetch_local


def register(sub: Any) -> None:
    """Add the ``peers`` command to the ``poolai`` subparsers."""
    peers = sub.add_parser("peers", help="list peers' capacity, or those able to run a job")
    peers.add_argument("--capable", action="store_true",
                       help="only peers that meet the requirements below, best first")
    peers.add_argument("--gpu", type=int, help="GPUs needed on one peer (0 = CPU job)")
    peers.add_argument("--gpu-mem", help="free memory needed on each GPU, e.g. 8GiB")
    peers.add_argument("--cc", help="minimum compute capability, e.g. 8.0")
    peers.add_argument("--cpu", type=int, help="CPU cores needed")
    peers.add_argument("--ram", help="free RAM needed, e.g. 16GiB")
    peers.add_argument("--slots", type=int, help="job slots needed (default 1)")
    peers.add_argument("--no-simulated", action="store_true", help="leave out simulated peers")
    peers.add_argument("--limit", type=int, default=20, help="at most this many (with --capable)")
    peers.add_argument("--json", action="store_true", help="print the raw JSON")
    peers.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the node")
    peers.set_defaults(func=run)


def query_of(args: argparse.Namespace) -> dict[str, str]:
    """The /api/capacity/capable query parameters the flags ask for."""
    pairs = {"gpu": args.gpu, "gpu_mem": args.gpu_mem, "cc": args.cc, "cpu": args.cpu,
             "ram": args.ram, "slots": args.slots, "limit": args.limit}
    query = {k: str(v) for k, v in pairs.items() if v is not None}
    if args.no_simulated:
        query["simulated"] = "0"
    return query


def run(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.data_dir, {})
    if args.capable:
        query = query_of(args)
        try:  # the node checks too; checking here gives the user the reason in one line
            Requirements.from_query({k: v for k, v in query.items() if k != "limit"})
        except ValueError as exc:
            raise CliError(f"invalid requirement: {exc}") from None
        data = fetch_local(cfg.data_dir, "/api/capacity/capable?" + urlencode(query), args.timeout)
    else:
        if any(v is not None for v in (args.gpu, args.gpu_mem, args.cc, args.cpu, args.ram, args.slots)):
            raise CliError("requirement flags (--gpu, --gpu-mem, ...) need --capable")
        data = fetch_local(cfg.data_dir, "/api/capacity", args.timeout)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    if args.capable:
        _print_candidates(data)
    else:
        _print_table(data)
    return 0


def _devices(gpus: list[dict[str, Any]]) -> str:
    if not gpus:
        return "CPU only"
    names: dict[str, int] = {}
    for g in gpus:
        label = f"{g['name']} ({format_size(g['memory_free'])} free, cc {g['compute_capability']})"
        names[label] = names.get(label, 0) + 1
    return ", ".join(f"{n}x {label}" for label, n in names.items())


def _print_table(data: dict[str, Any]) -> None:
    entries = data["entries"]
    print(f"{len(entries)} peer(s) advertising on {data['topic']}"
          f"{' (this node is simulated)' if data['simulated'] else ''}")
    now = time.time()
    for e in entries:
        me = " (this node)" if e["peer_id"] == data["self"] else ""
        sim = " [simulated]" if e["simulated"] else ""
        rtt = "?" if e["rtt_ms"] is None else f"{e['rtt_ms']:.1f} ms"
        print(f"{e['peer_id']}{me}{sim}")
        print(f"    {_devices(e['gpus'])}; {e['cpu_cores']} cores, {format_size(e['ram_free'])} RAM free")
        print(f"    slots {e['free_slots']}/{e['job_slots']} free, queue {e['queue_length']}, "
              f"rtt {rtt}, advert {max(0.0, now - e['received_at']):.1f} s old")


def _print_candidates(data: dict[str, Any]) -> None:
    found = data["candidates"]
    if not found:
        print("no peer can run this job right now")
        return
    print(f"{'peer':<54} {'cost ms':>8} {'rtt ms':>7} {'load':>5}  gpus")
    for c in found:
        rtt = "?" if c["rtt_ms"] is None else f"{c['rtt_ms']:.1f}"
        gpus = ",".join(str(i) for i in c["gpus"]) or "-"
        sim = " [simulated]" if c["simulated"] else ""
        print(f"{c['peer_id']:<54} {c['cost_ms']:>8.1f} {rtt:>7} {c['load']:>5.2f}  {gpus}{sim}")
