"""The capacity table: the newest verified advert of every peer, and who can run a job.

Pure: no clock, no network, no randomness of its own. The service passes
``now``, a ``rtt(peer_id) -> ms | None`` estimate (Vivaldi coordinates when
the overlay has them, measured pings otherwise) and a ``random.Random``.

Ranking (:func:`rank`): a peer's cost is its round-trip time plus
:data:`LOAD_PENALTY_MS` per unit of load (busy slots plus queued jobs, over
its slots), so a fully busy neighbour counts as far away as a peer
``LOAD_PENALTY_MS`` further off, plus what this node's distrust of it costs
(``credit_policy.reputation_cost_ms`` of the ``reputation(peer_id)`` score the
service passes in, as it passes ``rtt``; a peer the policy excludes is never a
candidate). Peers whose costs are within a small band of
the best are treated as equal, and their order is drawn by the power of two
choices (two at random, the less loaded first): clients that read the same
table at the same moment then spread over the near peers instead of all
picking the single least loaded one.

Admission (:class:`Standing`, :meth:`CapacityTable.apply`): an advert proves only
that somebody holds a key, and fresh keys cost nothing. So a peer's advert counts
in the ranking only when this node has *reached* the peer (a live connection, a
measured round trip, a successful contact within :data:`RECENT_CONTACT_S`) or the
overlay of a peer it reached *vouches* for it (names it in its ring lists). The
adverts of peers merely *heard of* through gossip are held on probation: at most
:data:`MAX_HEARD` of them, at most :data:`MAX_HEARD_PER_RELAY` introduced by any one
forwarding peer, and they rank below every reached or vouched peer. What a peer
claims and nobody can check buys it nothing: slots beyond :data:`MAX_RANKED_SLOTS`
do not lower its load (:func:`load_of`), and a coordinate from a peer never
measured cannot make it look nearer than :data:`DEFAULT_RTT_MS`
(:func:`rtt_estimate`). Peers that fail this node's offers pay for it in rank for a
while (:class:`OfferPenalties`).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from poolai.mesh.adverts import (
    ADVERT_VERSION,
    MAX_MODELS,
    Advert,
    CoordAdvert,
    GpuAdvert,
    software_with_reach,
)
from poolai.mesh.bounded import CappedDict
from poolai.node.capacity.inventory import Inventory
from poolai.node.credits.policy import NEUTRAL, excluded, reputation_cost_ms
from poolai.node.units import parse_size

DEFAULT_RTT_MS = 150.0  # assumed for a peer we have no estimate for
LOAD_PENALTY_MS = 50.0  # cost of one unit of load, in ms of round trip
GPU_FOR_CPU_JOB_MS = 5.0  # a CPU job on a GPU node would hold a slot a GPU job could use
TIE_MS = 2.0  # costs this close ...
TIE_RATIO = 0.10  # ... or within this fraction of the best count as equal
MAX_ENTRIES = 10_000
MAX_HEARD = 256  # entries on probation: peers neither reached nor vouched for
MAX_HEARD_PER_RELAY = 16  # of those, introduced by any one forwarding peer
RECENT_CONTACT_S = 3600.0  # a peer connected to this long ago still counts as reached
MAX_RANKED_SLOTS = 64  # slots believed when ranking: more cannot be checked, so they buy nothing

RttFn = Callable[[str], float | None]
ReputationFn = Callable[[str], float]
"""A peer's reputation score in (0, 1) as this node has seen it (0.5: a stranger)."""


class Standing(enum.IntEnum):
    """How well this node knows a peer whose advert it holds (see the module docstring)."""

    HEARD = 0  # only gossip names it: ranked after every other peer
    VOUCHED = 1  # the overlay of a peer this node reached names it
    REACHED = 2  # connected now or lately, or a round trip measured


StandingFn = Callable[[str], Standing]
PenaltyFn = Callable[[str], float]
"""What a peer's recent failed offers add to its routing cost, in ms."""


def standing_of(*, connected: bool, measured: bool, last_contact_age: float | None,
                vouched: bool) -> Standing:
    """The admission rule: reached (a live connection, a measured round trip, or a contact
    within :data:`RECENT_CONTACT_S`), else vouched for by the overlay, else heard of."""
    recent = last_contact_age is not None and last_contact_age <= RECENT_CONTACT_S
    if connected or measured or recent:
        return Standing.REACHED
    return Standing.VOUCHED if vouched else Standing.HEARD


def rtt_estimate(predicted: float | None, measured: float | None) -> float | None:
    """The round trip to rank a peer by: its coordinates' ``predicted`` RTT when there is
    one, else the ``measured`` one. A coordinate is the peer's own claim; for a peer never
    measured nothing checks it (a copy of ours would put it next door), so it can only
    make the peer look farther than :data:`DEFAULT_RTT_MS`, never nearer."""
    if predicted is None:
        return measured
    return predicted if measured is not None else max(predicted, DEFAULT_RTT_MS)


def distrust_ms(score: float) -> float | None:
    """Routing cost of a reputation score; None for a peer no job should be routed to."""
    return None if excluded(score) else reputation_cost_ms(score)


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    """A peer's newest advert and when it arrived here (local clock)."""

    advert: Advert
    received_at: float
    expires_at: float

    @property
    def peer_id(self) -> str:
        return self.advert.peer_id


class Reputation(Protocol):
    """This node's score of peers (the credits service keeps it), for ranking."""

    def reputation_of(self, peer_id: str) -> float: ...


def advert_table(heartbeat: float, expiry: int) -> CapacityTable:
    """The table for a node whose adverts live ``heartbeat * expiry`` seconds: peers may run
    longer heartbeats than ours, but none may pin an entry for more than ten minutes, or
    four of our lifetimes."""
    return CapacityTable(max_ttl=max(600.0, 4 * heartbeat * expiry))


class CapacityTable:
    """Newest advert per peer; each entry expires ``ttl`` seconds after it arrived.

    The sender chooses ``ttl`` (a few of its heartbeats); the table caps it at
    ``max_ttl`` so no peer can pin a stale entry. When full, a new peer
    displaces the entry closest to expiry, entries on probation first.

    Entries on probation (peers only heard of, see :meth:`apply`) are bounded
    twice: ``max_heard`` in all, ``max_heard_per_relay`` introduced by one relay.
    """

    def __init__(self, *, max_ttl: float = 600.0, max_entries: int = MAX_ENTRIES,
                 max_heard: int = MAX_HEARD, max_heard_per_relay: int = MAX_HEARD_PER_RELAY) -> None:
        self.max_ttl = max_ttl
        self.max_entries = max_entries
        self.max_heard = max_heard
        self.max_heard_per_relay = max_heard_per_relay
        self._entries: dict[str, Entry] = {}
        self._heard: dict[str, str] = {}  # peer on probation -> the relay that introduced it
        self._relayed: Counter[str] = Counter()  # relay -> entries on probation it introduced

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def heard(self) -> int:
        """Entries on probation."""
        return len(self._heard)

    def heard_via(self, relay: str) -> int:
        """Entries on probation that ``relay`` introduced."""
        return self._relayed.get(relay, 0)

    def on_probation(self, peer_id: str) -> bool:
        return peer_id in self._heard

    def get(self, peer_id: str) -> Entry | None:
        return self._entries.get(peer_id)

    def last_seq(self, peer_id: str) -> int | None:
        """The sequence number of the advert held for ``peer_id`` (expired or not)."""
        entry = self._entries.get(peer_id)
        return entry.advert.seq if entry is not None else None

    def apply(self, advert: Advert, now: float, *, heard_via: str | None = None) -> bool:
        """Store ``advert`` if it is newer than the one held; returns whether it was.

        ``heard_via``: its peer is neither reached nor vouched for, and the relay
        ``heard_via`` passed it on. A new such peer is taken on probation only while
        fewer than ``max_heard`` are, and fewer than ``max_heard_per_relay`` came
        through that relay; it never displaces another entry. An advert without
        ``heard_via`` ends its peer's probation.
        """
        peer_id = advert.peer_id
        held = self._entries.get(peer_id)
        if held is not None and advert.seq <= held.advert.seq:
            return False
        if held is None and heard_via is not None and (
                len(self._heard) >= self.max_heard or len(self._entries) >= self.max_entries
                or self._relayed[heard_via] >= self.max_heard_per_relay):
            return False
        if held is None and len(self._entries) >= self.max_entries:
            pool = [self._entries[p] for p in self._heard] or self._entries.values()
            self._drop(min(pool, key=lambda e: (e.expires_at, e.peer_id)).peer_id)
        if held is None and heard_via is not None:
            self._heard[peer_id] = heard_via
            self._relayed[heard_via] += 1
        elif heard_via is None:
            self._release(peer_id)
        ttl = min(advert.ttl, self.max_ttl)
        self._entries[peer_id] = Entry(advert, now, now + ttl)
        return True

    def remove(self, peer_id: str) -> None:
        self._drop(peer_id)

    def expire(self, now: float) -> list[str]:
        """Drop entries past their expiry; returns the peers dropped."""
        gone = sorted(p for p, e in self._entries.items() if e.expires_at <= now)
        for peer_id in gone:
            self._drop(peer_id)
        return gone

    def _drop(self, peer_id: str) -> None:
        self._entries.pop(peer_id, None)
        self._release(peer_id)

    def _release(self, peer_id: str) -> None:
        relay = self._heard.pop(peer_id, None)
        if relay is not None:
            self._relayed[relay] -= 1
            if self._relayed[relay] <= 0:
                del self._relayed[relay]

    def entries(self, now: float) -> list[Entry]:
        """Live entries, by peer id."""
        return sorted((e for e in self._entries.values() if e.expires_at > now),
                      key=lambda e: e.peer_id)

    def capable(self, requirements: Requirements, *, now: float, rtt: RttFn, rng: random.Random,
                limit: int | None = None, reputation: ReputationFn | None = None,
                standing: StandingFn | None = None, penalty: PenaltyFn | None = None
                ) -> list[Candidate]:
        """Live peers that can run a job needing ``requirements``, best first (see :func:`rank`)."""
        return rank(self.entries(now), requirements, rtt=rtt, rng=rng, limit=limit,
                    reputation=reputation, standing=standing, penalty=penalty)


class OriginRate:
    """A token bucket per peer: ``burst`` adverts at once, ``rate`` per second sustained.

    Honest nodes publish at most every 0.5 s; adverts delayed on the way can
    still arrive bunched, which the burst absorbs. A peer beyond it is flooding.
    """

    def __init__(self, *, rate: float = 2.0, burst: float = 5.0, max_peers: int = MAX_ENTRIES) -> None:
        self.rate = rate
        self.burst = burst
        self.max_peers = max_peers
        self._buckets: dict[str, tuple[float, float]] = {}  # peer -> (tokens, as of)

    def allow(self, peer_id: str, now: float) -> bool:
        """Take a token for one advert of ``peer_id``; False when it has none left."""
        tokens, when = self._buckets.get(peer_id, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - when) * self.rate)
        if peer_id not in self._buckets and len(self._buckets) >= self.max_peers:
            del self._buckets[min(self._buckets, key=lambda p: self._buckets[p][1])]
        allowed = tokens >= 1.0
        self._buckets[peer_id] = (tokens - 1.0 if allowed else tokens, now)
        return allowed


OFFER_PENALTY_MS = {  # what one failed offer adds to a peer's routing cost, by how it failed
    "unreachable": 400.0,  # no connection, or the exchange broke: maybe not a node at all
    "timeout": 400.0,  # no answer within the offer's deadline
    "incapable": 200.0,  # its advert promised what it cannot do
    "busy": 25.0,  # its advert trailed its queue: honest, but look elsewhere first
}


class OfferPenalties:
    """What recent failed offers cost each peer in rank, in ms of round trip.

    Every failure adds :data:`OFFER_PENALTY_MS` of its kind, the sum capped at
    ``max_ms``; the cost halves every ``half_life`` seconds, and an accepted offer
    clears it. At most ``max_peers`` peers are remembered (the longest unpenalised
    forgotten first). Pure: the caller passes ``now``.
    """

    def __init__(self, *, half_life: float = 60.0, max_ms: float = 2000.0,
                 max_peers: int = 1024) -> None:
        self.half_life = half_life
        self.max_ms = max_ms
        self._costs: CappedDict[str, tuple[float, float]] = CappedDict(max_peers, renew=True)

    def __len__(self) -> int:
        return len(self._costs)

    def failed(self, peer_id: str, kind: str, now: float) -> None:
        """An offer to ``peer_id`` failed; ``kind`` is a key of :data:`OFFER_PENALTY_MS`
        (any other, such as a refusal of a malformed job, is no fault of the peer's)."""
        add = OFFER_PENALTY_MS.get(kind, 0.0)
        if add > 0:
            self._costs.put(peer_id, (min(self.max_ms, self.cost_ms(peer_id, now) + add), now))

    def succeeded(self, peer_id: str) -> None:
        """``peer_id`` accepted an offer: it is what it said it was."""
        self._costs.pop(peer_id, None)

    def cost_ms(self, peer_id: str, now: float) -> float:
        cost, since = self._costs.get(peer_id, (0.0, now))
        return cost * math.pow(0.5, max(0.0, now - since) / self.half_life)


# --------------------------------------------------------------------------- requirements


@dataclasses.dataclass(frozen=True, slots=True)
class Requirements:
    """What a job needs from one peer. ``gpus == 0`` is a CPU job."""

    gpus: int = 0
    gpu_mem: int = 0  # free bytes on each of those GPUs
    compute_capability: tuple[int, int] | None = None  # minimum
    cpu_cores: int = 0
    ram: int = 0  # free bytes
    slots: int = 1
    simulated: bool = True  # whether peers with simulated devices qualify
    exclude: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not (0 <= self.gpus <= 64 and self.gpu_mem >= 0 and self.cpu_cores >= 0
                and self.ram >= 0 and 1 <= self.slots <= 1024):
            raise ValueError("requirements out of range")

    _QUERY_KEYS = ("gpu", "gpu_mem", "cc", "cpu", "ram", "slots", "simulated")

    @classmethod
    def from_query(cls, params: Mapping[str, str]) -> Requirements:
        """From URL query parameters: ``gpu=1&gpu_mem=8GiB&cc=8.0&cpu=4&ram=16GiB&slots=1``.

        A ``gpu_mem`` or ``cc`` without ``gpu`` means one GPU. Raises ValueError.
        """
        unknown = sorted(set(params) - set(cls._QUERY_KEYS) - {"limit"})
        if unknown:
            raise ValueError(f"unknown requirement {unknown[0]!r}")
        gpu_mem = parse_size(params.get("gpu_mem", "0"))
        cc = None
        if params.get("cc"):
            major, _, minor = params["cc"].partition(".")
            if not (major.isdigit() and (minor.isdigit() or not minor)):
                raise ValueError("cc must look like 8.0")
            cc = (int(major), int(minor or 0))
        gpus = _nonneg(params.get("gpu"), "gpu")
        if gpus == 0 and (gpu_mem or cc) and "gpu" not in params:
            gpus = 1
        return cls(
            gpus=gpus,
            gpu_mem=gpu_mem,
            compute_capability=cc,
            cpu_cores=_nonneg(params.get("cpu"), "cpu"),
            ram=parse_size(params.get("ram", "0")),
            slots=_nonneg(params.get("slots"), "slots", default=1),
            simulated=params.get("simulated", "1") not in ("0", "false", "no"),
        )

    def to_json(self) -> dict[str, Any]:
        cc = self.compute_capability
        return {"gpu": self.gpus, "gpu_mem": self.gpu_mem, "cc": f"{cc[0]}.{cc[1]}" if cc else None,
                "cpu": self.cpu_cores, "ram": self.ram, "slots": self.slots,
                "simulated": self.simulated}


def _nonneg(value: str | None, key: str, default: int = 0) -> int:
    if value is None or value == "":
        return default
    if not value.isdigit() or len(value) > 6:
        raise ValueError(f"{key} must be a non-negative integer")
    return int(value)


# --------------------------------------------------------------------------- ranking


@dataclasses.dataclass(frozen=True, slots=True)
class Candidate:
    """A peer able to run the job, with what its place in the ranking rests on."""

    peer_id: str
    cost_ms: float
    rtt_ms: float | None  # None: no estimate, DEFAULT_RTT_MS was assumed
    load: float
    gpus: tuple[int, ...]  # indices of the GPUs that meet the job
    advert: Advert
    reputation: float = NEUTRAL  # this node's score for the peer; below neutral it costs
    standing: Standing = Standing.REACHED  # HEARD: ranked after every other peer

    def to_json(self) -> dict[str, Any]:
        return {"peer_id": self.peer_id, "cost_ms": round(self.cost_ms, 3),
                "rtt_ms": None if self.rtt_ms is None else round(self.rtt_ms, 3),
                "load": round(self.load, 3), "free_slots": self.advert.free_slots,
                "gpus": list(self.gpus), "simulated": self.advert.simulated,
                "reputation": round(self.reputation, 4), "standing": self.standing.name.lower()}


def matching_gpus(advert: Advert, req: Requirements) -> tuple[int, ...] | None:
    """Indices of the GPUs to use for ``req`` on this peer, or None if it cannot run it."""
    if advert.free_slots < req.slots or advert.cpu_cores < req.cpu_cores or advert.ram_free < req.ram:
        return None
    if advert.simulated and not req.simulated:
        return None
    if req.gpus == 0:
        return ()
    fit = [g for g in advert.gpus if g.memory_free >= req.gpu_mem
           and (req.compute_capability is None or g.compute_capability >= req.compute_capability)]
    if len(fit) < req.gpus:
        return None
    fit.sort(key=lambda g: (-g.memory_free, g.index))  # the emptiest GPUs first
    return tuple(g.index for g in fit[: req.gpus])


def load_of(advert: Advert) -> float:
    """Busy slots plus queued jobs, per slot (0 idle, 1 full, above 1 queueing). Slots beyond
    :data:`MAX_RANKED_SLOTS` cannot be checked, so they do not dilute the load."""
    busy = advert.job_slots - advert.free_slots
    return (busy + advert.queue_length) / max(min(advert.job_slots, MAX_RANKED_SLOTS), 1)


def rank(entries: Iterable[Entry], req: Requirements, *, rtt: RttFn, rng: random.Random,
         limit: int | None = None, reputation: ReputationFn | None = None,
         standing: StandingFn | None = None, penalty: PenaltyFn | None = None) -> list[Candidate]:
    """Peers in ``entries`` that meet ``req``, cheapest first; near-equal costs by two choices.

    ``reputation`` (None: everyone neutral) adds the cost of distrust and drops excluded peers;
    ``penalty`` (None: none) adds the cost of recent failed offers. Peers whose ``standing``
    (None: all reached) is HEARD come after all the others, whatever their cost.
    """
    found = []
    for entry in entries:
        advert = entry.advert
        if advert.peer_id in req.exclude:
            continue
        gpus = matching_gpus(advert, req)
        if gpus is None:
            continue
        score = NEUTRAL if reputation is None else reputation(advert.peer_id)
        cost = _cost(advert, req, rtt, score, penalty)
        if cost is None:
            continue
        measured = rtt(advert.peer_id)
        where = Standing.REACHED if standing is None else standing(advert.peer_id)
        found.append(Candidate(advert.peer_id, cost, measured, load_of(advert), gpus, advert, score,
                               where))
    found.sort(key=lambda c: (c.cost_ms, c.peer_id))
    ordered = (_two_choices([c for c in found if c.standing is not Standing.HEARD], rng)
               + _two_choices([c for c in found if c.standing is Standing.HEARD], rng))
    return ordered[:limit] if limit is not None else ordered


def _cost(advert: Advert, req: Requirements, rtt: RttFn, score: float,
          penalty: PenaltyFn | None) -> float | None:
    """A peer's routing cost for ``req`` (see the module docstring); None: never route to it."""
    distrust = distrust_ms(score)
    if distrust is None:
        return None
    measured = rtt(advert.peer_id)
    cost = (DEFAULT_RTT_MS if measured is None else measured) + LOAD_PENALTY_MS * load_of(advert)
    cost += distrust + (0.0 if penalty is None else penalty(advert.peer_id))
    if req.gpus == 0 and advert.gpus:
        cost += GPU_FOR_CPU_JOB_MS
    return cost


def _two_choices(found: list[Candidate], rng: random.Random) -> list[Candidate]:
    """``found`` (cheapest first) with the peers near the best cost reordered by two choices."""
    if not found:
        return []
    bound = found[0].cost_ms * (1 + TIE_RATIO) + TIE_MS
    band = [c for c in found if c.cost_ms <= bound]
    ordered = []
    while band:
        if len(band) == 1:
            pick = band[0]
        else:
            a, b = rng.sample(band, 2)
            pick = min(a, b, key=lambda c: (c.load, c.cost_ms))  # equal: the first drawn
        ordered.append(pick)
        band.remove(pick)
    return ordered + found[len(ordered):]


def offer_order(entries: Iterable[Entry], req: Requirements, *, rtt: RttFn, rng: random.Random,
                reputation: ReputationFn | None = None, given: Mapping[str, int] | None = None,
                standing: StandingFn | None = None, penalty: PenaltyFn | None = None) -> list[str]:
    """The peers to offer a job needing ``req`` to, in order: the capable peers as :func:`rank`
    orders them; then, for when every one of those is busy, the peers that could run it
    once a slot frees (all their slots, not just the free ones), least loaded first, then
    cheapest. ``given`` counts the jobs this node has just offered each peer: adverts trail
    by up to a heartbeat, so a burst is spread by it (fewest first; the sort is stable).
    Peers only heard of come last, all of them after every reached or vouched peer."""
    entries = list(entries)
    ranked = rank(entries, req, rtt=rtt, rng=rng, reputation=reputation, standing=standing,
                  penalty=penalty)
    seen = {c.peer_id for c in ranked}
    heard = {c.peer_id for c in ranked if c.standing is Standing.HEARD}
    queueing = []
    for entry in entries:
        advert = entry.advert
        if advert.job_slots == 0 or advert.peer_id in seen or advert.peer_id in req.exclude:
            continue
        if matching_gpus(dataclasses.replace(advert, free_slots=advert.job_slots), req) is None:
            continue
        cost = _cost(advert, req, rtt, NEUTRAL if reputation is None else reputation(advert.peer_id),
                     penalty)
        if cost is None:
            continue  # a peer this node no longer trusts with jobs
        if standing is not None and standing(advert.peer_id) is Standing.HEARD:
            heard.add(advert.peer_id)
        queueing.append((load_of(advert), cost, advert.peer_id))
    ordered = [c.peer_id for c in ranked] + [p for *_, p in sorted(queueing)]
    given = given or {}
    return sorted(ordered, key=lambda p: (p in heard, given.get(p, 0)))


# --------------------------------------------------------------------------- our own advert


@dataclasses.dataclass(frozen=True, slots=True)
class LocalState:
    """What the node adds to its inventory: slots, queue, loaded models, identity."""

    peer_id: str
    software: str
    job_slots: int
    busy_slots: int = 0
    queue_length: int = 0
    models: tuple[str, ...] = ()
    payout_address: str = ""
    reach: str = "unknown"  # this node's reachability verdict (node.reach), advertised


def make_advert(inventory: Inventory, state: LocalState, *, seq: int, now: float, ttl: float,
                coord: CoordAdvert | None = None) -> Advert:
    """The advert describing ``inventory`` and ``state``, clamped to the schema's bounds."""
    gpus = tuple(
        GpuAdvert(
            index=g.index, name=g.name, uuid=g.uuid, memory_total=g.memory_total,
            memory_free=min(g.memory_free, g.memory_total),
            cc_major=g.compute_capability[0], cc_minor=g.compute_capability[1],
            utilization=g.utilization, temperature_c=g.temperature_c, power_w=g.power_w,
            power_limit_w=g.power_limit_w, pcie_gen=g.pcie_gen, pcie_width=g.pcie_width,
        )
        for g in inventory.gpus
    )
    slots = max(0, min(state.job_slots, 1024))
    return Advert(
        peer_id=state.peer_id, seq=seq, timestamp=now, ttl=ttl,
        software=software_with_reach(state.software, state.reach),
        protocol=ADVERT_VERSION, simulated=inventory.simulated, gpus=gpus,
        cpu_cores=inventory.cpu_cores, ram_total=inventory.ram_total,
        ram_free=min(inventory.ram_free, inventory.ram_total), storage_free=inventory.storage_free,
        job_slots=slots, free_slots=max(0, slots - state.busy_slots),
        queue_length=max(0, min(state.queue_length, 1_000_000)),
        models=tuple(m for m in state.models if 0 < len(m) <= 128)[:MAX_MODELS],
        driver_version=inventory.driver_version[:32], cuda_version=inventory.cuda_version[:16],
        torch_cuda=inventory.torch_cuda, coord=coord, payout_address=state.payout_address[:128],
    )


def significant_change(old: Advert | None, new: Advert) -> bool:
    """Whether ``new`` differs from the last published ``old`` enough to publish before the heartbeat.

    Slots, queue, models and devices always count; free memory counts when it
    moved by more than 2% of the total (at least 256 MiB); utilisation,
    temperature, power and coordinates only travel with heartbeats.
    """
    if old is None:
        return True
    if (old.free_slots, old.job_slots, old.queue_length, old.models, old.simulated, old.cpu_cores,
            old.payout_address, old.software) != (
            new.free_slots, new.job_slots, new.queue_length, new.models, new.simulated,
            new.cpu_cores, new.payout_address, new.software):
        return True
    if [(g.index, g.uuid, g.compute_capability) for g in old.gpus] != [
            (g.index, g.uuid, g.compute_capability) for g in new.gpus]:
        return True
    for a, b in zip(old.gpus, new.gpus, strict=True):
        if _moved(a.memory_free, b.memory_free, b.memory_total):
            return True
    return _moved(old.ram_free, new.ram_free, new.ram_total) or _moved(
        old.storage_free, new.storage_free, max(old.storage_free, new.storage_free), floor=1 << 30)


def _moved(a: int, b: int, total: int, floor: int = 256 << 20) -> bool:
    return abs(a - b) > max(floor, total // 50)
