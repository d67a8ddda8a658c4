"""Reachability as a node service: asks peers to dial it back, and dials back for peers.

As a requester, every tick it asks :class:`~poolai.node.reach.rules.Rechecks` whether a
round is due; a round asks up to ``servers`` peers at once (each under one deadline) and
hands their answers to :func:`~poolai.node.reach.rules.conclude`. Between rounds it asks
one connected peer at a time, through identify, where it sees this node, so a changed
address starts a round (``Rechecks.observe``).

As a server (``/poolai/reach/1.0.0``) it dials a requester back from a host of its own
with a throw-away identity (:func:`poolai.mesh.reach.open_dialer`), at the requester's
observed IP only, within :class:`~poolai.node.reach.rules.ServerPolicy`'s limits.
"""

from __future__ import annotations

import logging
import random
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import trio

from poolai.mesh import reach, rpc
from poolai.mesh.errors import MeshError
from poolai.mesh.host import MeshHost
from poolai.node.reach import roles
from poolai.node.reach.rules import (
    NOT_CHECKED,
    Answer,
    Candidate,
    ReachConfig,
    Rechecks,
    ServerLimits,
    ServerPolicy,
    Tried,
    Verdict,
    choose_servers,
    conclude,
    merge,
)

if TYPE_CHECKING:
    from poolai.mesh.overlay_net import OverlayNode
    from poolai.node.context import NodeContext

log = logging.getLogger(__name__)

TICK = 1.0  # seconds between checks whether a round is due
ASK_TIMEOUT = 25.0  # one request: up to five dial-backs of ServerLimits.dial_timeout each
IDENTIFY_TIMEOUT = 5.0
MAX_NO_PROTOCOL = 4096  # peers remembered as not speaking the protocol (old nodes)


@dataclass
class _Pending:
    """A request in flight: the connection it went on, and nonces that came back another way."""

    server: str
    connection: object = None
    receipts: int = 0


class Advertiser(Protocol):
    """Where the verdict is advertised (the capacity service)."""

    def set_reach(self, state: str) -> None: ...


class ReachService:
    name = "reach"

    def __init__(self, ctx: NodeContext, config: ReachConfig | None = None,
                 limits: ServerLimits | None = None, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None, *, overlay: OverlayNode | None = None,
                 advertiser: Advertiser | None = None) -> None:
        """``config`` defaults to rounds every ``ctx.config.reach_interval`` seconds. After
        each round the verdict's roles apply (:mod:`poolai.node.reach.roles`): ``overlay``
        keeps fewer incoming links while the node is private, ``advertiser`` puts the
        verdict in the capacity advert. Either may be None (tests): that role is skipped."""
        self.host: MeshHost = ctx.host
        self.overlay = overlay
        self.advertiser = advertiser
        self.relay_addrs: tuple[str, ...] = ()  # this node's /p2p-circuit addresses (set_relay_addrs)
        self.config = config or ReachConfig.every(float(ctx.config.reach_interval))
        self.policy = ServerPolicy(limits)
        self.clock = clock
        self.rng = rng or random.Random()
        self.verdict: Verdict = NOT_CHECKED  # what the node believes (see rules.merge)
        self.last_round: Verdict | None = None
        self.rounds = 0
        self.rechecks = Rechecks(self.config, clock())
        self.dialer: MeshHost | None = None
        self._pending: dict[bytes, _Pending] = {}
        self._serving: set[str] = set()  # requesters being dialled back now
        self._no_protocol: set[str] = set()
        self._round_done = trio.Event()
        self._round_lock = trio.Lock()  # one round at a time (the loop's and the owner's)
        lim = self.policy.limits
        self._server = rpc.Service(reach.PROTOCOL, self._serve, rpc.ServiceConfig(
            request_types=(reach.DialRequest,), max_frame=reach.MAX_FRAME, read_timeout=5.0,
            handler_timeout=lim.dial_timeout * (reach.MAX_PORTS + 1) + 2.0,
            max_concurrent=lim.concurrent))
        self._back = rpc.Service(reach.BACK_PROTOCOL, self._on_back, rpc.ServiceConfig(
            request_types=(reach.DialBack,), max_frame=reach.MAX_FRAME, read_timeout=5.0,
            handler_timeout=1.0, max_concurrent=16))

    # ------------------------------------------------------------------ running
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        reach.serve(self.host, reach.BACK_PROTOCOL, self._back)
        async with reach.open_dialer() as dialer:
            self.dialer = dialer
            reach.serve(self.host, reach.PROTOCOL, self._server)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_observed)
                task_status.started()
                while True:
                    reason = self.rechecks.due(self.clock(), len(self._candidates()), self._listen())
                    if reason is not None:
                        await self.check(reason)
                    await trio.sleep(TICK)

    async def wait_round(self) -> Verdict:
        """Wait for the next round to end; returns what the node then believes."""
        await self._round_done.wait()
        return self.verdict

    async def check(self, reason: str = "asked") -> Verdict:
        """One round now: ask the chosen peers, conclude, remember. Returns the round's own
        verdict (:attr:`verdict` may keep an earlier conclusive one, see ``rules.merge``)."""
        async with self._round_lock:
            return await self._check(reason)

    async def _check(self, reason: str) -> Verdict:
        listen = self._listen()
        own = [p[0] for a in listen if (p := reach.parse_tcp_addr(a))]
        if self.verdict.observed_ip:
            own.append(self.verdict.observed_ip)
        servers = choose_servers(self._candidates(), own, self.config.servers, self.rng,
                                 skip=self._no_protocol)
        ports = sorted({p[1] for a in listen if (p := reach.parse_tcp_addr(a))})[:reach.MAX_PORTS]
        answers: list[Answer] = []
        async with trio.open_nursery() as nursery:
            for server in servers:
                nursery.start_soon(self._ask, server, tuple(ports), answers)
        verdict = conclude(answers, len(servers), self.config, self.clock(), reason)
        self.rounds += 1
        self.last_round = verdict
        previous, self.verdict = self.verdict, merge(self.verdict, verdict, self.config)
        self.rechecks.round_done(verdict, listen)
        if self.verdict.line() != previous.line():
            log.info("reachability (%s): %s", reason, self.verdict.line())
        self._apply_roles()
        self._round_done.set()
        self._round_done = trio.Event()
        return verdict

    async def _ask(self, server: str, ports: tuple[int, ...], answers: list[Answer]) -> None:
        nonce = secrets.token_bytes(reach.NONCE_MIN)
        pending = self._pending[nonce] = _Pending(server)
        via: list[reach.Via] = []

        def note(v: reach.Via) -> None:
            pending.connection = v.connection
            via.append(v)

        try:
            reply = await reach.ask(self.host, server, reach.DialRequest(nonce=nonce, ports=ports), note,
                                    timeout=ASK_TIMEOUT)
        except MeshError as exc:
            old = self.host.supports(server, reach.PROTOCOL) is False
            if old and len(self._no_protocol) < MAX_NO_PROTOCOL:
                self._no_protocol.add(server)  # an older node: it will not learn the protocol
            log.debug("reach: %s gave no answer: %s", server[-8:], exc)
            return
        finally:
            self._pending.pop(nonce, None)
        observed = reach.parse_tcp_addr(reply.observed)
        claims = [r for r in reply.results if r.ok]
        # Every claimed success must have delivered our nonce over a fresh inbound connection;
        # a server claiming more than we received gets none of its claims believed.
        believed = 0 < len(claims) <= pending.receipts
        tried = tuple(Tried(r.addr, r.ok, r.ok and believed, r.error) for r in reply.results)
        v = via[0] if via else None
        answers.append(Answer(server, observed, v.local if v else None,
                              bool(v and not v.inbound), tried))
        if observed is not None:
            self.rechecks.observe(observed[0])

    async def _watch_observed(self) -> None:
        """Between rounds, ask one connected peer at a time (identify) where it sees us."""
        every = max(TICK, min(60.0, self.config.interval / 4))
        while True:
            await trio.sleep(every)
            peers = [c.peer_id for c in self._candidates() if not c.relayed]
            if not peers or self.rechecks.last_round is None:
                continue
            peer = self.rng.choice(peers)
            with trio.move_on_after(IDENTIFY_TIMEOUT):
                try:
                    observed = await self.host.identify_observed(peer)
                except MeshError:
                    continue
                if observed and (parsed := reach.parse_tcp_addr(observed)):
                    self.rechecks.observe(parsed[0])

    # ------------------------------------------------------------------ serving
    async def _serve(self, via: reach.Via, request: reach.DialRequest) -> reach.DialReply:
        if not reach.NONCE_MIN <= len(request.nonce) <= reach.NONCE_MAX:
            raise rpc.RemoteFault("bad_request", f"a nonce is {reach.NONCE_MIN}..{reach.NONCE_MAX} bytes")
        if via.remote is None or self.dialer is None:
            raise rpc.RemoteFault("refused", "cannot tell where the request came from")
        if via.peer_id in self._serving:
            raise rpc.RemoteFault("busy", "a dial-back to you is already in progress")
        refused = self.policy.admit(via.peer_id, via.remote[0], self.clock())
        if refused is not None:
            raise rpc.RemoteFault("busy", f"dial-back limit reached ({refused})")
        self._serving.add(via.peer_id)
        try:
            results: list[reach.DialResult] = []
            through = False
            for addr in ServerPolicy.targets(via.remote, request.ports):
                if through:
                    results.append(reach.DialResult(addr=addr, ok=False,
                                                    error="not tried: got through already"))
                    continue
                try:
                    await reach.dial_back(self.dialer, via.peer_id, addr, request.nonce,
                                          timeout=self.policy.limits.dial_timeout)
                    results.append(reach.DialResult(addr=addr, ok=True))
                    through = True
                except MeshError as exc:
                    results.append(reach.DialResult(addr=addr, ok=False, error=str(exc)[:160]))
        finally:
            self._serving.discard(via.peer_id)
        return reach.DialReply(observed=reach.tcp_addr(*via.remote), results=tuple(results))

    async def _on_back(self, via: reach.Via, back: reach.DialBack) -> reach.DialBackAck:
        pending = self._pending.get(back.nonce)
        if pending is None:
            raise rpc.RemoteFault("refused", "no dial-back of that nonce is awaited")
        if not via.inbound or via.connection is pending.connection:
            raise rpc.RemoteFault("refused", "a dial-back must come on a new inbound connection")
        pending.receipts += 1
        return reach.DialBackAck()

    # ------------------------------------------------------------------ roles
    def set_relay_addrs(self, addrs: Sequence[str]) -> None:
        """The hook for circuit relay: this node's ``/p2p-circuit`` addresses, each time its
        relay reservations change (empty when it holds none). They go into the status line
        ("behind NAT, reachable through relays ...")."""
        self.relay_addrs = tuple(addrs)

    def _apply_roles(self) -> None:
        state = self.verdict.state
        if self.overlay is not None:
            table = self.overlay.table
            table.limit_incoming(roles.incoming_cap(table.config.max_incoming, state))
        if self.advertiser is not None:
            self.advertiser.set_reach(state)

    def summary(self) -> str:
        """The line ``poolai status`` and the status page show (:func:`roles.summary`)."""
        v = self.verdict
        return roles.summary(v.state, public_addr=v.public_addr, relay_addrs=self.relay_addrs,
                             detail=v.line(), answers=v.answers)

    # ------------------------------------------------------------------ state
    def _candidates(self) -> list[Candidate]:
        out = []
        for peer in self.host.member_peers():  # never another node's dial-back identity
            if peer in self._no_protocol:
                continue
            remote = self.host.peer_remote_addr(peer)
            out.append(Candidate(peer, remote[0] if remote else None))
        return out

    def _listen(self) -> list[str]:
        return self.host.transport_addrs()

    def status(self) -> dict[str, Any]:
        """The ``reach`` section of ``/api/status``."""
        now = self.clock()
        out: dict[str, Any] = self.verdict.as_json()
        out["age_s"] = round(now - self.verdict.at, 1) if self.rounds else None
        out["rounds"] = self.rounds
        out["summary"] = self.summary()
        out["relay_addrs"] = list(self.relay_addrs)
        out["last_round"] = self.last_round.as_json() if self.last_round else None
        out["server"] = {"served": self.policy.served, "refused": dict(self.policy.refused),
                         **{k: getattr(self._server.stats, k) for k in ("rejected_busy", "bad_requests")}}
        return out
