"""Capacity adverts over real gossipsub: hostile senders against one node, then 8 node processes."""

from __future__ import annotations

import functools
import json
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import polling
import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from poolai.mesh import adverts, wire
from poolai.mesh.gossip import ACCEPT, PenaltyBox, open_gossip
from poolai.mesh.host import open_host
from poolai.node import config
from poolai.node.auth import auth_headers
from poolai.node.capacity.inventory import Inventory
from poolai.node.capacity.rules import LocalState, make_advert
from poolai.node.launcher import NodeProcess, poolai_command, stop_all, wait_until
from poolai.node.node import open_node

GiB = 1 << 30
_now = time.time
LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
FAST = {"POOLAI_CAPACITY_HEARTBEAT": "1", "POOLAI_CAPACITY_EXPIRY": "3"}


# --------------------------------------------------------------------------- hostile senders


# Table state (no event signals it) settles within 10 s here unless a test says otherwise.
wait_for = functools.partial(polling.wait_for, within=10.0)


@pytest.mark.live
@pytest.mark.timeout(60)
async def test_bad_adverts_are_dropped_and_the_sender_banned(tmp_path):
    cfg = config.load(tmp_path / "node", {"listen": LOOPBACK, "api_port": 0}, environ=FAST)
    attacker_keys = create_new_key_pair()
    sign, public = attacker_keys.private_key.sign, attacker_keys.public_key.to_bytes()
    inventory = Inventory((), 4, 8 * GiB, 4 * GiB, 100 * GiB)

    with trio.fail_after(50):
        async with open_node(cfg) as node, open_host(attacker_keys, LOOPBACK) as host:
            service = node.capacity
            state = LocalState(host.peer_id, "poolai/0.1.0", job_slots=1)

            def attacker_advert(seq: int):
                return make_advert(inventory, state, seq=seq, now=_now(), ttl=30.0)

            async with open_gossip(host) as gossip:
                await host.connect(node.peer_id, node.host.transport_addrs())
                await wait_for(lambda: node.peer_id in gossip.topic_peers(adverts.TOPIC), "subscription")

                # An honest advert from the newcomer is taken in.
                await gossip.publish(adverts.TOPIC, adverts.sign(attacker_advert(1000), sign, public))
                await wait_for(lambda: service.table.get(host.peer_id) is not None, "honest advert")
                held = service.table.get(host.peer_id)
                peers_before = {e.peer_id for e in service.table.entries(_now())}

                node_keys = node.host.key_pair
                node_state = LocalState(node.peer_id, "poolai/0.1.0", job_slots=1)
                captured = adverts.sign(  # what the node itself might have said a while ago
                    make_advert(inventory, node_state, seq=5, now=_now(), ttl=30.0),
                    node_keys.private_key.sign, node_keys.public_key.to_bytes())
                body = wire.encode(attacker_advert(2000))
                other = create_new_key_pair()
                attacks = [
                    ("bad_signature", wire.encode(adverts.SignedAdvert(
                        body, public, other.private_key.sign(adverts.SIGNING_DOMAIN + body)))),
                    ("peer_mismatch", _envelope(wire.encode(make_advert(
                        inventory, node_state, seq=2001, now=_now(), ttl=30.0)), sign, public)),
                    ("stale", adverts.sign(attacker_advert(999), sign, public)),
                    ("origin_mismatch", captured),
                    ("oversize", b"\x00" * (adverts.MAX_ADVERT + 1024)),
                    ("malformed", b"\xc1 not msgpack"),
                ]
                for reason, data in attacks:
                    seen = service.status()["rejected"].get(reason, 0)
                    await gossip.publish(adverts.TOPIC, data)
                    await wait_for(lambda r=reason, n=seen: service.status()["rejected"].get(r, 0) > n,
                                   f"{reason} rejection")
                    assert service.table.get(host.peer_id) == held, reason
                    assert {e.peer_id for e in service.table.entries(_now())} == peers_before

                # 1 point each, stale none: the malformed one was the fifth and got it banned.
                stats = service.status()["gossip"]
                assert stats["banned"] == [host.peer_id]
                await wait_for(lambda: not node.host.is_connected(host.peer_id), "disconnect")

                # The node is unharmed: it goes on publishing and accepting its own adverts.
                seq = service.status()["seq"]
                await wait_for(lambda: service.status()["seq"] > seq, "next heartbeat", within=15)
                assert service.table.get(node.peer_id).advert.seq == service.status()["seq"]


def _envelope(body: bytes, sign, public: bytes) -> bytes:
    return wire.encode(adverts.SignedAdvert(body, public, sign(adverts.SIGNING_DOMAIN + body)))


def test_penalty_points_decay_and_bans_expire():
    box = PenaltyBox(threshold=4.5, half_life=60.0, ban_seconds=300.0)
    assert not any(box.add("p", 1.0, t) for t in (0.0, 1.0, 2.0, 3.0))
    assert box.score("p", 63.0) == pytest.approx(4 * 0.5 ** (60 / 60), rel=0.05)
    assert box.add("p", 1.0, 4.0) and box.is_banned("p") and box.banned() == ["p"]
    assert not box.add("p", 1.0, 5.0)  # already banned: nothing more to do
    assert box.release(303.0) == [] and box.release(304.0) == ["p"] and not box.is_banned("p")
    # Slow trickles never add up: one point a minute settles below two.
    assert not any(box.add("q", 1.0, 60.0 * i) for i in range(100))


@pytest.mark.live
@pytest.mark.timeout(60)
async def test_peers_connected_before_gossip_started_are_reached():
    with trio.fail_after(50):
        async with open_host(create_new_key_pair(), LOOPBACK) as a, \
                open_host(create_new_key_pair(), LOOPBACK) as b:
            await a.connect(b.peer_id, b.transport_addrs())
            async with open_gossip(a) as ga, open_gossip(b) as gb:
                got: list[bytes] = []

                def keep(inbound):
                    got.append(inbound.data)
                    return ACCEPT

                await ga.join("t", keep)
                await gb.join("t", keep)
                await wait_for(lambda: a.peer_id in gb.topic_peers("t"), "b to see a's subscription",
                               within=20)
                await wait_for(lambda: a.peer_id in gb.mesh_peers("t"), "a in b's mesh", within=20)
                await gb.publish("t", b"hello")
                await wait_for(lambda: got.count(b"hello") == 2, "a to receive b's message")  # b's own too


# --------------------------------------------------------------------------- eight processes


SIM_A = {"gpus": [{"name": "NVIDIA A100-SXM4-80GB", "uuid": "GPU-sim-a100", "memory_total": "80GiB",
                   "memory_free": "70GiB", "compute_capability": "8.0"}]}
SIM_H = {"gpus": [{"name": "NVIDIA H100 80GB HBM3", "uuid": f"GPU-sim-h100-{i}", "memory_total": "80GiB",
                   "memory_free": "80GiB", "compute_capability": "9.0"} for i in range(2)]}


def write_json(path: Path, doc: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(path)


def table(node: NodeProcess) -> dict[str, dict]:
    return {e["peer_id"]: e for e in node.get("/api/capacity")["entries"]}


def start_wave(nodes: list[NodeProcess]) -> None:
    with ThreadPoolExecutor(len(nodes)) as pool:
        for started in pool.map(lambda n: n.start(timeout=60), nodes):
            assert started.peer_id


@pytest.mark.live
@pytest.mark.timeout(300)
def test_eight_nodes_learn_follow_and_forget_each_other(tmp_path):
    files = {1: tmp_path / "a100.json", 2: tmp_path / "h100.json"}
    write_json(files[1], SIM_A)
    write_json(files[2], SIM_H)

    def node(i: int, bootstrap: NodeProcess | None) -> NodeProcess:
        env = dict(FAST)
        if i in files:
            env["POOLAI_INVENTORY_FILE"] = str(files[i])
        extra = ("--bootstrap", bootstrap.addr) if bootstrap else ()
        return NodeProcess(tmp_path / f"n{i}", *extra, env=env)

    nodes = [node(0, None)]
    try:
        start_wave(nodes)
        wave = [node(i, nodes[0]) for i in (1, 2, 3)]
        start_wave(wave)
        nodes += wave
        wave = [node(i, nodes[1 + (i - 4) % 3]) for i in (4, 5, 6, 7)]  # chains 0 <- 1,2,3 <- 4..7
        start_wave(wave)
        nodes += wave
        ids = {n.peer_id for n in nodes}
        assert len(ids) == 8

        # Every table lists all eight, each with the devices that node reports for itself.
        def all_known() -> bool:
            return all(set(table(n)) == ids for n in nodes)

        wait_until(all_known, 90, "every node's table to list all 8")
        own = {n.peer_id: table(n)[n.peer_id] for n in nodes}
        assert [g["uuid"] for g in own[nodes[1].peer_id]["gpus"]] == ["GPU-sim-a100"]
        assert [g["compute_capability"] for g in own[nodes[2].peer_id]["gpus"]] == ["9.0", "9.0"]
        assert own[nodes[1].peer_id]["simulated"] and not own[nodes[0].peer_id]["simulated"]
        for n in nodes:
            for peer, entry in table(n).items():
                assert entry["gpus"] == own[peer]["gpus"], (n.peer_id, peer)

        # A GPU's free memory drops on one node, a slot fills on another: everyone hears.
        a100, busy = nodes[1].peer_id, nodes[3].peer_id
        write_json(files[1], {"gpus": [{**SIM_A["gpus"][0], "memory_free": "10GiB"}]})
        httpx.post(nodes[3].api + "/api/admin/capacity/load", json={"busy_slots": 1},
                   headers=auth_headers(nodes[3].data_dir), timeout=5).raise_for_status()

        def changes_arrived() -> bool:
            for n in nodes:
                entries = table(n)
                if entries[a100]["gpus"][0]["memory_free"] != 10 * GiB or entries[busy]["free_slots"] != 0:
                    return False
            return True

        wait_until(changes_arrived, 40, "both changes at every node")

        # Who can run a 20 GiB, one-GPU job? Only the H100 node now; the API and the CLI agree.
        capable = nodes[5].get("/api/capacity/capable?gpu=1&gpu_mem=20GiB")
        assert [c["peer_id"] for c in capable["candidates"]] == [nodes[2].peer_id]
        out = subprocess.run(poolai_command("--data-dir", str(nodes[6].data_dir), "peers", "--capable",
                                        "--gpu", "2", "--cc", "9.0", "--json"),
                             capture_output=True, text=True, timeout=60, check=True)
        assert [c["peer_id"] for c in json.loads(out.stdout)["candidates"]] == [nodes[2].peer_id]

        # A stopped node leaves every table once its advert expires (3 heartbeats here).
        gone = nodes[7]
        code, _ = gone.stop(signal.SIGTERM)
        assert code == 0
        wait_until(lambda: all(gone.peer_id not in table(n) for n in nodes[:7]), 40,
                   "the stopped node to expire everywhere")
        assert all(n.alive for n in nodes[:7])

        # The node processes never loaded torch.
        for n in nodes[:7]:
            maps = Path(f"/proc/{n.pid}/maps")
            if maps.exists():
                assert "torch" not in maps.read_text(), n.peer_id
    except AssertionError as exc:
        dead = "\n\n".join(f"{n.peer_id} exited {n.returncode}:\n{n.log()}" for n in nodes
                           if n.proc is not None and not n.alive)
        raise AssertionError(f"{exc}\n{dead}") from None
    finally:
        stop_all(nodes)
