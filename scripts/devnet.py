#!/usr/bin/env python3
"""Start N PoolAI nodes on 127.0.0.1 that join each other; Ctrl-C stops them all.

    python scripts/devnet.py -n 4 [--base DIR] [--keep] [-- extra node flags]

Node 0 starts alone; every other node bootstraps from node 0. Each node gets its
own data directory under --base (a fresh temporary directory by default) and
prints its peer id, listen address and status page URL (admin token included, as
``poolai node url`` prints it); its output goes to
``nodeN.log`` beside its data directory.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from poolai.node.launcher import NodeProcess, NodeStartError, stop_all


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    # Explicit handlers: a shell may start us with SIGINT ignored, and SIGTERM should stop us too.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=3, help="number of nodes (default 3)")
    parser.add_argument("--base", type=Path, help="directory for the nodes' data directories")
    parser.add_argument("--keep", action="store_true", help="keep a temporary --base on exit")
    parser.add_argument("extra", nargs="*", help="extra flags for every `poolai node run`")
    args = parser.parse_args()

    temporary = args.base is None
    base = args.base or Path(tempfile.mkdtemp(prefix="poolai-devnet-"))
    nodes: list[NodeProcess] = []
    try:
        for i in range(args.n):
            extra = list(args.extra)
            if nodes:
                extra += ["--bootstrap", nodes[0].addr]
            node = NodeProcess(base / f"node{i}", *extra)
            nodes.append(node)
            try:
                node.start(timeout=60)
            except NodeStartError as exc:
                print(f"node {i} did not start: {exc}", file=sys.stderr)
                return 1
            print(f"node{i}  {node.peer_id}\n       {node.addr}\n"
                  f"       status page: {node.status_url}\n"
                  f"       data: {node.data_dir}  log: {node.log_file}", flush=True)
        print(f"{len(nodes)} nodes up; Ctrl-C stops them all.", flush=True)
        while all(n.alive for n in nodes):
            time.sleep(0.5)
        print("a node exited; stopping the rest", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop_all(nodes)
        if temporary and not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
