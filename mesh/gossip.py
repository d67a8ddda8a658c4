"""GossipSub on top of :class:`~poolai.mesh.host.MeshHost`; it imports libp2p's pubsub (see host.py).

py-libp2p's pubsub is configured for a long-running node (see NETWORK.md,
"Capacity adverts"): a 1 s mesh heartbeat (its default is 120 s), adaptive
gossip off (it would stretch the heartbeat to a minute when the mesh looks
unhealthy), a per-forwarder rate limit raised well above what adverts need,
and strict message signing.

Each topic has one handler, called synchronously for every message before it
is delivered or forwarded. It returns a :class:`Verdict`; whatever happens
inside it, the wrapper returns ``False`` rather than raising (a raising sync
validator kills py-libp2p's pubsub service). Rejections cost the forwarding
peer penalty points (:class:`PenaltyBox`); a peer past the threshold is
blacklisted in pubsub and disconnected for a while.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service

from poolai.mesh.backoff import Backoff
from poolai.mesh.host import MeshHost
from poolai.mesh.patches.pubsub_writes import count_writes

log = logging.getLogger(__name__)
# A connected peer that never answers meshsub is retried every 2, 4, ... 64 housekeeping rounds.
STREAM_REPAIR_ROUNDS = Backoff(base=2, cap=64)


@dataclasses.dataclass(frozen=True, slots=True)
class GossipConfig:
    """Router and reputation settings. Times in seconds."""

    heartbeat: float = 1.0  # gossipsub mesh maintenance, not the capacity advert period
    degree: int = 6
    degree_low: int = 4
    degree_high: int = 12
    rate_limit: float = 500.0  # messages per second per forwarding peer per topic
    max_rpc: int = 1 << 20
    ban_threshold: float = 4.5  # five invalid messages in quick succession (points decay meanwhile)
    penalty_half_life: float = 60.0
    ban_seconds: float = 300.0
    reconcile_every: float = 2.0  # how often connected peers without a pubsub stream are retried
    # meshsub 1.2 adds IDONTWANT, which py-libp2p 0.8 sends for every message to every mesh
    # peer as a separate RPC, before forwarding: for sub-KiB adverts it costs more than it saves.
    idontwant: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Inbound:
    """A message as the topic handler sees it. ``forwarder`` sent it to us; ``origin`` signed it."""

    topic: str
    forwarder: str
    origin: str
    data: bytes
    received_at: float  # unix time


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    """A handler's answer: deliver and forward, or drop (``penalty`` points to the forwarder)."""

    accept: bool
    reason: str = ""
    penalty: float = 0.0


ACCEPT = Verdict(True)
Handler = Callable[[Inbound], Verdict]


class PenaltyBox:
    """Penalty points per peer, halving every ``half_life`` s; past ``threshold`` a peer is banned.

    Pure: the caller passes ``now``.
    """

    def __init__(self, *, threshold: float, half_life: float, ban_seconds: float,
                 max_peers: int = 10_000) -> None:
        self.threshold = threshold
        self.half_life = half_life
        self.ban_seconds = ban_seconds
        self.max_peers = max_peers
        self._points: dict[str, tuple[float, float]] = {}  # peer -> (points, as of)
        self._banned: dict[str, float] = {}  # peer -> until

    def score(self, peer: str, now: float) -> float:
        points, when = self._points.get(peer, (0.0, now))
        return points * math.pow(0.5, max(0.0, now - when) / self.half_life)

    def add(self, peer: str, points: float, now: float) -> bool:
        """Charge ``peer``; returns True when this charge gets it banned."""
        if points <= 0 or peer in self._banned:
            return False
        if peer not in self._points and len(self._points) >= self.max_peers:
            self._points.pop(next(iter(self._points)))  # forget the oldest offender
        total = self.score(peer, now) + points
        self._points[peer] = (total, now)
        if total >= self.threshold:
            self._banned[peer] = now + self.ban_seconds
            del self._points[peer]
            return True
        return False

    def is_banned(self, peer: str) -> bool:
        return peer in self._banned

    def banned(self) -> list[str]:
        return sorted(self._banned)

    def release(self, now: float) -> list[str]:
        """Lift bans that have run out; returns the peers released."""
        done = sorted(p for p, until in self._banned.items() if until <= now)
        for peer in done:
            del self._banned[peer]
        return done


@dataclasses.dataclass(frozen=True, slots=True)
class GossipStats:
    """Counters since start. Bytes are pubsub frames written (before Noise and yamux framing)."""

    bytes_sent: int
    rpcs_sent: int
    published: int
    accepted: int
    rejected: dict[str, int]
    banned: list[str]
    peers: int

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Gossip:
    """A running pubsub router. Create it with :func:`open_gossip`."""

    def __init__(self, host: MeshHost, pubsub: Pubsub, router: GossipSub, config: GossipConfig,
                 bans: trio.MemorySendChannel[str]) -> None:
        self.host = host
        self._router = router
        self.peer_id = host.peer_id
        self.config = config
        self._pubsub = pubsub
        self._bans = bans
        self._box = PenaltyBox(threshold=config.ban_threshold, half_life=config.penalty_half_life,
                               ban_seconds=config.ban_seconds)
        self._bytes_sent = 0
        self._rpcs_sent = 0
        self._published = 0
        self._accepted = 0
        self._rejected: Counter[str] = Counter()
        self._nursery: trio.Nursery | None = None

    # ------------------------------------------------------------------ topics
    async def join(self, topic: str, handler: Handler) -> None:
        """Subscribe to ``topic``; every message reaches ``handler`` before anyone else.

        Delivered messages are then drained and dropped: the handler has seen
        them, and a full subscription channel makes pubsub log a warning per message.
        """
        assert self._nursery is not None, "use open_gossip()"
        self._pubsub.set_topic_validator(topic, self._validator(topic, handler), False)
        subscription = await self._pubsub.subscribe(topic)
        self._nursery.start_soon(self._drain, subscription)

    async def publish(self, topic: str, data: bytes) -> None:
        """Sign and send ``data`` on ``topic``; our own handler sees it first."""
        self._published += 1
        await self._pubsub.publish(topic, data)

    def topic_peers(self, topic: str) -> set[str]:
        """Peers we hold a pubsub stream with that are subscribed to ``topic``."""
        return {str(p) for p in self._pubsub.peer_topics.get(topic, ())}

    def mesh_peers(self, topic: str) -> set[str]:
        """Peers in our gossipsub mesh for ``topic``: the ones our publishes go to at once.

        A message published while this is empty reaches nobody (py-libp2p does
        not fall back to fanout for a topic we are subscribed to).
        """
        return {str(p) for p in self._router.mesh.get(topic, ())}

    def statistics(self) -> GossipStats:
        """Counters since start (a frozen snapshot, for the status page and metrics)."""
        return GossipStats(self._bytes_sent, self._rpcs_sent, self._published, self._accepted,
                           dict(self._rejected), self._box.banned(), len(self._pubsub.peers))

    # ------------------------------------------------------------------ internals
    def _validator(self, topic: str, handler: Handler) -> Callable[[ID, Any], bool]:
        def validate(forwarder: ID, msg: Any) -> bool:
            try:
                inbound = Inbound(topic, str(forwarder), ID(msg.from_id).to_base58(), bytes(msg.data),
                                  time.time())
                verdict = handler(inbound)
            except Exception:
                # A sync validator that raises takes py-libp2p's pubsub service down with it.
                log.exception("gossip handler for %s failed; message dropped", topic)
                self._rejected["handler_error"] += 1
                return False
            if verdict.accept:
                self._accepted += 1
                return True
            self._rejected[verdict.reason or "rejected"] += 1
            self._penalise(inbound.forwarder, verdict)
            return False

        return validate

    def _penalise(self, peer: str, verdict: Verdict) -> None:
        if peer == self.peer_id or verdict.penalty <= 0:
            return
        if self._box.add(peer, verdict.penalty, time.monotonic()):
            log.warning("banning peer %s for %.0f s: repeated invalid messages (last: %s)",
                        peer, self.config.ban_seconds, verdict.reason)
            try:
                self._pubsub.add_to_blacklist(ID.from_base58(peer))
            except ValueError:
                return
            try:
                self._bans.send_nowait(peer)
            except trio.WouldBlock:
                pass  # blacklisted already; the disconnect is a courtesy

    async def _drain(self, subscription: Any) -> None:
        async for _ in subscription:
            pass

    async def _enforce_bans(self, bans: trio.MemoryReceiveChannel[str]) -> None:
        async for peer in bans:
            with trio.move_on_after(5):
                await self.host.disconnect(peer)

    async def _housekeeping(self) -> None:
        """Lift expired bans and give pubsub a stream to every connected peer it lacks.

        Connections opened before pubsub started never reach its notifee. A peer
        is only helped once it has lacked a stream for a whole round (the notifee
        may be opening one right now), and one that never answers meshsub is
        retried less and less often (every 2, 4, ... 64 rounds).
        """
        missing: dict[str, tuple[int, int]] = {}  # peer -> (round of the next try, tries so far)
        round_no = 0
        while True:
            round_no += 1
            for peer in self._box.release(time.monotonic()):
                log.info("ban on peer %s lifted", peer)
                self._pubsub.remove_from_blacklist(ID.from_base58(peer))
            now_missing = {}
            for peer in self.host.member_peers():
                pid = ID.from_base58(peer)
                if pid in self._pubsub.peers or self._box.is_banned(peer):
                    continue
                next_round, tries = missing.get(peer, (round_no + 1, 0))
                if round_no >= next_round:
                    with trio.move_on_after(self.config.reconcile_every):
                        await self._pubsub.ensure_peer_stream(pid, timeout=self.config.reconcile_every)
                    tries += 1
                    next_round = round_no + int(STREAM_REPAIR_ROUNDS.delay(tries))
                now_missing[peer] = (next_round, tries)
            missing = now_missing
            await trio.sleep(self.config.reconcile_every)

    def _count_write(self, size: int) -> None:
        self._rpcs_sent += 1
        self._bytes_sent += size


@asynccontextmanager
async def open_gossip(host: MeshHost, config: GossipConfig = GossipConfig()) -> AsyncIterator[Gossip]:
    """Run GossipSub on ``host`` for the duration of the block."""
    router = GossipSub(
        [PROTOCOL_ID_V12, PROTOCOL_ID_V11] if config.idontwant else [PROTOCOL_ID_V11],
        degree=config.degree,
        degree_low=config.degree_low,
        degree_high=config.degree_high,
        heartbeat_interval=config.heartbeat,  # type: ignore[arg-type] - float works
        adaptive_gossip_enabled=False,
        max_messages_per_topic_per_second=config.rate_limit,
    )
    pubsub = Pubsub(host.libp2p, router, strict_signing=True, max_inbound_rpc_size=config.max_rpc)
    send_bans, receive_bans = trio.open_memory_channel[str](64)
    gossip = Gossip(host, pubsub, router, config, send_bans)
    count_writes(pubsub, gossip._count_write)
    async with background_trio_service(pubsub), background_trio_service(router):
        await pubsub.wait_until_ready()
        async with trio.open_nursery() as nursery:
            gossip._nursery = nursery
            nursery.start_soon(gossip._enforce_bans, receive_bans)
            nursery.start_soon(gossip._housekeeping)
            try:
                yield gossip
            finally:
                nursery.cancel_scope.cancel()
