#!/usr/bin/env python3
"""Burst speed-up where uplinks, not CPUs, are the limit; prints one JSON object (needs root).

scripts/bench_storage.py runs every node on one machine's loopback, where the
CPU is the only limit and one stream is as fast as anything. Volunteers'
uplinks are slower than a reader's downlink, which is what striping is for.
This benchmark gives each node a network namespace of its own on one bridge
(10.77.0.0/24, inside a hub namespace: nothing reaches any other network)
and caps every node's uplink with a token bucket (``tc tbf``, ``--mbit``).
In the same run:

* one libp2p stream from a capped node to the getting node (the baseline);
* a file put through node 0's local API, then got twice through node 1's
  (the faster get counts), every byte compared with the source;
* ``burst_speedup`` = get / single stream: how many capped uplinks the get
  keeps busy at once.

    sudo python scripts/bench_storage_netns.py [--size 64] [--nodes 10] [--mbit 100]

Node APIs bind 127.0.0.1 inside their namespaces, so the HTTP client runs in
the getting node's namespace (``ip netns exec``); so does the stream sink.
The namespaces are removed at the end, also after an error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_storage as local  # noqa: E402  (the loopback benchmark's helpers)

from poolai.node.launcher import NodeProcess, poolai_command, stop_all  # noqa: E402

MiB = 1 << 20
PREFIX = "pa-bench"
HUB = f"{PREFIX}-hub"
SUBNET = "10.77.0"
PORT = 4001


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True)


def in_ns(index: int) -> list[str]:
    return ["ip", "netns", "exec", f"{PREFIX}-{index}"]


def address(index: int) -> str:
    return f"{SUBNET}.{index + 2}"


# ----------------------------------------------------------------------------- namespaces


def make_network(count: int, mbit: int) -> None:
    """A hub namespace with a bridge; ``count`` node namespaces on it, uplinks capped."""
    sh("ip", "netns", "add", HUB)
    sh("ip", "-n", HUB, "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", HUB, "link", "set", "br0", "up")
    for i in range(count):
        ns, hub_end = f"{PREFIX}-{i}", f"v{i}"
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", hub_end,
           "netns", HUB)
        sh("ip", "-n", HUB, "link", "set", hub_end, "master", "br0", "up")
        sh("ip", "-n", ns, "addr", "add", f"{address(i)}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        # The uplink: what this node can send. Its downlink stays free, as a reader's would.
        sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "eth0", "root", "tbf",
           "rate", f"{mbit}mbit", "burst", "64kb", "latency", "100ms")


def remove_network(count: int) -> None:
    for name in [f"{PREFIX}-{i}" for i in range(count)] + [HUB]:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


# ----------------------------------------------------------------------------- helpers run inside a namespace


def http_json(url: str) -> None:
    host, _, rest = url.removeprefix("http://").partition(":")
    port, _, path = rest.partition("/")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", "/" + path)
    print(conn.getresponse().read().decode())


def http_get(url: str, src: str) -> None:
    """GET ``url`` (a node's local API), compare with ``src``; print MB/s."""
    host, _, rest = url.removeprefix("http://").partition(":")
    port, _, path = rest.partition("/")
    conn = http.client.HTTPConnection(host, int(port), timeout=600)
    start = time.perf_counter()
    conn.request("GET", "/" + path)
    reply = conn.getresponse()
    buf, received, same = bytearray(MiB), 0, reply.status == 200
    with open(src, "rb") as expected:
        while got := reply.readinto(buf):
            same = same and expected.read(got) == (buf if got == MiB else buf[:got])
            received += got
    seconds = time.perf_counter() - start
    whole = same and received == os.path.getsize(src)
    print(json.dumps({"MBps": local.mbps(received, seconds), "ok": whole}))


def stream_sink(addr: str, size: int) -> None:
    """Read ``size`` bytes from a stream source; print MB/s."""
    mbps, _, _ = local.bench_streams([addr], size)
    print(json.dumps({"MBps": mbps}))


def stream_source(listen: str, size: int) -> None:
    import trio
    from libp2p.crypto.ed25519 import create_new_key_pair

    from poolai.mesh.host import open_host

    payload = random.Random(1).randbytes(256 << 10)

    async def main() -> None:
        async with open_host(create_new_key_pair(), [listen]) as host:

            async def serve(stream) -> None:
                sent = 0
                while sent < size:
                    await stream.send_all(payload[: min(len(payload), size - sent)])
                    sent += min(len(payload), size - sent)
                await stream.aclose()

            host.set_handler(local.BENCH_PROTOCOL, serve)
            print(f"addr: {host.addrs()[0]}", flush=True)
            await trio.sleep_forever()

    trio.run(main)


def helper(index: int, *args: str) -> str:
    """Run this script's helper mode in node ``index``'s namespace; its stdout."""
    out = subprocess.run(in_ns(index) + [sys.executable, __file__, *args], check=True,
                         capture_output=True, text=True, timeout=900)
    return out.stdout


# ----------------------------------------------------------------------------- the run


def sees(node: NodeProcess) -> set[str]:
    """The peer ids ``node`` lists, asked in the getting node's namespace (the only one asked)."""
    answer = json.loads(helper(1, "--http-json", node.api + "/api/peers"))
    return {q["peer_id"] for q in answer["peers"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64, help="file size in MiB (default 64)")
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--mbit", type=int, default=100, help="every node's uplink, Mbit/s (default 100)")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--segment-mib", type=int, help="segment size in MiB (default: the node's)")
    ap.add_argument("--http-json", help=argparse.SUPPRESS)
    ap.add_argument("--http-get", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--stream-sink", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--stream-source", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.http_json:
        return http_json(args.http_json)
    if args.http_get:
        return http_get(*args.http_get)
    if args.stream_sink:
        return stream_sink(args.stream_sink[0], int(args.stream_sink[1]))
    if args.stream_source:
        return stream_source(args.stream_source[0], int(args.stream_source[1]))
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("tc"):
        raise SystemExit("needs root, ip and tc (network namespaces and traffic control)")

    size = args.size * MiB
    out: dict = {"size_MiB": args.size, "segment_MiB": args.segment_mib or "default",
                 "nodes": args.nodes, "uplink_mbit": args.mbit,
                 "uplink_MBps": round(args.mbit / 8, 1), "k": args.k, "n": args.n}
    base = Path(tempfile.mkdtemp(prefix="poolai-netns-"))
    env = {"POOLAI_STORAGE_QUOTA": f"{max(1, 4 * size * args.n // args.k // args.nodes // MiB + 64)}MiB",
           "POOLAI_STORAGE_INTERVAL": "86400", "POOLAI_LOG_LEVEL": "warning"}
    nodes: list[NodeProcess] = []
    source: local.StreamSource | None = None
    remove_network(args.nodes)  # leftovers of an interrupted run
    try:
        make_network(args.nodes, args.mbit)
        source = local.StreamSource(in_ns(2) + [sys.executable, __file__, "--stream-source",
                                        f"/ip4/{address(2)}/tcp/{PORT + 1}", str(size)])
        single = json.loads(helper(1, "--stream-sink", source.wait_ready().addr, str(size)))
        out["stream_1_MBps"] = single["MBps"]
        source.stop()
        source = None

        local.start_nodes(base, args.nodes, env, nodes, wrap=lambda i, cmd: in_ns(i) + cmd,
                          listen=lambda i: f"/ip4/{address(i)}/tcp/{PORT}", sees=sees, watch=[1])
        src = base / "src.bin"
        rng = random.Random(2)
        with src.open("wb") as handle:  # in pieces: randbytes takes at most 2**31 bits at once
            for at in range(0, size, 8 << 20):
                handle.write(rng.randbytes(min(8 << 20, size - at)))
        put = subprocess.run(in_ns(0) + poolai_command() + [
            "--data-dir", str(base / "node0"), "put", str(src), "--k", str(args.k), "--n", str(args.n),
            *(["--segment-mib", str(args.segment_mib)] if args.segment_mib else [])],
            check=True, capture_output=True, text=True, timeout=1800)
        file_id = put.stdout.strip().splitlines()[-1]
        url = f"{nodes[1].api}/api/files/{file_id}"
        gets = [json.loads(helper(1, "--http-get", url, str(src))) for _ in range(2)]
        if not all(g["ok"] for g in gets):
            raise SystemExit("a get returned bytes that do not match")
        out["get_api_MBps_runs"] = [g["MBps"] for g in gets]
        out["get_api_MBps"] = max(out["get_api_MBps_runs"])
        out["burst_speedup"] = round(out["get_api_MBps"] / out["stream_1_MBps"], 2)
        out["get_vs_k_uplinks"] = round(out["get_api_MBps"] / (args.k * args.mbit / 8), 2)
    finally:
        if source is not None:
            source.stop()
        stop_all(nodes)
        remove_network(args.nodes)
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
