"""A peer that churns connections to a node, for tests only:
``python tests/churn_peer.py /ip4/../tcp/../p2p/<id> [--cycles N] [--parallel P] ...``.

Each cycle is one libp2p host of a fresh identity (or, with ``--same-identity``, of one
key for all) that connects to the target and disconnects explicitly at once; ``--parallel``
hosts cycle side by side in this one process. ``--hold K`` first connects K more fresh
identities and keeps them connected, idle, until the churn ends (strangers a node must
shed past its inbound cap). ``--source-ip`` makes every connection leave from that
loopback address (127.0.0.0/8 is all local on Linux), so one test machine can be two
remote IPs. Prints one JSON object: attempts, connected, refused, held, seconds.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time

import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from poolai.mesh.errors import MeshError
from poolai.mesh.host import open_host, split_p2p_addr

CONNECT_TIMEOUT = 20.0


async def churn(args: argparse.Namespace) -> dict[str, float]:
    peer_id, addr = split_p2p_addr(args.target)
    key = create_new_key_pair() if args.same_identity else None
    counts = {"attempts": 0, "connected": 0, "refused": 0, "held": 0}
    start = time.monotonic()
    cycles = iter(range(args.cycles))

    async def once() -> bool:
        counts["attempts"] += 1
        async with open_host(key or create_new_key_pair(), []) as host:
            try:
                with trio.fail_after(CONNECT_TIMEOUT):
                    await host.connect(peer_id, [addr])
            except (MeshError, trio.TooSlowError):
                counts["refused"] += 1
                return False
            counts["connected"] += 1
            await host.disconnect(peer_id)
            return True

    async def worker() -> None:
        for _ in cycles:
            if time.monotonic() - start > args.seconds:
                return
            await once()

    async def hold(ready: trio.Event, done: trio.Event) -> None:
        async with open_host(create_new_key_pair(), []) as host:
            try:
                with trio.fail_after(CONNECT_TIMEOUT):
                    await host.connect(peer_id, [addr])
                counts["held"] += 1
            except (MeshError, trio.TooSlowError):
                pass
            ready.set()
            await done.wait()

    done = trio.Event()
    async with trio.open_nursery() as holders:
        for _ in range(args.hold):
            ready = trio.Event()
            holders.start_soon(hold, ready, done)
            await ready.wait()
        async with trio.open_nursery() as nursery:
            for _ in range(args.parallel):
                nursery.start_soon(worker)
        done.set()
    return {**counts, "seconds": round(time.monotonic() - start, 3)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("target")
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--parallel", type=int, default=20)
    parser.add_argument("--hold", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=600.0, help="stop starting cycles after this")
    parser.add_argument("--same-identity", action="store_true")
    parser.add_argument("--source-ip", default="")
    args = parser.parse_args()
    if args.source_ip:
        # py-libp2p's TCP transport dials with trio.open_tcp_stream(host, port).
        trio.open_tcp_stream = functools.partial(trio.open_tcp_stream, local_address=args.source_ip)
    print(json.dumps(trio.run(churn, args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
