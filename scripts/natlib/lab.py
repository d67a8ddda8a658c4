"""Real ``poolai node run`` processes in a built lab, and what they say about each other.

:func:`open_lab` builds the network (:func:`natlib.netns.open_network`), starts one
node in each node namespace (the public bootstrap first, every other node joining
through it), and on the way out stops the nodes before the namespaces go. Each node
listens on its own address at :data:`natlib.topology.PORT`; its local API binds
127.0.0.1 inside its namespace, so the lab reads it over the API's Unix socket in the
node's data directory, which every namespace shares.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from natlib.classify import Snapshot, Socket
from natlib.netns import LabError, established, in_ns, open_network
from natlib.topology import LabNode, Topology, pairs
from poolai.node.cli.local_api import find_node
from poolai.node.launcher import NodeProcess, poolai_command, stop_all

# The live tests' quick settings: overlay probes every few seconds, adverts every second,
# no redundant job runs, no storage upkeep during a lab, reachability re-checked every 20 s.
FAST = {"POOLAI_OVERLAY_SCALE": "0.2", "POOLAI_CAPACITY_HEARTBEAT": "1", "POOLAI_REDUNDANCY_FRACTION": "0",
        "POOLAI_STORAGE_INTERVAL": "86400", "POOLAI_STORAGE_QUOTA": "1GiB", "POOLAI_JOB_SLOTS": "0",
        "POOLAI_REACH_INTERVAL": "20", "POOLAI_LOG_LEVEL": "warning"}
START_TIMEOUT = 120.0


class Lab:
    """The running nodes of a built topology, by name."""

    def __init__(self, topo: Topology, root: Path, env: Mapping[str, Mapping[str, str]]) -> None:
        self.topo = topo
        self.root = root
        self.env = env
        self.nodes: dict[str, NodeProcess] = {}
        self.ready_at: dict[str, float] = {}  # time.monotonic() when each node was up
        self.ready_wall: dict[str, float] = {}  # the same on time.time(), as nodes report times

    def start(self) -> None:
        """Start the bootstrap, then every other node at once; NodeStartError if one is not
        up within :data:`START_TIMEOUT` seconds."""
        boot = self.topo.bootstrap
        self._launch(boot, ()).wait_ready(START_TIMEOUT)
        self.ready_at[boot.name], self.ready_wall[boot.name] = time.monotonic(), time.time()
        rest = [n for n in self.topo.nodes if n.name != boot.name]
        for node in rest:
            self._launch(node, ("--bootstrap", self.nodes[boot.name].addr))

        def ready(node: LabNode) -> None:
            self.nodes[node.name].wait_ready(START_TIMEOUT)
            self.ready_at[node.name], self.ready_wall[node.name] = time.monotonic(), time.time()

        with ThreadPoolExecutor(max(1, len(rest))) as pool:
            list(pool.map(ready, rest))

    def _launch(self, node: LabNode, flags: tuple[str, ...]) -> NodeProcess:
        process = NodeProcess(self.root / node.name, *flags, env={**FAST, **self.env.get(node.name, {})},
                              program=in_ns(node.namespace) + poolai_command(), listen=node.listen)
        self.nodes[node.name] = process
        return process.launch()

    def stop(self) -> None:
        stop_all(self.nodes.values())

    # -- reading the nodes ----------------------------------------------------------------

    def api(self, name: str, method: str, path: str, timeout: float = 10.0, **kw: Any) -> httpx.Response:
        """A request to node ``name``'s local API, with its admin token, over its socket."""
        local = find_node(self.nodes[name].data_dir)
        with local.client(timeout) as client:
            return client.request(method, local.base + path, headers=local.headers, **kw)

    def status(self, name: str) -> dict[str, Any]:
        reply = self.api(name, "GET", "/api/status")
        reply.raise_for_status()
        return reply.json()

    def peer_id(self, name: str) -> str:
        return self.nodes[name].peer_id

    def snapshot(self, with_sockets: bool = True) -> Snapshot:
        """Every node's connected peers (and, ``with_sockets``, its namespace's TCP
        connections). A node that does not answer counts as connected to nobody."""
        peers: dict[str, dict[str, list[str]]] = {}
        sockets: dict[str, list[Socket]] = {}
        relayed: dict[str, frozenset[str]] = {}
        for node in self.topo.nodes:
            try:
                listed = self.status(node.name)["peers"]
            except (httpx.HTTPError, OSError, KeyError, ValueError):
                listed = []
            peers[node.name] = {p["peer_id"]: list(p.get("addrs") or ()) for p in listed}
            relayed[node.name] = frozenset(p["peer_id"] for p in listed if p.get("relayed"))
            if with_sockets:
                try:
                    sockets[node.name] = established(node.namespace)
                except LabError:
                    sockets[node.name] = []
        return Snapshot({n: p.peer_id for n, p in self.nodes.items() if p.info}, peers, sockets, relayed)

    def watch(self, seconds: float, until: Callable[[Snapshot], bool] | None = None,
              interval: float = 1.0) -> dict[tuple[str, str], float]:
        """Poll the nodes for ``seconds`` (or until ``until(snapshot)`` holds); each pair's
        seconds from the later of its two nodes being up to the first poll that found them
        connected (either side listing the other)."""
        first: dict[tuple[str, str], float] = {}
        deadline = time.monotonic() + seconds
        while True:
            now = time.monotonic()
            snap = self.snapshot(with_sockets=until is not None)
            for a, b in pairs(self.topo.nodes):
                key = (a.name, b.name)
                if key not in first and (snap.lists(a, b) or snap.lists(b, a)):
                    first[key] = round(now - max(self.ready_at[a.name], self.ready_at[b.name]), 1)
            if (until is not None and until(snap)) or now >= deadline:
                return first
            time.sleep(max(0.0, min(interval, deadline - time.monotonic())))


@contextlib.contextmanager
def open_lab(topo: Topology, root: Path, env: Mapping[str, Mapping[str, str]] | None = None,
             keep: bool = False) -> Iterator[Lab]:
    """Build ``topo``, start its nodes (data directories under ``root``; ``env`` adds
    environment per node name), and yield the :class:`Lab`. On the way out the nodes
    stop, then the namespaces go (unless ``keep``)."""
    with open_network(topo, keep=keep):
        lab = Lab(topo, root, env or {})
        try:
            lab.start()
            yield lab
        finally:
            if not keep:
                lab.stop()
