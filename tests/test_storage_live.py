"""Burst-RAID storage on real node processes on 127.0.0.1, driven through the ``poolai`` CLI.

One module-wide mesh of 10 nodes (upkeep only when a test asks for it):

* put a random file, SIGKILL n-k = 6 holders, get it back intact from another
  node; 6 fresh nodes join, a repair pass runs, and every segment again has n
  live shares, each proven (fetched and hash-checked, or audited);
* a share whose bytes rot inside a holder's LMDB is reported and replaced;
* a put into a node whose quota is full is refused clearly and leaves nothing;
* a node SIGKILLed in the middle of a put reopens a store of whole shares;
* the CLI moves files over the API's Unix socket, and over TCP without it.

The file in the first test is 50 MiB unless ``POOLAI_TEST_STORAGE_MIB`` says
otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import stat
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import lmdb
import pytest

from poolai.node.auth import auth_headers
from poolai.node.launcher import NodeProcess, poolai_command, stop_all, wait_until
from poolai.storage.store import ShareStore

pytestmark = [pytest.mark.live, pytest.mark.timeout(420)]
MiB = 1 << 20
SIZE = int(os.environ.get("POOLAI_TEST_STORAGE_MIB", "50")) * MiB
K, N = 4, 10
# Storage upkeep only when a test asks; the other services' background chatter slowed down,
# because ten nodes share this machine's cores with the test.
ENV = {"POOLAI_STORAGE_INTERVAL": "86400", "POOLAI_STORAGE_QUOTA": "16GiB", "POOLAI_OVERLAY_SCALE": "10",
       "POOLAI_CAPACITY_HEARTBEAT": "60", "POOLAI_CREDITS_SYNC_INTERVAL": "3600",
       "POOLAI_LOG_LEVEL": os.environ.get("POOLAI_TEST_LOG_LEVEL", "warning")}


class Mesh:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.nodes: list[NodeProcess] = []
        self.count = 0

    def spawn(self, count: int) -> list[NodeProcess]:
        """Start ``count`` fresh nodes (in parallel) bootstrapping from the first."""
        new = []
        for _ in range(count):
            extra = ("--bootstrap", self.nodes[0].addr) if self.nodes else ()
            node = NodeProcess(self.root / f"n{self.count}", *extra, env=ENV)
            self.count += 1
            if not self.nodes:
                self.nodes.append(node.start(timeout=60))
            else:
                new.append(node)
        with ThreadPoolExecutor(len(new) or 1) as pool:
            list(pool.map(lambda n: n.start(timeout=60), new))
        self.nodes += new
        return new

    @property
    def live(self) -> list[NodeProcess]:
        return [n for n in self.nodes if n.alive]

    def wait_full(self) -> None:
        live = self.live
        ids = {n.peer_id for n in live}
        wait_until(lambda: all(ids - {n.peer_id} <= n.connected() for n in live), 90,
                   f"{len(live)} nodes fully connected")

    def by_id(self, peer_id: str) -> NodeProcess:
        return next(n for n in self.live if n.peer_id == peer_id)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    m = Mesh(tmp_path_factory.mktemp("storage-mesh"))
    try:
        m.spawn(N)
        m.wait_full()
        yield m
    finally:
        stop_all(m.nodes)


def cli(node: NodeProcess, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(poolai_command("--data-dir", str(node.data_dir), *args), capture_output=True,
                          text=True, timeout=timeout)


def put(node: NodeProcess, path: Path, *args: str) -> str:
    result = cli(node, "put", str(path), *args)
    assert result.returncode == 0, result.stderr
    file_id = result.stdout.strip()
    assert len(file_id) == 64, result.stdout
    return file_id


def get_ok(node: NodeProcess, file_id: str, out: Path, expected: bytes) -> None:
    result = cli(node, "get", file_id, "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(expected).digest()


def post(node: NodeProcess, path: str, timeout: float = 120) -> dict:
    response = httpx.post(node.api + path, headers=auth_headers(node.data_dir), timeout=timeout)
    response.raise_for_status()
    return response.json()


def assert_fully_redundant(node: NodeProcess, file_id: str, ring_size: int) -> dict:
    stat = node.get(f"/api/files/{file_id}/stat?verify=1", timeout=120)
    for seg in stat["segment_health"]:
        assert seg["live"] == N and seg["proven"] == N, seg
        assert len(set(seg["holders"])) == min(N, ring_size), seg
    # every share found; on a ring smaller than n some peers hold several, which is not healthy
    assert stat["counts"]["healthy" if ring_size >= N else "concentrated"] == stat["segments"]
    assert stat["spread"] == min(N, ring_size)
    return stat


def test_full_quota_is_a_clear_refusal_and_leaves_nothing(tmp_path):
    env = {**ENV, "POOLAI_STORAGE_QUOTA": "1MiB", "POOLAI_STORAGE_LEASE": "2s"}
    node = NodeProcess(tmp_path / "q", env=env).start(timeout=60)
    try:
        src = tmp_path / "big.bin"
        src.write_bytes(random.Random(3).randbytes(3 * MiB))  # 7.5 MiB of shares at 4-of-10
        result = cli(node, "put", str(src), "--segment-mib", "1")
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("poolai: error: quota: "), result.stderr
        assert "storage quota is full" in lines[0] and "Traceback" not in result.stderr

        response = httpx.post(node.api + "/api/files", params={"segment": MiB},
                              content=src.read_bytes(), headers=auth_headers(node.data_dir), timeout=60)
        assert response.status_code == 507
        assert response.json()["error"]["code"] == "quota"

        state = node.get("/api/storage")
        assert state["used_bytes"] <= MiB and state["files_placed"] == []
        assert state["server"]["quota_refusals"] > 0
        assert list((node.data_dir / "storage" / "uploads").iterdir()) == []

        def collected() -> bool:
            post(node, "/api/storage/repair")  # gc runs first in every upkeep pass
            return node.get("/api/storage")["shares"] == 0

        # what fitted was stored under the short pending lease: it is collected, nothing stays
        wait_until(collected, 30, "leftover shares collected", interval=0.5)
    finally:
        stop_all([node])
    with ShareStore(tmp_path / "q" / "shares", quota_bytes=MiB) as store:
        assert store.scrub() == 0 and store.statistics().bytes == 0


def test_put_kill_n_minus_k_get_then_repair(mesh, tmp_path):
    data = random.Random(1).randbytes(SIZE)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    putter, getter = mesh.nodes[0], mesh.nodes[1]
    file_id = put(putter, src)
    # a put succeeds once every segment has 7 of its 10 shares; the loss below needs all 10
    assert post(putter, "/api/storage/repair")["segments_lost"] == 0
    stat = putter.get(f"/api/files/{file_id}/stat")
    assert all(seg["live"] == N for seg in stat["segment_health"]), stat["counts"]

    victims = mesh.nodes[4:10]  # all 10 nodes hold one share of every segment
    for victim in victims:
        victim.kill()
    gone = {v.peer_id for v in victims}
    wait_until(lambda: not (gone & (putter.connected() | getter.connected())), 30, "victims gone")

    def not_found() -> int:
        return getter.get("/api/storage")["transport"]["refusals"].get("not_found", 0)

    asked = not_found()
    get_ok(getter, file_id, tmp_path / "out.bin", data)
    # The getter computes holders on the ring the shares were put on (the victims still
    # count, as absent or as failing) and soon learns to ask each segment's survivors: on
    # the ring of present peers this get had 237 not_found answers.
    assert not_found() - asked <= 4 * (N - K)
    checked = cli(getter, "get", file_id, "--check", timeout=120)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith(f"{file_id}: read and verified {SIZE / MiB:.1f} MiB")

    mesh.spawn(N - K)  # six fresh nodes take the victims' places on the ring
    mesh.wait_full()
    report = post(putter, "/api/storage/repair")
    assert report["segments_lost"] == 0
    assert report["shares_rebuilt"] >= report["shares_missing"] > 0
    assert_fully_redundant(putter, file_id, len(mesh.live))


def flip_share_byte(data_dir: Path, share_id: bytes) -> None:
    env = lmdb.open(str(data_dir / "shares"), max_dbs=3, map_size=1 << 32)
    shares = env.open_db(b"shares")
    with env.begin(write=True, db=shares) as txn:
        value = bytearray(txn.get(share_id))
        value[len(value) // 2] ^= 0xFF
        txn.put(share_id, bytes(value))
    env.close()


def test_rotted_share_is_reported_and_replaced(mesh, tmp_path):
    data = random.Random(2).randbytes(8 * MiB)
    src = tmp_path / "rot.bin"
    src.write_bytes(data)
    putter, getter = mesh.nodes[0], mesh.nodes[1]
    file_id = put(putter, src)
    stat = putter.get(f"/api/files/{file_id}/stat")
    holders = stat["segment_health"][0]["holders"]
    # a primary share (fetched first by a get) on a node other than the putter and getter
    index = next(i for i in range(K) if holders[i] not in (putter.peer_id, getter.peer_id))
    victim = mesh.by_id(holders[index])
    code, _ = victim.stop(signal.SIGTERM)
    assert code == 0
    flip_share_byte(victim.data_dir, _share_id(putter, file_id, 0, index))
    restarted = NodeProcess(victim.data_dir, env=ENV).start(timeout=60)
    mesh.nodes[mesh.nodes.index(victim)] = restarted
    mesh.wait_full()

    get_ok(getter, file_id, tmp_path / "rot.out", data)
    # The holder served the rotten share as stored; the getter's hash check caught it and
    # reported it back, and the holder's own check found the rot and dropped the copy.
    assert getter.get("/api/storage")["transport"]["corrupt_reports"] >= 1

    def dropped() -> bool:
        held = restarted.get("/api/storage")
        return held["hash_failures"] >= 1 and held["server"]["corrupt"] >= 1

    wait_until(dropped, 30, "the holder to check the reported share")

    report = post(putter, "/api/storage/repair")
    assert report["shares_rebuilt"] >= 1, report
    stat = assert_fully_redundant(putter, file_id, len(mesh.live))
    assert stat["segment_health"][0]["holders"][index] == restarted.peer_id


def _share_id(node: NodeProcess, file_id: str, seg: int, index: int) -> bytes:
    """A share id, read from the manifest the node keeps for files it put."""
    from poolai.storage import manifest

    blob = (node.data_dir / "storage" / "files" / f"{file_id}.manifest").read_bytes()
    return manifest.decode(blob).share_id(seg, index)


def test_sigkill_during_put_leaves_only_whole_shares(mesh, tmp_path):
    src = tmp_path / "killed.bin"
    src.write_bytes(random.Random(4).randbytes(24 * MiB))
    putter = mesh.nodes[0]
    victim = next(n for n in mesh.live if n not in (putter, mesh.nodes[1]))
    before = victim.get("/api/storage")["shares"]
    proc = subprocess.Popen(poolai_command("--data-dir", str(putter.data_dir), "put", str(src)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: victim.get("/api/storage", timeout=2)["shares"] > before, 60,
                   "the victim receiving shares", interval=0.05)
        victim.kill()
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err  # 9 holders left: the put still reaches its goal
    with ShareStore(victim.data_dir / "shares", quota_bytes=1 << 30) as store:
        stats = store.statistics()
        assert store.scrub() == 0  # every share hashes to its id
        sizes = [store.record(s).size for s in store.share_ids()]
        assert (stats.shares, stats.bytes) == (len(sizes), sum(sizes))
        assert stats.shares > before
    restarted = NodeProcess(victim.data_dir, env=ENV).start(timeout=60)
    mesh.nodes[mesh.nodes.index(victim)] = restarted
    assert restarted.get("/api/storage")["shares"] == stats.shares


def test_cli_errors_are_one_line(mesh, tmp_path):
    node = mesh.nodes[0]
    unknown = hashlib.sha256(b"never stored").hexdigest()
    cases = [("get", "nothex", "-o", str(tmp_path / "x")), ("get", unknown, "-o", str(tmp_path / "x")),
             ("get", unknown, "--check"), ("stat", unknown), ("unpin", unknown),
             ("put", str(tmp_path / "missing"))]
    for args in cases:
        result = cli(node, *args, timeout=60)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1, (args, result.stderr)
        assert lines[0].startswith("poolai: error: ") and "Traceback" not in result.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.part").exists()


def test_cli_uses_the_api_socket_and_falls_back_to_tcp(tmp_path):
    node = NodeProcess(tmp_path / "s", env=ENV).start(timeout=60)
    runtime = node.data_dir / "node.json"
    try:
        info = json.loads(runtime.read_text())
        sock = Path(info["api_socket"])
        assert sock.parent == node.data_dir and stat.S_ISSOCK(sock.stat().st_mode)
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=30) as client:
            assert client.get("http://localhost/api/status").json()["peer_id"] == node.peer_id
            # only the owner can connect to the socket, so it holds the token's authority:
            # an admin action and a state change work without sending the token, while
            # over TCP both need it; no other site may drive the node either way
            assert client.post("http://localhost/api/admin/capacity/load", json={}).status_code == 200
            assert httpx.post(node.api + "/api/admin/capacity/load", json={}).status_code == 401
            assert httpx.post(node.api + "/api/storage/repair").status_code == 401
            refused = client.post("http://localhost/api/storage/repair", headers={"Origin": "http://a.test"})
            assert refused.status_code == 403

        data = random.Random(5).randbytes(3 * MiB + 5)
        src = tmp_path / "s.bin"
        src.write_bytes(data)
        # With the TCP address in the runtime file dead, put and get can only use the socket.
        runtime.write_text(json.dumps({**info, "api": "http://127.0.0.1:9"}))
        file_id = put(node, src, "--segment-mib", "1")
        get_ok(node, file_id, tmp_path / "via-socket.bin", data)
        # Without the socket they use TCP.
        runtime.write_text(json.dumps(info))
        sock.unlink()
        get_ok(node, file_id, tmp_path / "via-tcp.bin", data)
    finally:
        stop_all([node])
    assert not runtime.exists()
