"""Who may connect in, and which inbound connections go when there are too many: pure rules.

Two decisions, both free of I/O, with time passed in (the host applies them:
:mod:`poolai.mesh.inbound` and :class:`poolai.mesh.discovery.ConnectionManager`):

* **Rates.** :class:`InboundAdmission` keeps a token bucket per remote IP, one per
  peer id and one for the whole node. A connection is asked about twice: by its
  address before the Noise handshake (:meth:`InboundAdmission.admit_address`:
  that IP's bucket and the node's), and by its peer id once the handshake names
  it (:meth:`InboundAdmission.admit_peer`). Refusing by address first means a
  flood from one IP costs an ``accept()`` and a ``close()``, not a handshake; a
  refused attempt takes no token from the node's bucket, so one flooding IP
  cannot use up everyone's rate. The per-IP and per-peer tables are bounded:
  past ``max_tracked`` keys the least recently seen goes (it has had the
  longest to refill, so forgetting it gives away the least).
* **Shedding.** Past the inbound cap the node does not refuse newcomers; it
  closes the least useful inbound connections (:func:`choose_shed`): never an
  overlay link, never one with a stream open (a transfer or request in
  progress), never one active within the last ``min_idle`` seconds; of the
  rest, the one idle longest first.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Collection, Iterable
from dataclasses import dataclass

MIN_INBOUND_CAP = 16
INBOUND_PER_PEER = 4  # inbound connections allowed per configured max_peers
MAX_INBOUND_CAP = 200  # below py-libp2p's own 250 inbound slots and 300 connections
MIN_IDLE = 1.0  # seconds a connection must have been quiet before it may be shed
MAX_TRACKED = 4096  # remote IPs, and peer ids, whose buckets are remembered
BURST_SECONDS = 10.0  # a bucket holds this many seconds of its rate


def inbound_cap_for(max_peers: int) -> int:
    """The inbound cap a node with ``max_peers`` uses: room for every peer that picks it
    as a neighbour, several times what it dials itself, within py-libp2p's hard limits."""
    return max(MIN_INBOUND_CAP, min(MAX_INBOUND_CAP, INBOUND_PER_PEER * max_peers))


@dataclass(frozen=True, slots=True)
class Rate:
    """A token bucket's refill (connections per second) and its depth."""

    per_second: float
    burst: float

    @classmethod
    def of(cls, per_second: float) -> Rate:
        """``per_second`` with a burst of :data:`BURST_SECONDS` of it (at least one)."""
        return cls(per_second, max(1.0, per_second * BURST_SECONDS))

    def __post_init__(self) -> None:
        if not (self.per_second > 0 and self.burst >= 1):
            raise ValueError(f"a rate needs per_second > 0 and burst >= 1, not {self}")


@dataclass(frozen=True, slots=True)
class AdmissionConfig:
    """Inbound limits of one node (defaults: see NETWORK.md, "Connections")."""

    per_ip: Rate = Rate.of(5.0)
    per_peer: Rate = Rate.of(0.5)
    total: Rate = Rate.of(20.0)
    max_tracked: int = MAX_TRACKED


class _Buckets:
    """Token buckets by key, at most ``max_keys`` of them (least recently seen forgotten)."""

    def __init__(self, rate: Rate, max_keys: int) -> None:
        self.rate = rate
        self.max_keys = max_keys
        self._table: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    def __len__(self) -> int:
        return len(self._table)

    def tokens(self, key: str, now: float) -> float:
        tokens, at = self._table.get(key, (self.rate.burst, now))
        return min(self.rate.burst, tokens + max(0.0, now - at) * self.rate.per_second)

    def take(self, key: str, now: float) -> None:
        self._table[key] = (self.tokens(key, now) - 1.0, now)
        self._table.move_to_end(key)
        while len(self._table) > self.max_keys:
            self._table.popitem(last=False)


TokenBuckets = _Buckets  # the same buckets, for other rate limits (the reachability server's)


class Verdict(enum.Enum):
    ADMIT = "admit"
    IP_RATE = "ip_rate"  # this remote address connected too often
    PEER_RATE = "peer_rate"  # this peer id connected too often
    TOTAL_RATE = "total_rate"  # the node took too many inbound connections from everyone


@dataclass(frozen=True, slots=True)
class AdmissionStats:
    """What :class:`InboundAdmission` decided so far (a snapshot for status pages)."""

    accepted: int
    refused_ip_rate: int
    refused_peer_rate: int
    refused_total_rate: int
    tracked_ips: int
    tracked_peers: int


class InboundAdmission:
    """Rate limits on inbound connections, and the counters a status page shows."""

    def __init__(self, config: AdmissionConfig | None = None) -> None:
        self.config = config or AdmissionConfig()
        self._ips = _Buckets(self.config.per_ip, self.config.max_tracked)
        self._peers = _Buckets(self.config.per_peer, self.config.max_tracked)
        self._total = _Buckets(self.config.total, 1)
        self._refused = {v: 0 for v in Verdict if v is not Verdict.ADMIT}
        self._accepted = 0

    def admit_address(self, ip: str, now: float) -> Verdict:
        """Before the handshake: may a connection from ``ip`` go on? Takes a token from the
        IP's bucket and the node's only if both have one."""
        if self._ips.tokens(ip, now) < 1.0:
            return self._refuse(Verdict.IP_RATE)
        if self._total.tokens("", now) < 1.0:
            return self._refuse(Verdict.TOTAL_RATE)
        self._ips.take(ip, now)
        self._total.take("", now)
        return Verdict.ADMIT

    def admit_peer(self, peer_id: str, now: float) -> Verdict:
        """After the handshake: may ``peer_id`` have this connection?"""
        if self._peers.tokens(peer_id, now) < 1.0:
            return self._refuse(Verdict.PEER_RATE)
        self._peers.take(peer_id, now)
        return Verdict.ADMIT

    def note_accepted(self) -> None:
        """An inbound connection was admitted and is open."""
        self._accepted += 1

    def _refuse(self, verdict: Verdict) -> Verdict:
        self._refused[verdict] += 1
        return verdict

    def statistics(self) -> AdmissionStats:
        return AdmissionStats(
            accepted=self._accepted,
            refused_ip_rate=self._refused[Verdict.IP_RATE],
            refused_peer_rate=self._refused[Verdict.PEER_RATE],
            refused_total_rate=self._refused[Verdict.TOTAL_RATE],
            tracked_ips=len(self._ips),
            tracked_peers=len(self._peers),
        )


@dataclass(frozen=True, slots=True)
class ConnFacts:
    """What the shedding rule knows of one open connection."""

    peer_id: str
    inbound: bool
    opened_at: float
    last_active: float  # the last stream opened or closed on it (opened_at if none yet)
    streams: int  # streams open on it now


def choose_shed(conns: Iterable[ConnFacts], *, cap: int, protected: Collection[str],
                now: float, min_idle: float = MIN_IDLE) -> list[str]:
    """The peers whose inbound connections to close so that at most ``cap`` stay open.

    Only inbound connections count and only they are shed. Never shed: a peer in
    ``protected`` (the overlay's links), a connection with a stream open, one active in
    the last ``min_idle`` seconds. Of the rest, the longest idle goes first (ties: the
    oldest). When too few may go, fewer are shed: the cap is a target, and the host's
    hard limits stop growth beyond it.
    """
    inbound = [c for c in conns if c.inbound]
    excess = len(inbound) - cap
    if excess <= 0:
        return []
    candidates = [
        c for c in inbound
        if c.peer_id not in protected and c.streams == 0
        and now - max(c.last_active, c.opened_at) >= min_idle
    ]
    candidates.sort(key=lambda c: (max(c.last_active, c.opened_at), c.opened_at, c.peer_id))
    return [c.peer_id for c in candidates[:excess]]
