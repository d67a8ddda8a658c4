#!/usr/bin/env python3
"""Start N PoolAI nodes on 127.0.0.1 that join each other; Ctrl-C stops them all.

    python scripts/devnet.py -n 4 [--base DIR] [--keep] [-- extra node flags]

Node 0 starts alone; every other node bootstraps from node 0. Each node gets its
own data directory under --base (a fresh temporary directory by default) and
prints its peer id, listen address and status page URL.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def poolai() -> list[str]:
    exe = Path(sys.executable).with_name("poolai")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "poolai.node.cli.main"]


class DevNode:
    def __init__(self, index: int, data_dir: Path, extra: list[str]) -> None:
        self.index = index
        self.data_dir = data_dir
        self.extra = extra
        self.info: dict[str, str] = {}
        self.ready = threading.Event()
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        cmd = poolai() + ["--data-dir", str(self.data_dir), "node", "run",
                          "--listen", "/ip4/127.0.0.1/tcp/0", "--api-port", "0", *self.extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc and self.proc.stdout
        for line in self.proc.stdout:
            key, _, value = line.strip().partition(": ")
            if key in ("peer id", "listening", "api") and key not in self.info:
                self.info[key] = value
            if len(self.info) == 3:
                self.ready.set()

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


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
    nodes: list[DevNode] = []
    try:
        for i in range(args.n):
            extra = list(args.extra)
            if nodes:
                extra += ["--bootstrap", nodes[0].info["listening"]]
            node = DevNode(i, base / f"node{i}", extra)
            node.start()
            if not node.ready.wait(60):
                print(f"node {i} did not start; see `poolai --data-dir {node.data_dir} node run`",
                      file=sys.stderr)
                return 1
            nodes.append(node)
            print(f"node{i}  {node.info['peer id']}\n       {node.info['listening']}\n"
                  f"       status: {node.info['api']}/  data: {node.data_dir}", flush=True)
        print(f"{len(nodes)} nodes up; Ctrl-C stops them all.", flush=True)
        while all(n.proc and n.proc.poll() is None for n in nodes):
            time.sleep(0.5)
        print("a node exited; stopping the rest", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for node in nodes:
            node.stop()
        if temporary and not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
