"""Reachability against real hosts and node processes.

* In one process: servers that answer "ok" without dialling back, or "dial back" over the
  connection the request came on (py-libp2p's AutoNAT v1), never make a node public; a
  requester past its limits is answered busy.
* Node processes on loopback: a node whose listen address the others can dial concludes
  public, at that address.
* A firewalled node (its own network namespace behind a router namespace whose iptables
  masquerades and drops new inbound connections; its peers in a third namespace) concludes
  private, behind a port-preserving NAT, and the firewall counted the dial-backs it dropped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from poolai.mesh import reach, rpc
from poolai.mesh.admission import Rate
from poolai.mesh.errors import RemoteError
from poolai.mesh.host import MeshHost, open_host, split_p2p_addr
from poolai.node.cli.local_api import fetch_local
from poolai.node.context import NodeContext
from poolai.node.launcher import NodeProcess, poolai_command, stop_all, wait_until
from poolai.node.reach.rules import PRIVATE, PUBLIC, ReachConfig, ServerLimits
from poolai.node.reach.service import ReachService

pytestmark = [pytest.mark.live, pytest.mark.timeout(120)]
LOOPBACK = "/ip4/127.0.0.1/tcp/0"
FAST = {"POOLAI_OVERLAY_SCALE": "0.05", "POOLAI_REACH_INTERVAL": "20"}


def service(host: MeshHost, **kw) -> ReachService:
    return ReachService(NodeContext(SimpleNamespace(reach_interval=3600), Path("/nonexistent"), host), **kw)


async def connect(a: MeshHost, b: MeshHost) -> None:
    peer_id, addr = split_p2p_addr(b.addrs()[0])
    await a.connect(peer_id, [addr])
    await a.wait_identified(peer_id)  # servers are chosen among members: identified peers


def liar(host: MeshHost, *, over_same_connection: bool) -> None:
    """A server that claims every dial-back got through. With ``over_same_connection`` it
    first delivers the nonce as AutoNAT v1 would dial: over the request's own connection."""

    async def handle(via: reach.Via, request: reach.DialRequest) -> reach.DialReply:
        if over_same_connection:
            try:
                await host.request(via.peer_id, reach.BACK_PROTOCOL, reach.DialBack(nonce=request.nonce),
                                   (reach.DialBackAck,), timeout=5)
            except RemoteError as exc:
                delivered.append(exc.code)
        observed = reach.tcp_addr(*via.remote)
        return reach.DialReply(observed=observed, results=(reach.DialResult(addr=observed, ok=True),))

    delivered: list[str] = []
    host.delivered = delivered  # type: ignore[attr-defined]
    reach.serve(host, reach.PROTOCOL, rpc.Service("liar", handle, rpc.ServiceConfig((reach.DialRequest,))))


async def test_servers_that_answer_over_the_old_connection_never_make_a_node_public():
    with trio.fail_after(30):
        async with open_host(create_new_key_pair(), [LOOPBACK]) as a, \
                open_host(create_new_key_pair(), [LOOPBACK]) as b, \
                open_host(create_new_key_pair(), [LOOPBACK]) as c, \
                open_host(create_new_key_pair(), [LOOPBACK]) as d, trio.open_nursery() as nursery:
            checker = service(a, config=ReachConfig(servers=3, start_grace=1e9))
            await nursery.start(checker.run)
            liar(b, over_same_connection=False)
            liar(c, over_same_connection=True)
            liar(d, over_same_connection=True)
            for server in (b, c, d):
                await connect(a, server)
            verdict = await checker.check("test")
            # all three answered, all three claimed success, none was believed
            assert (verdict.state, verdict.answers, verdict.unverified) == (PRIVATE, 3, 3)
            assert verdict.public_addr is None
            assert c.delivered == d.delivered == ["refused"]  # the nonce on the old connection
            nursery.cancel_scope.cancel()


async def test_honest_servers_get_through_and_limit_a_requester():
    limits = ServerLimits(per_peer=Rate(1 / 600, 2))
    with trio.fail_after(30):
        async with open_host(create_new_key_pair(), [LOOPBACK]) as a, \
                open_host(create_new_key_pair(), [LOOPBACK]) as b, \
                open_host(create_new_key_pair(), [LOOPBACK]) as c, trio.open_nursery() as nursery:
            checker = service(a, config=ReachConfig(servers=2, private_min=2, start_grace=1e9))
            servers = [service(h, limits=limits) for h in (b, c)]
            for s in (checker, *servers):
                await nursery.start(s.run)
            await connect(a, b)
            await connect(a, c)
            verdict = await checker.check("test")
            assert (verdict.state, verdict.confirmed) == (PUBLIC, 2)
            assert verdict.public_addr == a.transport_addrs()[0]
            assert verdict.mapping.nat is False and verdict.unverified == 0
            assert (await checker.check("again")).state == PUBLIC
            assert (await checker.check("once too often")).answers == 0  # both answered busy
            assert servers[0].status()["server"]["refused"]["peer_rate"] == 1
            # the dial-backs came from throw-away identities, which hung up: a keeps only b and c
            assert set(a.connected_peers()) == {b.peer_id, c.peer_id}
            with pytest.raises(RemoteError) as busy:
                await reach.ask(a, b.peer_id, reach.DialRequest(nonce=b"x" * 16, ports=()), lambda v: None,
                                timeout=5)
            assert busy.value.code == "busy"
            nursery.cancel_scope.cancel()


def test_node_processes_on_loopback_conclude_public(tmp_path):
    a = NodeProcess(tmp_path / "a", env=FAST).start()
    nodes = [a]
    try:
        for name in "bcd":
            nodes.append(NodeProcess(tmp_path / name, "--bootstrap", a.addr, env=FAST).start())
        listen = split_p2p_addr(a.addr)[1]
        wait_until(lambda: a.get("/api/reach")["state"] == PUBLIC, 60, "A concluding public")
        section = a.status()["reach"]
        assert section["public_addr"] == listen and section["confirmed"] >= 2
        assert section["line"] == f"reachable from the internet at {listen}"
        out = subprocess.run([*poolai_command(), "--data-dir", str(a.data_dir), "status"],
                             capture_output=True, text=True, timeout=30)
        assert f"reach:    reachable from the internet at {listen}" in out.stdout
        page = a.get("/api/page")["node"]["reach"]
        assert page["state"] == PUBLIC and page["public_addr"] == listen
        assert section["summary"] == page["line"] == section["line"]
        # the verdict travels in A's capacity advert
        b = nodes[1]
        wait_until(lambda: any(e["peer_id"] == a.peer_id and e["reach"] == PUBLIC
                               for e in b.get("/api/capacity")["entries"]), 30, "B reading A's verdict")
    finally:
        stop_all(nodes)


# ----------------------------------------------------------------------------- a firewalled node

NS = "pa-reach"
HOME, ROUTER, NET = f"{NS}-home", f"{NS}-rtr", f"{NS}-net"
WAN_IP, LAN_IP, NODE_IP = "198.51.100.1", "192.168.77.1", "192.168.77.2"
PEER_IPS = ("198.51.100.2", "198.51.100.3", "198.51.100.4")


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def make_network() -> None:
    """home (A) -- router (masquerade; new inbound dropped) -- net (the peers)."""
    for ns in (HOME, ROUTER, NET):
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "-n", ROUTER, "link", "add", "lan", "type", "veth", "peer", "name", "eth0", "netns", HOME)
    sh("ip", "-n", ROUTER, "link", "add", "wan", "type", "veth", "peer", "name", "eth0", "netns", NET)
    for ns, dev, addr in ((ROUTER, "lan", f"{LAN_IP}/24"), (ROUTER, "wan", f"{WAN_IP}/24"),
                          (HOME, "eth0", f"{NODE_IP}/24"), *((NET, "eth0", f"{ip}/24") for ip in PEER_IPS)):
        sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
    for ns, dev in ((ROUTER, "lan"), (ROUTER, "wan"), (HOME, "eth0"), (NET, "eth0")):
        sh("ip", "-n", ns, "link", "set", dev, "up")
    sh("ip", "-n", HOME, "route", "add", "default", "via", LAN_IP)
    rtr = ["ip", "netns", "exec", ROUTER]
    sh(*rtr, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    sh(*rtr, "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE")
    for chain in ("FORWARD", "INPUT"):
        sh(*rtr, "iptables", "-A", chain, "-i", "wan", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED",
           "-j", "ACCEPT")
        sh(*rtr, "iptables", "-A", chain, "-i", "wan", "-p", "tcp", "-j", "DROP")


def dropped() -> int:
    """Packets the router's firewall dropped coming in from the internet side."""
    out = sh("ip", "netns", "exec", ROUTER, "iptables", "-L", "-v", "-n", "-x")
    return sum(int(line.split()[0]) for line in out.splitlines() if " DROP " in f" {line} ")


def remove_network() -> None:
    for ns in (HOME, ROUTER, NET):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture
def firewalled():
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("iptables"):
        pytest.skip("needs root, ip and iptables (scripts/test.sh installs iptables)")
    remove_network()
    make_network()
    try:
        yield
    finally:
        remove_network()


def in_ns(ns: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *poolai_command()]


def test_a_firewalled_node_concludes_private(tmp_path, firewalled):
    peers = [NodeProcess(tmp_path / f"p{i}", env=FAST, program=in_ns(NET), listen=f"/ip4/{ip}/tcp/4001")
             for i, ip in enumerate(PEER_IPS)]
    nodes = list(peers)
    try:
        peers[0].start()
        for p in peers[1:]:
            p.flags = ("--bootstrap", peers[0].addr)
            p.start()
        a = NodeProcess(tmp_path / "a", "--bootstrap", peers[0].addr, env=FAST, program=in_ns(HOME),
                        listen=f"/ip4/{NODE_IP}/tcp/4001")
        nodes.append(a.start())

        def section() -> dict:  # the node's API listens in its namespace: ask over its socket
            return fetch_local(a.data_dir, "/api/reach", 5.0)

        wait_until(lambda: section()["state"] == PRIVATE, 60, "A concluding private")
        verdict = section()
        assert verdict["answers"] >= 3 and verdict["unverified"] == 0 and verdict["public_addr"] is None
        assert verdict["observed_ip"] == WAN_IP
        assert verdict["mapping"]["nat"] is True and verdict["mapping"]["port_preserving"] is True
        assert verdict["line"] == "behind NAT (port-preserving mapping), not reachable directly"
        # Its public peers serve as circuit relays: it holds slots on them and says so.
        wait_until(lambda: section()["summary"].startswith("behind NAT, reachable through relays /ip4/"),
                   30, "A holding relays")
        assert "/p2p-circuit" in section()["summary"]
        overlay = fetch_local(a.data_dir, "/api/status", 5.0)["overlay"]
        assert overlay["incoming_cap"] == 8  # a quarter of the 32 a public node keeps
        a_id = fetch_local(a.data_dir, "/api/status", 5.0)["peer_id"]
        wait_until(lambda: any(e["peer_id"] == a_id and e["reach"] == PRIVATE
                               for e in fetch_local(peers[0].data_dir, "/api/capacity", 5.0)["entries"]),
                   30, "a peer reading A's verdict")
        assert dropped() >= 3  # the dial-backs were made, and the firewall dropped them
        served = [fetch_local(p.data_dir, "/api/reach", 5.0)["server"]["served"] for p in peers]
        assert sum(served) >= 3
    finally:
        stop_all(nodes)
