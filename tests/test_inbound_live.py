"""Inbound connections among strangers, against real node processes (issue 19, finding 1).

A misbehaving peer process (tests/churn_peer.py) churns connections from fresh
identities, holds idle ones open past the node's inbound cap, and floods from one IP and
as one peer id. The node keeps taking honest peers at once, keeps its overlay link, sheds
idle strangers instead of refusing newcomers, and returns to a bounded number of file
descriptors. Loopback is one IP for everyone, so each test sets the limits it is not about
out of reach (``POOLAI_INBOUND_RATE_*``) and the flood leaves from another loopback address.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from poolai.mesh.admission import BURST_SECONDS
from poolai.mesh.host import open_host, split_p2p_addr
from poolai.node.launcher import NodeProcess, stop_all, wait_until

pytestmark = [pytest.mark.live, pytest.mark.timeout(420)]
CHURN = [sys.executable, str(Path(__file__).with_name("churn_peer.py"))]
FAST = {"POOLAI_OVERLAY_SCALE": "0.05"}  # overlay probes every 3 s
NO_RATE_LIMITS = {"POOLAI_INBOUND_RATE_IP": "10000", "POOLAI_INBOUND_RATE_TOTAL": "10000"}
FD_SLACK = 10  # descriptors a settled node may hold beyond its count before the attack


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def connections(node: NodeProcess) -> dict:
    return node.status()["connections"]


def overlay_links(node: NodeProcess) -> set[str]:
    overlay = node.get("/api/overlay")
    return {p["peer_id"] for group in ("successors", "predecessors", "long", "proximity")
            for p in overlay[group]}


def connect_within(node: NodeProcess, seconds: float) -> None:
    """A fresh identity from 127.0.0.1 connects to ``node`` within ``seconds`` (the host's
    own start is not counted)."""
    peer_id, addr = split_p2p_addr(node.addr)

    async def visit() -> None:
        async with open_host(create_new_key_pair(), []) as host:
            with trio.fail_after(seconds):
                await host.connect(peer_id, [addr])
            assert host.is_connected(peer_id)
            await host.disconnect(peer_id)

    trio.run(visit)


def churn(node: NodeProcess, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*CHURN, node.addr, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)


def result_of(proc: subprocess.Popen[bytes], timeout: float) -> dict:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"churn peer exited with {proc.returncode}"
    return json.loads(out.decode().strip().splitlines()[-1])


def test_a_node_takes_a_fresh_peer_at_once_after_a_thousand_strangers_came_and_went(tmp_path):
    """1,000 connect/disconnect cycles from fresh identities, 20 at a time, while 40 more
    strangers sit idle past the inbound cap (16 with --max-peers 4). Throughout, the node's
    overlay neighbour stays connected; after, a fresh peer connects within 1 s and the
    node's descriptors and connections are back where they were."""
    node = NodeProcess(tmp_path / "node", "--max-peers", "4", env={**NO_RATE_LIMITS, **FAST})
    nodes = [node]
    try:
        node.start()
        neighbour = NodeProcess(tmp_path / "neighbour", "--bootstrap", node.addr, env=FAST)
        nodes.append(neighbour)
        neighbour.start()
        wait_until(lambda: neighbour.peer_id in overlay_links(node), 60,
                   "the neighbour is one of the node's overlay links")
        before = open_fds(node.pid)
        attacker = churn(node, "--cycles", "1000", "--parallel", "20", "--hold", "40")
        samples = 0
        while True:
            try:
                attacker.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                assert neighbour.peer_id in node.connected(), "the overlay neighbour was dropped"
                samples += 1
        result = result_of(attacker, 10)
        assert samples > 10 and neighbour.peer_id in node.connected()
        assert result["attempts"] == 1000 and result["connected"] >= 990, result
        connect_within(node, 1.0)
        wait_until(lambda: open_fds(node.pid) <= before + FD_SLACK, 30,
                   f"the node's descriptors back within {FD_SLACK} of {before}")
        wait_until(lambda: connections(node)["inbound"] <= 2, 30, "the strangers' connections closed")
        status = connections(node)
        assert status["accepted"] >= result["connected"] + result["held"], status
        assert status["shed"] >= result["held"] - status["inbound_cap"], status
        assert status["refused_ip_rate"] == status["refused_peer_rate"] == 0, status
    finally:
        stop_all(nodes)


def test_a_flood_beyond_its_rate_is_refused_while_another_peer_connects(tmp_path):
    """Default limits: 5 connections a second per IP (bursts of 50), 0.5 per peer id
    (bursts of 5). Fresh identities flooding from 127.0.0.3, then one identity reconnecting
    from 127.0.0.4, get no more than that; meanwhile a peer from 127.0.0.1 connects in 1 s."""
    node = NodeProcess(tmp_path / "node")
    try:
        node.start()
        flood = churn(node, "--cycles", "400", "--parallel", "8", "--seconds", "20",
                      "--source-ip", "127.0.0.3")
        wait_until(lambda: connections(node)["refused_ip_rate"] > 0, 60, "the flood is refused")
        assert flood.poll() is None, "the flood ended before it was refused"
        connect_within(node, 1.0)
        result = result_of(flood, 120)
        per_ip = 5.0
        assert result["refused"] > 0, result
        assert result["connected"] <= per_ip * (BURST_SECONDS + result["seconds"]) + 1, result

        accepted = connections(node)["accepted"]
        same = churn(node, "--cycles", "60", "--parallel", "4", "--same-identity",
                     "--source-ip", "127.0.0.4")
        result = result_of(same, 120)
        status = connections(node)
        per_peer = 0.5
        assert status["refused_peer_rate"] > 0, status
        assert status["accepted"] - accepted <= per_peer * (BURST_SECONDS + result["seconds"]) + 1, \
            (status, result)
        connect_within(node, 1.0)
        assert status["refused_total_rate"] == 0, status
    finally:
        stop_all([node])
