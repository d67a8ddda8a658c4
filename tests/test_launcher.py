"""The node launcher tests and scripts share: readiness by node.json, errors that quote the
node's output, stop/kill/pause/restart on one data directory."""

from __future__ import annotations

import json
import signal

import httpx
import pytest

from poolai.node.launcher import NodeProcess, NodeStartError, stop_all

pytestmark = [pytest.mark.live, pytest.mark.timeout(120)]


def test_a_node_that_cannot_start_fails_fast_with_its_error(tmp_path):
    node = NodeProcess(tmp_path / "bad", env={"POOLAI_MAX_PEERS": "many"})
    with pytest.raises(NodeStartError) as caught:
        node.start(timeout=60)
    assert "exited with code 1 before it was up" in str(caught.value)
    assert "poolai: error:" in str(caught.value) and "max_peers" in str(caught.value)
    assert not node.alive


def test_readiness_is_this_runs_node_json_not_a_stale_one(tmp_path):
    node = NodeProcess(tmp_path / "n")
    try:
        node.start()
        first_pid, peer_id = node.pid, node.peer_id
        assert node.addr.endswith(f"/p2p/{peer_id}") and node.addr.startswith("/ip4/127.0.0.1/tcp/")
        assert node.status()["peer_id"] == peer_id
        assert node.api_socket == str(node.data_dir / "api.sock")

        node.kill()  # leaves a node.json naming the dead pid
        assert json.loads((node.data_dir / "node.json").read_text())["pid"] == first_pid
        assert node.returncode == -signal.SIGKILL
        node.restart()
        assert node.pid != first_pid and node.peer_id == peer_id
        assert node.info["pid"] == node.pid
        assert node.output and all("Traceback" not in line for line in node.output)

        code, seconds = node.stop()
        assert code == 0 and seconds < 10
        assert not (node.data_dir / "node.json").exists()  # a clean stop removes it
    finally:
        stop_all([node])


def test_a_paused_node_answers_nothing_until_resumed(tmp_path):
    node = NodeProcess(tmp_path / "p").start()
    try:
        node.pause()
        with pytest.raises(httpx.TimeoutException):
            httpx.get(node.api + "/api/status", timeout=1.0)
        node.resume()
        assert node.get("/api/status", timeout=10)["peer_id"] == node.peer_id
    finally:
        stop_all([node])
