"""The node: the composition root that owns the nursery, the host and every service.

Start order: admin token and in-memory log ring → identity → libp2p host →
protocol services → connection manager → local API → runtime file. Stop order
is the reverse, driven by cancelling the node's nursery; the peer book is saved
on the way out so a restarted node can rejoin without its bootstrap list.

The services are built by :func:`build_services` in dependency order, each given the
:class:`~poolai.node.context.NodeContext` and the services it uses, typed; nothing
below this module imports it (``tests/test_import_cycles.py``). Who uses whom:

- capacity: the overlay (this node's coordinate), credits (reputation ranks peers);
- credits: the capacity table (what a worker advertised bounds what it may claim);
- storage: the overlay (the ring shares are placed on), credits (audits are paid);
- jobs: capacity (where to offer), storage (job files), credits (checks and pay);
- companion: reads all of the above for its alerts, history and Telegram bot.

The capacity table is made first and handed to both capacity and credits, so neither
service needs the other to exist first. See docs/architecture.md.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from poolai.mesh import identity
from poolai.mesh.admission import AdmissionConfig, InboundAdmission, Rate, inbound_cap_for
from poolai.mesh.discovery import ConnectionManager
from poolai.mesh.durable import write_atomic as _atomic_write
from poolai.mesh.errors import PortInUse
from poolai.mesh.host import MeshHost, check_port_free, open_host, split_p2p_addr
from poolai.mesh.peers import PeerBook
from poolai.node import __version__, auth
from poolai.node.capacity.rules import advert_table
from poolai.node.capacity.service import CapacityService
from poolai.node.companion.service import CompanionService
from poolai.node.config import Config, ConfigError
from poolai.node.context import NodeContext, NodeService
from poolai.node.credits.service import CreditsService
from poolai.node.files.service import StorageService
from poolai.node.jobs.service import JobService
from poolai.node.logring import LogRing
from poolai.node.overlay.service import OverlayService
from poolai.node.reach import roles
from poolai.node.reach.service import ReachService
from poolai.node.relay.service import RelayService
from poolai.node.runtime import API_SOCKET, RUNTIME_FILE, lock_data_dir
from poolai.node.web.server import open_tcp_socket, open_unix_listener, remove_socket, serve_api

log = logging.getLogger(__name__)

KEY_FILE = "identity.key"
PEERS_FILE = "peers.json"
SAVE_PEERS_EVERY = 30.0


class Node:
    """One PoolAI node. Use :func:`open_node`, or ``await nursery.start(node.run)``."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.data_dir = config.data_dir
        self.host: MeshHost | None = None
        self.book: PeerBook | None = None
        self.connections: ConnectionManager | None = None
        self.api_url: str | None = None
        self.api_socket: Path | None = None
        self.admin_token = ""  # read or made by run(); see poolai.node.auth
        self.admin_token_created = False
        self.log_ring: LogRing | None = None  # the log tail the status page shows
        self.services: list[NodeService] = []  # in start order; the same objects as below
        self.overlay: OverlayService | None = None
        self.capacity: CapacityService | None = None
        self.credits: CreditsService | None = None
        self.files: StorageService | None = None
        self.jobs: JobService | None = None
        self.relay: RelayService | None = None
        self.companion: CompanionService | None = None
        self.reach: ReachService | None = None
        self.started_at = 0.0
        self._stopped = trio.Event()

    @property
    def peer_id(self) -> str:
        assert self.host is not None, "node is not running"
        return self.host.peer_id

    @property
    def status_url(self) -> str:
        """The status page's URL with the admin token in its fragment (which browsers never send)."""
        assert self.api_url is not None, "node is not running"
        return f"{self.api_url}/#token={self.admin_token}"

    async def run(self, *, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled. ``task_status.started(self)`` once every service is up."""
        if not auth.is_loopback(self.config.api_host) and not self.config.api_remote:
            raise ConfigError(f"api_host {self.config.api_host} is not a loopback address; set "
                              f"api_remote = true to serve the API beyond this machine (every request "
                              f"then needs the admin token)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        lock = lock_data_dir(self.data_dir)
        api_socket: socket.socket | None = None
        try:
            api_socket = self._claim_ports()
            self.admin_token, self.admin_token_created = auth.load_or_create_token(self.data_dir)
            self.log_ring = LogRing()
            logging.getLogger().addHandler(self.log_ring)
            try:
                await self._run(task_status, api_socket)
            finally:
                logging.getLogger().removeHandler(self.log_ring)
        finally:
            if api_socket is not None and api_socket.fileno() != -1:
                api_socket.close()  # not handed to the API server (it failed to start)
            os.close(lock)  # releases the lock

    def _claim_ports(self) -> socket.socket:
        """Bind the API's TCP port and check the listen ports before anything starts, so a
        port in use is one line naming it and the setting that changes it. Raises ConfigError."""
        cfg = self.config
        for addr in cfg.listen:
            try:
                check_port_free(addr)
            except PortInUse as exc:
                other = addr.replace(f"/tcp/{exc.port}", "/tcp/<port>", 1)
                raise ConfigError(f"listen port {exc.port} ({addr}) is in use by another program, "
                                  f"perhaps another node: choose another with --listen {other} "
                                  f"(or listen in config.toml)") from None
        try:
            return open_tcp_socket(cfg.api_host, cfg.api_port)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"api port {cfg.api_port} on {cfg.api_host} is in use by another "
                                  f"program, perhaps another node: choose another with --api-port "
                                  f"<port> (or api_port in config.toml; 0 picks a free "
                                  f"one)") from None
            raise ConfigError(f"cannot serve the API on {cfg.api_host}:{cfg.api_port}: "
                              f"{exc.strerror or exc}") from None

    async def _run(self, task_status: trio.TaskStatus[Node], api_socket: socket.socket) -> None:
        key_pair, created = identity.load_or_create(self.data_dir / KEY_FILE)
        if created:
            log.info("created a new identity in %s", self.data_dir / KEY_FILE)
        async with open_host(key_pair, self.config.listen, admission=self._admission()) as host:
            self.host = host
            self.book = PeerBook(host.peer_id)
            self._load_peers()
            built = build_services(NodeContext(self.config, self.data_dir, host, self.book))
            self.connections = ConnectionManager(
                host, self.book, target_peers=self.config.max_peers,
                inbound_cap=inbound_cap_for(self.config.max_peers),
                protected=built.overlay.overlay.link_peers)
            self.overlay, self.capacity, self.credits = built.overlay, built.capacity, built.credits
            self.files, self.jobs = built.files, built.jobs
            self.companion, self.reach = built.companion, built.reach
            self.relay = built.relay
            self.services = built.in_start_order()
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(self.connections.run)
                    for service in self.services:
                        await nursery.start(service.run)
                    listener = open_unix_listener(self.data_dir / API_SOCKET)
                    self.api_socket = self.data_dir / API_SOCKET if listener else None
                    self.api_url = await nursery.start(functools.partial(
                        serve_api, self, self.config.api_host, self.config.api_port,
                        unix_listener=listener, tcp_listener=api_socket))
                    nursery.start_soon(self._save_peers_periodically)
                    self.started_at = time.time()
                    self._write_runtime_file()
                    log.info("node %s up; api %s", host.peer_id, self.api_url)
                    task_status.started(self)
                    await trio.sleep_forever()
            finally:
                self._save_peers()
                self._remove_runtime_file()
                self._remove_socket()
                self._stopped.set()

    def _admission(self) -> InboundAdmission:
        cfg = self.config
        return InboundAdmission(AdmissionConfig(
            per_ip=Rate.of(cfg.inbound_rate_ip), per_peer=Rate.of(cfg.inbound_rate_peer),
            total=Rate.of(cfg.inbound_rate_total)))

    # ------------------------------------------------------------------ state for API and CLI
    def status(self) -> dict[str, Any]:
        host = self.host
        assert host is not None and self.book is not None
        peers = []
        for peer in host.connected_peers():
            entry = self.book.get(peer)
            peers.append(
                {
                    "peer_id": peer,
                    "addrs": list(entry.addrs) if entry else [],
                    "relayed": host.is_relayed(peer),
                    "relay": host.relay_for(peer),
                }
            )
        status = {
            "peer_id": host.peer_id,
            "addrs": host.addrs(),
            "version": __version__,
            "uptime_s": round(time.time() - self.started_at, 3),
            "peers": peers,
            "known_peers": len(self.book),
            "api": self.api_url,
        }
        if self.connections is not None:
            status["connections"] = self.connections.status()
        for service in self.services:
            status[service.name] = service.status()
        return status

    # ------------------------------------------------------------------ persistence
    def _load_peers(self) -> None:
        assert self.book is not None
        path = self.data_dir / PEERS_FILE
        try:
            loaded = self.book.restore(json.loads(path.read_text()))
            log.info("loaded %d known peer(s) from %s", loaded, path)
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s: %s", path, exc)
        for addr in self.config.bootstrap:
            peer_id, transport = split_p2p_addr(addr)
            self.book.add(peer_id, [transport], bootstrap=True)

    def _save_peers(self) -> None:
        if self.book is None:
            return
        try:
            _atomic_write(self.data_dir / PEERS_FILE, json.dumps(self.book.snapshot()).encode())
        except OSError as exc:
            log.warning("could not save known peers: %s", exc)

    async def _save_peers_periodically(self) -> None:
        while True:
            await trio.sleep(SAVE_PEERS_EVERY)
            self._save_peers()

    def _remove_socket(self) -> None:
        if self.api_socket is not None:
            with contextlib.suppress(OSError):
                remove_socket(self.api_socket)

    def _write_runtime_file(self) -> None:
        info = {"pid": os.getpid(), "peer_id": self.peer_id, "api": self.api_url,
                "addrs": self.host.addrs() if self.host else []}
        if self.api_socket is not None:
            info["api_socket"] = str(self.api_socket)
        _atomic_write(self.data_dir / RUNTIME_FILE, json.dumps(info).encode())

    def _remove_runtime_file(self) -> None:
        try:
            path = self.data_dir / RUNTIME_FILE
            if json.loads(path.read_text()).get("pid") == os.getpid():
                path.unlink()
        except (OSError, ValueError):
            pass


@dataclass(frozen=True)
class Services:
    """A node's services, each built with what it depends on."""

    overlay: OverlayService
    capacity: CapacityService
    credits: CreditsService
    files: StorageService
    jobs: JobService
    companion: CompanionService
    reach: ReachService
    relay: RelayService

    def in_start_order(self) -> list[NodeService]:
        """Each service starts after those it uses are ready (the relays that make a private
        node reachable right after the overlay, credits' ledger before the adverts that
        rank by it, storage before the jobs that move files through it; reachability's
        verdict goes to the overlay, capacity and relays, which run by then; the
        companion, which watches them all, last)."""
        return [self.overlay, self.relay, self.credits, self.capacity, self.files, self.jobs, self.reach,
                self.companion]


def build_services(ctx: NodeContext) -> Services:
    """The node's services, wired: the capacity table is made first and shared, so credits
    (which bounds claims by adverts) and capacity (which ranks by credits' reputation)
    need not know each other."""
    overlay = OverlayService(ctx)
    table = advert_table(ctx.config.capacity_heartbeat, ctx.config.capacity_expiry)
    credits = CreditsService(ctx, adverts=table)
    capacity = CapacityService(ctx, table=table, overlay=overlay.overlay, reputation=credits)
    files = StorageService(ctx, overlay=overlay.overlay, credits=credits,
                           relay_only=relay_only_rule(ctx.host, capacity.reach_of))
    jobs = JobService(ctx, capacity=capacity, storage=files, credits=credits)
    reach = ReachService(ctx, overlay=overlay.overlay, advertiser=capacity)
    relay = RelayService(ctx, overlay=overlay.overlay, reach=ReachVerdict(reach))
    companion = CompanionService(ctx, capacity=capacity, credits=credits, files=files, jobs=jobs)
    return Services(overlay, capacity, credits, files, jobs, companion, reach, relay)


class ReachVerdict:
    """The reachability verdict as the relay service asks for it."""

    def __init__(self, reach: ReachService) -> None:
        self.reach = reach

    def is_private(self) -> bool | None:
        return {roles.PRIVATE: True, roles.PUBLIC: False}.get(self.reach.verdict.state)

    def set_relay_addrs(self, addrs: Sequence[str]) -> None:
        self.reach.set_relay_addrs(addrs)


def relay_only_rule(host: MeshHost, reach_of: Callable[[str], str]) -> Callable[[str], bool]:
    """Whether a peer is reachable from this node only through a relay: its advert says
    private (``reach_of``) and no direct connection to it is open (a relayed one does not
    count)."""
    def direct(peer: str) -> bool:
        return host.is_connected(peer) and not host.is_relayed(peer)

    return lambda peer: roles.relay_only(reach_of(peer), direct(peer))


@asynccontextmanager
async def open_node(config: Config) -> AsyncIterator[Node]:
    """Run a node for the duration of the block (in-process; used by tests and tools)."""
    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(config).run)
        try:
            yield node
        finally:
            nursery.cancel_scope.cancel()
