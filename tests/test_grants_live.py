"""Quota squatting against real node processes (issue 19, finding 3).

A holder node (64 MiB quota: it grants a newcomer 4 MiB) and an honest node on
127.0.0.1. A squatter process (tests/squatter.py, the real share protocol over
libp2p) stores junk shares on the holder with a lease of 2^64 - 1 until refused:
it is stopped at its grant with a ``refused``/``grant`` error, its leases are
capped at 31 days, the holder's quota is far from exhausted, the accounts survive a
restart (the same squatter is refused at once), and the honest node still puts a
file whose shares the holder keeps.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from poolai.node.launcher import NodeProcess, poolai_command, stop_all, wait_until
from poolai.storage.store import ShareStore

pytestmark = [pytest.mark.live, pytest.mark.timeout(300)]
MiB = 1 << 20
QUOTA = 64 * MiB
SQUATTER = Path(__file__).with_name("squatter.py")
ENV = {"POOLAI_STORAGE_INTERVAL": "86400", "POOLAI_STORAGE_QUOTA": "64MiB", "POOLAI_OVERLAY_SCALE": "10",
       "POOLAI_CAPACITY_HEARTBEAT": "60", "POOLAI_CREDITS_SYNC_INTERVAL": "3600",
       "POOLAI_LOG_LEVEL": os.environ.get("POOLAI_TEST_LOG_LEVEL", "warning")}


def squat(holder: NodeProcess, junk: int) -> dict:
    result = subprocess.run([sys.executable, str(SQUATTER), holder.addr, "--seed", "7", "--junk", str(junk),
                             "--share-kib", "256", "--max", "1000"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def row(holder: NodeProcess, peer_id: str) -> dict | None:
    top = holder.get("/api/storage")["grants"]["top"]
    return next((r for r in top if r["peer"] == peer_id), None)


def test_a_squatter_is_stopped_at_its_grant_and_honest_peers_still_store(tmp_path):
    holder = NodeProcess(tmp_path / "holder", env=ENV).start(timeout=60)
    nodes = [holder]
    try:
        honest = NodeProcess(tmp_path / "honest", "--bootstrap", holder.addr, env=ENV).start(timeout=60)
        nodes.append(honest)
        wait_until(lambda: honest.peer_id in holder.connected(), 30, "the honest node connected")

        started = int(time.time())
        attack = squat(holder, junk=1)
        grant = QUOTA // 16
        assert attack["refusal"]["code"] == "refused" and attack["refusal"]["reason"] == "grant", attack
        assert "grants it" in attack["refusal"]["message"]
        assert attack["bytes"] == grant  # 16 shares of 256 KiB, then refused
        state = holder.get("/api/storage")
        assert state["server"]["grant_refusals"] == 1 and state["server"]["quota_refusals"] == 0
        assert state["used_bytes"] == attack["bytes"] <= state["quota_bytes"] // 16
        mine = row(holder, attack["peer_id"])
        assert mine == {"peer": attack["peer_id"], "used_bytes": grant, "shares": 16, "credit_bytes": 0,
                        "grant_bytes": grant}

        # the accounts are in the holder's LMDB: after a restart the same peer is refused at once
        holder.restart()
        # it listens on a new port now; it redials the peers it remembers
        wait_until(lambda: honest.peer_id in holder.connected(), 60, "the holder redialled the honest node")
        again = squat(holder, junk=2)  # the same peer, other junk
        assert again["peer_id"] == attack["peer_id"] and again["stored"] == 0
        assert again["refusal"]["reason"] == "grant"
        assert row(holder, attack["peer_id"])["used_bytes"] == grant

        # an honest peer still stores on the holder afterwards
        src = tmp_path / "honest.bin"
        src.write_bytes(random.Random(1).randbytes(2 * MiB))
        put = subprocess.run(poolai_command("--data-dir", str(honest.data_dir), "put", str(src)),
                             capture_output=True, text=True, timeout=120)
        assert put.returncode == 0, put.stderr
        file_id = put.stdout.strip()
        kept = row(holder, honest.peer_id)
        assert kept is not None and 0 < kept["used_bytes"] <= kept["grant_bytes"], kept
        out = tmp_path / "back.bin"
        got = subprocess.run(poolai_command("--data-dir", str(holder.data_dir), "get", file_id,
                                            "-o", str(out)), capture_output=True, text=True, timeout=120)
        assert got.returncode == 0, got.stderr
        assert out.read_bytes() == src.read_bytes()
        state = holder.get("/api/storage")
        assert state["used_bytes"] == grant + kept["used_bytes"] < QUOTA // 4
    finally:
        stop_all(nodes)
    # every lease the squatter asked for (2^64 - 1) is capped at 31 days from when it was stored
    with ShareStore(tmp_path / "holder" / "shares", quota_bytes=QUOTA) as store:
        squatted = [store.record(i) for i in store.share_ids()]
        squatted = [r for r in squatted if r.owner == attack["peer_id"]]
        assert len(squatted) == 16
        assert all(started + 31 * 86400 <= r.lease_expiry <= int(time.time()) + 31 * 86400 for r in squatted)

