"""Three node processes through the CLI: join by bootstrap chains, restart, clean SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest

from poolai.node.launcher import NodeProcess, poolai_command, stop_all, wait_until

pytestmark = [pytest.mark.live, pytest.mark.timeout(180)]


def test_three_nodes_join_restart_and_stop(tmp_path):
    a = NodeProcess(tmp_path / "a").start()
    nodes = [a]
    try:
        b = NodeProcess(tmp_path / "b", "--bootstrap", a.addr, "--log-format", "json").start()
        nodes.append(b)
        c = NodeProcess(tmp_path / "c", "--bootstrap", b.addr).start()
        nodes.append(c)
        ids = {n.peer_id for n in nodes}
        assert len(ids) == 3

        def fully_connected() -> bool:
            return all(n.connected() == ids - {n.peer_id} for n in nodes)

        wait_until(fully_connected, 30, "all three nodes connected to each other")
        json_logs = [json.loads(line) for line in b.output if line.startswith("{")]
        assert json_logs and all({"ts", "level", "logger", "msg"} <= set(e) for e in json_logs)

        # `poolai status --json` reads the same state through the CLI
        out = subprocess.run(
            poolai_command("--data-dir", str(c.data_dir), "status", "--json"),
            capture_output=True, text=True, timeout=30, check=True,
        )
        status = json.loads(out.stdout)
        assert status["peer_id"] == c.peer_id
        assert {p["peer_id"] for p in status["peers"]} == {a.peer_id, b.peer_id}

        # restart C without any bootstrap flag: same identity, rejoins from its saved peers
        code, took = c.stop(signal.SIGTERM)
        assert (code, took < 5) == (0, True)
        wait_until(lambda: c.peer_id not in a.connected() | b.connected(), 30, "C's departure seen")
        c2 = NodeProcess(tmp_path / "c").start()
        nodes[2] = c2
        assert c2.peer_id == c.peer_id
        wait_until(lambda: c2.connected() == {a.peer_id, b.peer_id}, 30, "restarted C rejoined")
        wait_until(fully_connected, 30, "mesh whole again")
    finally:
        results = []
        for node in nodes:
            if node.alive:  # Ctrl-C for the first node, SIGTERM for the others
                results.append(node.stop(signal.SIGINT if node is a else signal.SIGTERM))
        stop_all(nodes)
    assert all(code == 0 and took < 5 for code, took in results), results


def test_cli_errors_are_one_line(tmp_path):
    cases = [
        ("--data-dir", str(tmp_path / "none"), "status"),
        ("--data-dir", str(tmp_path / "none"), "node", "id"),
        ("--data-dir", str(tmp_path), "node", "run", "--api-port", "99999"),
    ]
    for args in cases:
        result = subprocess.run(poolai_command(*args), capture_output=True, text=True, timeout=60)
        assert result.returncode == 1, result
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("poolai: error: "), result.stderr
        assert "Traceback" not in result.stderr


def test_a_second_node_on_a_running_nodes_directory_refuses_to_start(tmp_path):
    first = NodeProcess(tmp_path / "a").start()
    try:
        result = subprocess.run(
            poolai_command("--data-dir", str(first.data_dir), "node", "run", "--api-port", "0",
                       "--listen", "/ip4/127.0.0.1/tcp/0"),
            capture_output=True, text=True, timeout=60)
        assert result.returncode == 1, result
        lines = result.stderr.strip().splitlines()
        assert lines == [f"poolai: error: another node is running in {first.data_dir} "
                         f"(pid {first.pid})"], result.stderr
        # the first node kept its runtime file and API socket
        status = subprocess.run(poolai_command("--data-dir", str(first.data_dir), "status", "--json"),
                                capture_output=True, text=True, timeout=30, check=True)
        assert json.loads(status.stdout)["peer_id"] == first.peer_id
        assert (first.data_dir / "api.sock").exists()
    finally:
        stop_all([first])


def test_commands_after_a_sigkilled_node_say_it_is_gone(tmp_path):
    node = NodeProcess(tmp_path / "k").start()
    pid = node.pid
    node.kill()
    assert (node.data_dir / "node.json").exists()  # nobody removed it
    for args in (("status",), ("get", "ab" * 32, "-o", str(tmp_path / "x")), ("job", "list")):
        result = subprocess.run(poolai_command("--data-dir", str(node.data_dir), *args),
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 1, result
        assert result.stderr.strip().splitlines() == [
            f"poolai: error: no running node found in {node.data_dir}: the last one (pid {pid}) "
            f"ended without cleaning up (start one with 'poolai node run')"], result.stderr
    # the next node starts over the leftovers (node.json, api.sock) and answers on its socket
    again = NodeProcess(node.data_dir).start()
    try:
        status = subprocess.run(poolai_command("--data-dir", str(node.data_dir), "status", "--json"),
                                capture_output=True, text=True, timeout=30, check=True)
        assert json.loads(status.stdout)["peer_id"] == node.peer_id
    finally:
        stop_all([again])


def test_corrupt_identity_refuses_to_start(tmp_path):
    (tmp_path / "identity.key").write_bytes(b"garbage")
    (tmp_path / "identity.key").chmod(0o600)
    result = subprocess.run(
        poolai_command("--data-dir", str(tmp_path), "node", "run", "--listen", "/ip4/127.0.0.1/tcp/0",
                   "--api-port", "0"),
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert "corrupt" in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "identity.key").read_bytes() == b"garbage"


def test_share_store_of_an_older_release_refuses_to_start(tmp_path):
    import lmdb

    env = lmdb.open(str(tmp_path / "shares"), max_dbs=3)
    with env.begin(write=True, db=env.open_db(b"info")) as txn:
        txn.put(b"schema", (1).to_bytes(4, "big"))  # the sha256-era layout
    env.close()
    result = subprocess.run(
        poolai_command("--data-dir", str(tmp_path), "node", "run", "--listen", "/ip4/127.0.0.1/tcp/0",
                   "--api-port", "0"),
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("poolai: error: ") and "older release" in last and "move it away" in last
    assert "Traceback" not in result.stderr
