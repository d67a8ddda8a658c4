"""Two minutes of chaos on six node processes (scripts/soak.py): every invariant holds.

The soak crashes, hangs and restarts nodes, churns connections from a hostile peer and
fills one holder's disk while files are put and read back and jobs run; its JSON says
whether any byte came back wrong, any acknowledged file was lost, any job ended twice or
never, the ledgers disagree, a node's memory or descriptors ran away or its API hung.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.live, pytest.mark.timeout(900)]
SOAK = Path(__file__).resolve().parent.parent / "scripts" / "soak.py"


def test_two_minutes_of_chaos_break_no_invariant(tmp_path):
    done = subprocess.run([sys.executable, str(SOAK), "--nodes", "6", "--minutes", "2", "--seed", "7",
                           "--root", str(tmp_path / "soak")], capture_output=True, text=True, timeout=840)
    assert done.stdout.strip(), done.stderr[-4000:]
    report = json.loads(done.stdout)
    failed = {name: v for name, v in report["invariants"].items() if not v["ok"]}
    assert not failed, json.dumps(failed, indent=1) + "\n" + done.stderr[-2000:]
    assert report["ok"] and done.returncode == 0

    ops = report["operations"]
    assert ops["put"] > 0 and ops["get"] > 0 and ops["job"] > 0 and ops["capacity"] > 0
    assert ops["disk_fill"] == 1 and ops.get("kill", 0) + ops.get("pause", 0) + ops.get("restart", 0) > 0
    assert report["invariants"]["no_wrong_bytes"]["bytes_compared_in_gets"] > 0
    assert report["invariants"]["acknowledged_puts_readable"]["acknowledged"] > 0
    assert report["invariants"]["jobs_one_result"]["submitted"] > 0
    assert report["invariants"]["no_node_stuck"]["probes"] > 0
    assert report["churn"]["attempts"] > 0
