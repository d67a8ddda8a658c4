"""The "capacity" node service: describe this node on the capacity topic, learn everyone else.

It owns the inventory provider, publishes a signed advert on every
significant change (at most one per :data:`MIN_PUBLISH_GAP`) and on a jittered
heartbeat, verifies every advert that arrives (inside the gossip validator,
so a bad one is neither stored nor forwarded), and keeps the
:class:`~poolai.node.capacity.rules.CapacityTable` that jobs are routed from.

Round-trip estimates for ranking come from the overlay's Vivaldi coordinates
when both ends' coordinates have settled, and from pings of connected peers
(or the overlay's probes) otherwise (:meth:`CapacityService.rtt_ms` is the one
seam); a peer never measured cannot look nearer than the default. Reputation
scores come from the credits service when the node runs one
(:meth:`CapacityService.reputation_of`, :meth:`CapacityService.distrust_ms`).

Admission (the rule is in :mod:`~poolai.node.capacity.rules`): each advert's
peer is judged by :meth:`CapacityService.standing` from this node's own
knowledge (its connections, the peer book, its pings, the overlay's probes and
ring lists); adverts of peers only heard of go on probation in the table,
counted against the relay that forwarded them, and one that finds no room is
neither stored nor forwarded. The jobs service reports how its offers went
(:meth:`CapacityService.offer_failed`, :meth:`CapacityService.offer_accepted`);
peers that fail offers lose rank for a while.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import trio

from poolai.mesh import adverts
from poolai.mesh.coords import Coord, predicted_rtt
from poolai.mesh.errors import MeshError
from poolai.mesh.gossip import ACCEPT, Gossip, GossipConfig, Inbound, Verdict, open_gossip
from poolai.mesh.peer_ids import peer_id_text
from poolai.node import __version__
from poolai.node.capacity import rules as cap
from poolai.node.capacity.inventory import Inventory, InventoryProvider, open_provider
from poolai.node.capacity.rules import (
    Candidate,
    CapacityTable,
    Entry,
    LocalState,
    OfferPenalties,
    OriginRate,
    Requirements,
    Standing,
    make_advert,
    significant_change,
)
from poolai.node.credits.policy import NEUTRAL

if TYPE_CHECKING:
    from poolai.mesh.overlay_net import OverlayNode
    from poolai.node.context import NodeContext

log = logging.getLogger(__name__)

MIN_PUBLISH_GAP = 0.5  # seconds between two adverts of ours (changes coalesce); see OriginRate
JITTER = 0.1  # heartbeats are spread by +-10% so nodes do not publish in lockstep
SETTLED_ERROR = 0.8  # a Vivaldi error estimate below this is trusted for ranking
PING_EVERY = 5.0
PINGS_PER_ROUND = 4
RTT_ALPHA = 0.3  # weight of a new ping in the moving average
OVERLAY_VIEW_S = 1.0  # how long a snapshot of the overlay's measured and named peers is reused


@dataclasses.dataclass(frozen=True, slots=True)
class OverlayView:
    """What the overlay knows of peers, by peer id: measured round trips, and every peer on
    the ring lists of this node and of its ring neighbours (the peers they vouch for)."""

    measured: Mapping[str, float]
    named: frozenset[str]
    taken_at: float


class CapacityService:
    name = "capacity"

    def __init__(self, ctx: NodeContext, *, table: CapacityTable | None = None,
                 overlay: OverlayNode | None = None, reputation: cap.Reputation | None = None,
                 provider: InventoryProvider | None = None, rng: random.Random | None = None) -> None:
        """``table`` is shared with the services that read adverts (credits); ``overlay``
        gives this node's coordinate; ``reputation`` (the credits service) ranks peers.
        Each may be None: then a table of its own, no coordinate, everyone neutral."""
        cfg = ctx.config
        self.ctx = ctx
        self.host = ctx.host
        self.peer_id = ctx.host.peer_id
        self.heartbeat = cfg.capacity_heartbeat
        self.ttl = cfg.capacity_heartbeat * cfg.capacity_expiry
        self.table = table if table is not None else cap.advert_table(cfg.capacity_heartbeat,
                                                                      cfg.capacity_expiry)
        self.overlay = overlay
        self.reputation = reputation
        self.state = LocalState(peer_id=self.peer_id, software=f"poolai/{__version__}",
                                job_slots=cfg.job_slots, payout_address=cfg.payout_address)
        self._provider = provider
        self._rng = rng or random.Random()
        self._inventory: Inventory | None = None
        self._published: adverts.Advert | None = None
        self._published_bytes = 0
        self._seq = 0
        self._wake = trio.Event()
        self._gossip: Gossip | None = None
        self._rtts: dict[str, float] = {}
        self._rate = OriginRate(rate=1.0 / MIN_PUBLISH_GAP)
        self._penalties = OfferPenalties()
        self._overlay_view = OverlayView({}, frozenset(), -math.inf)
        self._rejected: dict[str, int] = {}
        public_key = self.host.key_pair.public_key.to_bytes()
        self._signer = (self.host.key_pair.private_key.sign, public_key)

    # ------------------------------------------------------------------ NodeService
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self._provider is None:
            cfg = self.ctx.config
            quota = getattr(cfg, "storage_quota", None)  # what this node offers, capped by the disk
            self._provider = open_provider(cfg.inventory_file, self.ctx.data_dir, quota)
        provider = self._provider
        try:
            self._inventory = await trio.to_thread.run_sync(provider.read)
            log.info("inventory: %s", self._inventory.note)
            gossip_config = GossipConfig(heartbeat=1.0)
            async with open_gossip(self.host, gossip_config) as gossip, trio.open_nursery() as nursery:
                self._gossip = gossip
                await gossip.join(adverts.TOPIC, self._on_advert)
                nursery.start_soon(self._poll_inventory)
                nursery.start_soon(self._publish_loop)
                nursery.start_soon(self._measure_rtts)
                nursery.start_soon(self._watch_mesh)
                task_status.started()
        finally:
            self._gossip = None
            provider.close()

    def status(self) -> dict[str, Any]:
        now = time.time()
        inventory = self._inventory
        return {
            "topic": adverts.TOPIC,
            "simulated": bool(inventory and inventory.simulated),
            "inventory_note": inventory.note if inventory else "",
            "heartbeat_s": self.heartbeat,
            "ttl_s": self.ttl,
            "seq": self._published.seq if self._published else None,
            "advert_bytes": self._published_bytes,
            "peers": len(self.table.entries(now)),
            "heard_of": self.table.heard,
            "penalised": len(self._penalties),
            "rejected": dict(self._rejected),
            "gossip": self._gossip.statistics().to_json() if self._gossip else None,
        }

    # ------------------------------------------------------------------ for other services
    @property
    def inventory(self) -> Inventory | None:
        """The latest reading of this machine (None until the service has started)."""
        return self._inventory

    def capable(self, requirements: Requirements, limit: int | None = None) -> list[Candidate]:
        """Peers (this node included) that can run a job needing ``requirements``, best first."""
        return self.table.capable(requirements, now=time.time(), rtt=self.rtt_ms, rng=self._rng,
                                  limit=limit, reputation=self.reputation_of,
                                  standing=self.standing, penalty=self.penalty_ms)

    def offer_order(self, requirements: Requirements, given: Mapping[str, int]) -> list[str]:
        """Peers to offer a job to, in order (see :func:`~poolai.node.capacity.rules.offer_order`)."""
        return cap.offer_order(self.table.entries(time.time()), requirements, rtt=self.rtt_ms,
                               rng=self._rng, reputation=self.reputation_of, given=given,
                               standing=self.standing, penalty=self.penalty_ms)

    def standing(self, peer_id: str) -> Standing:
        """How well this node knows ``peer_id``: reached, vouched for, or only heard of
        (:func:`~poolai.node.capacity.rules.standing_of`)."""
        if peer_id == self.peer_id:
            return Standing.REACHED
        view = self._overlay()
        book = self.ctx.book
        seen = book.get(peer_id) if book is not None else None
        last_contact_age = time.time() - seen.last_seen if seen is not None and seen.last_seen else None
        return cap.standing_of(connected=self.host.is_connected(peer_id),
                               measured=peer_id in self._rtts or peer_id in view.measured,
                               last_contact_age=last_contact_age, vouched=peer_id in view.named)

    def admitted(self, peer_id: str) -> bool:
        """Whether ``peer_id``'s advert counts: this node reached it or the overlay vouches for it."""
        return self.standing(peer_id) is not Standing.HEARD

    def offer_failed(self, peer_id: str, kind: str) -> None:
        """An offer to ``peer_id`` failed (``unreachable``, ``timeout``, ``busy``, ``incapable``;
        see :data:`~poolai.node.capacity.rules.OFFER_PENALTY_MS`): it loses rank for a while."""
        if peer_id != self.peer_id:
            self._penalties.failed(peer_id, kind, time.monotonic())

    def offer_accepted(self, peer_id: str) -> None:
        """``peer_id`` accepted an offer: whatever it failed before is forgiven."""
        self._penalties.succeeded(peer_id)

    def penalty_ms(self, peer_id: str) -> float:
        """What ``peer_id``'s recent failed offers add to its routing cost."""
        return self._penalties.cost_ms(peer_id, time.monotonic())

    def reputation_of(self, peer_id: str) -> float:
        """This node's reputation score for ``peer_id`` (neutral without a credits service)."""
        if self.reputation is None:
            return NEUTRAL
        return float(self.reputation.reputation_of(peer_id))

    def distrust_ms(self, peer_id: str) -> float | None:
        """What distrust of ``peer_id`` adds to its routing cost; None: route nothing to it."""
        return cap.distrust_ms(self.reputation_of(peer_id))

    def set_load(self, *, busy_slots: int | None = None, queue_length: int | None = None,
                 models: tuple[str, ...] | None = None) -> None:
        """Record how busy this node is; a change is advertised at once (within MIN_PUBLISH_GAP)."""
        changes: dict[str, Any] = {}
        if busy_slots is not None:
            changes["busy_slots"] = max(0, min(busy_slots, self.state.job_slots))
        if queue_length is not None:
            changes["queue_length"] = max(0, queue_length)
        if models is not None:
            changes["models"] = tuple(models)
        self.state = dataclasses.replace(self.state, **changes)
        self._check_change()

    def set_reach(self, state: str) -> None:
        """Record this node's reachability verdict (``public``, ``private`` or ``unknown``);
        a change is advertised at once (within MIN_PUBLISH_GAP). ValueError for another state."""
        if state not in adverts.REACH_STATES:
            raise ValueError(f"unknown reachability state {state!r}")
        if state != self.state.reach:
            self.state = dataclasses.replace(self.state, reach=state)
            self._check_change()

    def reach_of(self, peer_id: str) -> str:
        """``peer_id``'s advertised reachability; ``unknown`` without an advert."""
        entry = self.table.get(peer_id)
        return entry.advert.reach if entry is not None else "unknown"

    def rtt_ms(self, peer_id: str) -> float | None:
        """Estimated round trip to ``peer_id``: settled coordinates first, then measured pings
        or overlay probes; coordinates of a peer never measured cannot make it look near
        (:func:`~poolai.node.capacity.rules.rtt_estimate`)."""
        if peer_id == self.peer_id:
            return 0.0
        measured = self._rtts.get(peer_id)
        if measured is None:
            measured = self._overlay().measured.get(peer_id)
        local = self._local_coord()
        entry = self.table.get(peer_id)
        remote = entry.advert.coord if entry is not None else None
        predicted = None
        if (local is not None and remote is not None and local.error <= SETTLED_ERROR
                and remote.error <= SETTLED_ERROR and len(remote.vec) == len(local.vec)):
            predicted = predicted_rtt(local, Coord(tuple(remote.vec), remote.height, remote.error))
        return cap.rtt_estimate(predicted, measured)

    def _overlay(self) -> OverlayView:
        """The overlay's measured and named peers, as of at most :data:`OVERLAY_VIEW_S` ago
        (rebuilt at most once per interval: adverts and rankings ask for every peer)."""
        now = time.monotonic()
        view = self._overlay_view
        if self.overlay is None or now - view.taken_at < OVERLAY_VIEW_S:
            return view
        measured, named = {}, set()
        table = self.overlay.table
        for member in table.members():
            try:
                text = peer_id_text(member.peer_id)
            except ValueError:
                continue
            named.add(text)
            rtt = table.measured_rtt(member.peer_id)
            if rtt is not None:
                measured[text] = rtt
        self._overlay_view = OverlayView(measured, frozenset(named), now)
        return self._overlay_view

    # ------------------------------------------------------------------ inbound
    def _on_advert(self, inbound: Inbound) -> Verdict:
        """The gossip validator: verify, then store. Runs for our own adverts too."""
        try:
            data = inbound.data
            peer = inbound.origin
            advert = adverts.verify(data, now=inbound.received_at, last_seq=self.table.last_seq(peer),
                                    origin=peer, max_age=max(self.ttl, 60.0))
        except adverts.AdvertRejected as exc:
            self._rejected[exc.reason] = self._rejected.get(exc.reason, 0) + 1
            log.debug("advert from %s (via %s) rejected: %s", inbound.origin, inbound.forwarder, exc)
            return Verdict(False, exc.reason, 1.0 if exc.penalise else 0.0)
        if advert.peer_id != self.peer_id and not self._rate.allow(advert.peer_id, inbound.received_at):
            self._rejected["too_frequent"] = self._rejected.get("too_frequent", 0) + 1
            return Verdict(False, "too_frequent", 0.0)
        heard_via = inbound.forwarder if self.standing(advert.peer_id) is Standing.HEARD else None
        if not self.table.apply(advert, inbound.received_at, heard_via=heard_via):
            # No room on probation: neither kept nor passed on, so a relay that floods
            # fresh identities reaches no further than its neighbours. No fault of the relay's.
            self._rejected["not_admitted"] = self._rejected.get("not_admitted", 0) + 1
            return Verdict(False, "not_admitted", 0.0)
        return ACCEPT

    # ------------------------------------------------------------------ outbound
    def _build(self, now: float) -> adverts.Advert:
        assert self._inventory is not None
        self._seq = max(self._seq + 1, int(now * 1000))  # grows across restarts too
        coord = self._local_coord()
        wire_coord = None
        # A coordinate outside the advert's bounds is left out rather than stop our adverts.
        if (coord is not None and 1 <= len(coord.vec) <= 8 and 0 <= coord.height <= 60_000
                and all(math.isfinite(v) and abs(v) < 1e6 for v in coord.vec)
                and math.isfinite(coord.error) and coord.error >= 0):
            wire_coord = adverts.CoordAdvert(tuple(coord.vec), coord.height, min(coord.error, 10.0))
        return make_advert(self._inventory, self.state, seq=self._seq, now=now, ttl=self.ttl,
                           coord=wire_coord)

    async def _publish(self) -> None:
        assert self._gossip is not None
        advert = self._build(time.time())
        sign, public_key = self._signer
        try:
            envelope = adverts.sign(advert, sign, public_key)
            # Never publish what a peer would reject (and penalise us for).
            adverts.verify(envelope, now=advert.timestamp)
        except (ValueError, adverts.AdvertRejected) as exc:
            log.error("not publishing an invalid advert of ours: %s", exc)
            return
        self._published, self._published_bytes = advert, len(envelope)
        await self._gossip.publish(adverts.TOPIC, envelope)

    async def _publish_loop(self) -> None:
        last = -MIN_PUBLISH_GAP
        while True:
            next_beat = trio.current_time() + self.heartbeat * self._rng.uniform(1 - JITTER, 1 + JITTER)
            if self._published is None:
                next_beat = trio.current_time()
            with trio.move_on_at(next_beat):
                await self._wake.wait()
            await trio.sleep_until(last + MIN_PUBLISH_GAP)
            self._wake = trio.Event()  # after the wait: changes made during it go out now
            last = trio.current_time()
            await self._publish()
            self.table.expire(time.time())

    def _check_change(self) -> None:
        if self._inventory is None or self._published is None:
            return
        candidate = make_advert(self._inventory, self.state, seq=self._published.seq,
                                now=time.time(), ttl=self.ttl)
        if significant_change(self._published, candidate):
            self._wake.set()

    async def _watch_mesh(self) -> None:
        """Publish again as soon as the topic's mesh goes from empty to not.

        An advert published into an empty mesh reaches nobody; without this, a
        node that just started (or lost all its mesh peers) would stay unknown
        until its next heartbeat.
        """
        assert self._gossip is not None
        had_mesh = False
        while True:
            await trio.sleep(0.5)
            has_mesh = bool(self._gossip.mesh_peers(adverts.TOPIC))
            if has_mesh and not had_mesh:
                self._wake.set()
            had_mesh = has_mesh

    async def _poll_inventory(self) -> None:
        assert self._provider is not None
        while True:
            await trio.sleep(min(self.heartbeat, 1.0))
            self._inventory = await trio.to_thread.run_sync(self._provider.read)
            self._check_change()

    async def _measure_rtts(self) -> None:
        """Ping a few connected peers from the table per round (the fallback without coordinates)."""
        while True:
            await trio.sleep(PING_EVERY)
            connected = set(self.host.connected_peers())
            peers = [e.peer_id for e in self.table.entries(time.time()) if e.peer_id in connected]
            peers.sort(key=lambda p: (p in self._rtts, self._rng.random()))
            for peer in peers[:PINGS_PER_ROUND]:
                with trio.move_on_after(2):
                    try:
                        rtt = await self.host.ping(peer)
                    except (MeshError, TypeError):
                        # py-libp2p 0.8.1 ping.py:231 calls the bool `stream.is_closed` when a
                        # stream to a departing peer closed: a TypeError, not a libp2p error.
                        continue
                    old = self._rtts.get(peer)
                    self._rtts[peer] = rtt if old is None else old + RTT_ALPHA * (rtt - old)
            for gone in set(self._rtts) - {e.peer_id for e in self.table.entries(time.time())}:
                del self._rtts[gone]

    def _local_coord(self) -> Coord | None:
        """This node's Vivaldi coordinate from the overlay service, when it runs one."""
        if self.overlay is None:
            return None
        coord = self.overlay.table.coord
        return coord if isinstance(coord, Coord) else None

    # ------------------------------------------------------------------ API
    def entry_json(self, entry: Entry, now: float) -> dict[str, Any]:
        a = entry.advert
        rtt = self.rtt_ms(a.peer_id)
        return {
            "peer_id": a.peer_id, "seq": a.seq, "timestamp": a.timestamp,
            "received_at": entry.received_at, "expires_in": round(entry.expires_at - now, 3),
            "simulated": a.simulated, "software": a.software, "protocol": a.protocol,
            "reach": a.reach,
            "gpus": [{"index": g.index, "name": g.name, "uuid": g.uuid, "memory_total": g.memory_total,
                      "memory_free": g.memory_free, "compute_capability": f"{g.cc_major}.{g.cc_minor}",
                      "utilization": g.utilization, "temperature_c": g.temperature_c,
                      "power_w": g.power_w, "power_limit_w": g.power_limit_w,
                      "pcie_gen": g.pcie_gen, "pcie_width": g.pcie_width} for g in a.gpus],
            "driver_version": a.driver_version, "cuda_version": a.cuda_version,
            "torch_cuda": a.torch_cuda, "cpu_cores": a.cpu_cores, "ram_total": a.ram_total,
            "ram_free": a.ram_free, "storage_free": a.storage_free, "job_slots": a.job_slots,
            "free_slots": a.free_slots, "queue_length": a.queue_length, "models": list(a.models),
            "coord": None if a.coord is None else {"vec": list(a.coord.vec), "height": a.coord.height,
                                                    "error": a.coord.error},
            "payout_address": a.payout_address,
            "rtt_ms": None if rtt is None else round(rtt, 3),
            "standing": self.standing(a.peer_id).name.lower(),
            "on_probation": self.table.on_probation(a.peer_id),
            "penalty_ms": round(self.penalty_ms(a.peer_id), 3),
        }
