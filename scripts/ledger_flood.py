"""Measure a node's ledger under a receipt flood: size on disk, RSS, restart time.

    python scripts/ledger_flood.py [--seconds 60] [--sync-interval 2] [--victim-python PY]

Starts a hostile node (``tests/evil_node.py`` with ``POOLAI_EVIL_FLOOD=1``: every ledger
page it serves is 256 fresh, valid receipts between itself and throwaway keys, and between
throwaway keys alone) and a victim node (``poolai node run`` under ``--victim-python``, so
another checkout's code can be measured the same way) that syncs with it every
``--sync-interval`` seconds. After ``--seconds`` it stops the victim, starts it again alone
and prints one JSON object: receipts held, ``data.mdb`` bytes, the victim's RSS before and
after the flood and after the restart, and how long the restart took to be up (its
ledger loaded and checked).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from poolai.node.launcher import NodeProcess, stop_all

ROOT = Path(__file__).resolve().parent.parent


def rss_mib(node: NodeProcess) -> float:
    for line in Path(f"/proc/{node.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--sync-interval", type=float, default=2.0)
    parser.add_argument("--victim-python", default=sys.executable)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ledger-flood-") as tmp:
        root = Path(tmp)
        flood = {"POOLAI_EVIL_FLOOD": "1", "POOLAI_CREDITS_SYNC_INTERVAL": "3600"}
        evil = NodeProcess(root / "evil", env=flood,
                           program=[sys.executable, str(ROOT / "tests" / "evil_node.py")])
        env = {"POOLAI_CREDITS_SYNC_INTERVAL": str(args.sync_interval), "POOLAI_LOG_LEVEL": "info"}
        program = [args.victim_python, "-m", "poolai.node.cli.main"]
        again = NodeProcess(root / "victim", env=env, program=program)  # alone: it measures the load
        victim = None
        try:
            evil.start()
            victim = NodeProcess(root / "victim", "--bootstrap", evil.addr, env=env, program=program).start()
            rss_before = rss_mib(victim)
            time.sleep(args.seconds)  # the flood runs for this long
            rss_after = rss_mib(victim)
            held = victim.get("/api/credits", timeout=30)["ledger"]
            victim.stop(timeout=60)
            disk = (root / "victim" / "ledger" / "data.mdb").stat().st_size
            started = time.monotonic()
            again.start(timeout=300)
            ready_s = time.monotonic() - started
            rss_restarted = rss_mib(again)
            loaded = [line for line in again.output if "ledger: " in line]
        finally:
            stop_all([n for n in (victim, again, evil) if n is not None])
    print(json.dumps({
        "seconds": args.seconds, "sync_interval_s": args.sync_interval,
        "receipts_held": held["held"], "others": held.get("others"), "ledger_disk_bytes": disk,
        "rss_mib": {"before": round(rss_before, 1), "after": round(rss_after, 1),
                    "restarted": round(rss_restarted, 1)},
        "restart_ready_s": round(ready_s, 2), "restart_log": loaded[-1:],
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
