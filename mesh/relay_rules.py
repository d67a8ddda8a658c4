"""Circuit relay bookkeeping, pure: a relay's limits, its reservations and circuits, the
byte bucket that caps its total bandwidth, and how a private node picks its relays.

No trio, no sockets: time is passed in. :mod:`poolai.mesh.relay` drives these with
py-libp2p's circuit relay v2 messages. py-libp2p's own hop server is not used for the
relay side because, as measured in 0.8.1 (NETWORK.md, "Circuit relay"), it enforces
no bandwidth cap, checks a circuit's duration only when data flows, keeps a slot taken
until its TTL after the client has gone, and keys open circuits by peer, so one
circuit ending closes another one to the same destination.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import math
import random
from collections.abc import Callable, Mapping, Sequence

DEFAULT_TTL = 900.0  # seconds a reservation lasts without renewal


class Refusal(enum.Enum):
    """Why a relay said no (each maps to a circuit relay v2 status code)."""

    NO_RESERVATION = "no reservation"  # the destination holds no slot here
    RESOURCE_LIMIT = "resource limit exceeded"  # reservations, circuits or per-peer circuits full
    OFF = "not relaying"  # the owner switched relaying off


@dataclasses.dataclass(frozen=True, slots=True)
class RelayLimits:
    """What one relay gives the mesh. ``bandwidth`` 0 means no cap."""

    reservations: int = 32  # peers holding a slot at once
    circuits: int = 64  # circuits open at once
    circuits_per_peer: int = 16  # circuits one peer may be an end of at once
    circuit_bytes: int = 1 << 30  # both directions together, then the circuit is closed
    circuit_seconds: float = 3600.0  # then the circuit is closed, idle or not
    bandwidth: int = 10 << 20  # bytes a second across every circuit
    reservation_ttl: float = DEFAULT_TTL

    def __post_init__(self) -> None:
        for name in ("reservations", "circuits", "circuits_per_peer", "circuit_bytes", "bandwidth"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"relay limit {name} must be a whole number >= 0, not {value!r}")
        if not self.circuit_seconds > 0 or not self.reservation_ttl >= 10:
            raise ValueError("a circuit lasts more than 0 s and a reservation at least 10 s")


@dataclasses.dataclass(slots=True)
class Circuit:
    """One relayed connection: ``src`` dialled ``dst`` through this relay."""

    id: int
    src: str
    dst: str
    opened: float
    deadline: float
    bytes_left: int
    moved: int = 0

    def charge(self, n: int) -> bool:
        """Count ``n`` relayed bytes; False once the circuit's byte budget is spent."""
        if n > self.bytes_left:
            self.bytes_left = 0
            return False
        self.bytes_left -= n
        self.moved += n
        return True


@dataclasses.dataclass(frozen=True, slots=True)
class RelayStats:
    """A snapshot for the status page."""

    reservations: int
    circuits: int
    reservations_made: int
    reservations_refused: int
    circuits_opened: int
    circuits_refused: int
    closed_by_bytes: int
    closed_by_time: int
    bytes_relayed: int


class RelayTable:
    """A relay's reservations and open circuits, within :class:`RelayLimits`."""

    def __init__(self, limits: RelayLimits) -> None:
        self.limits = limits
        self._reservations: dict[str, float] = {}  # peer -> expiry
        self._circuits: dict[int, Circuit] = {}
        self._ids = itertools.count(1)
        self._made = self._refused = self._opened = self._circuits_refused = 0
        self._by_bytes = self._by_time = self._moved = 0

    def reserve(self, peer: str, now: float, connected: Callable[[str], bool]) -> float | Refusal:
        """Give ``peer`` a slot (or renew its slot); its expiry, or why not.

        Before refusing for lack of room, slots of peers no longer ``connected`` and
        expired slots are freed: a slot is held by a live connection, not by a TTL.
        """
        if peer not in self._reservations and len(self._reservations) >= self.limits.reservations:
            self._prune(now, connected)
        if peer not in self._reservations and len(self._reservations) >= self.limits.reservations:
            self._refused += 1
            return Refusal.RESOURCE_LIMIT
        expiry = now + self.limits.reservation_ttl
        self._reservations[peer] = expiry
        self._made += 1
        return expiry

    def drop(self, peer: str) -> None:
        """``peer``'s connection closed: its slot is free again."""
        self._reservations.pop(peer, None)

    def has_reservation(self, peer: str, now: float) -> bool:
        expiry = self._reservations.get(peer)
        if expiry is not None and expiry <= now:
            del self._reservations[peer]
            return False
        return expiry is not None

    def reserved_peers(self) -> list[str]:
        return list(self._reservations)

    def open_circuit(self, src: str, dst: str, now: float) -> Circuit | Refusal:
        """A circuit from ``src`` to ``dst``, or why not."""
        if not self.has_reservation(dst, now):
            self._circuits_refused += 1
            return Refusal.NO_RESERVATION
        ends = [c for c in self._circuits.values()]
        per_peer = self.limits.circuits_per_peer
        if (len(ends) >= self.limits.circuits
                or sum(1 for c in ends if src in (c.src, c.dst)) >= per_peer
                or sum(1 for c in ends if dst in (c.src, c.dst)) >= per_peer):
            self._circuits_refused += 1
            return Refusal.RESOURCE_LIMIT
        circuit = Circuit(next(self._ids), src, dst, now, now + self.limits.circuit_seconds,
                          self.limits.circuit_bytes)
        self._circuits[circuit.id] = circuit
        self._opened += 1
        return circuit

    def close_circuit(self, circuit: Circuit, timed_out: bool) -> str:
        """Forget ``circuit``; returns why it ended: ``bytes``, ``time`` (``timed_out``:
        its time limit cut it) or ``closed``."""
        self._circuits.pop(circuit.id, None)
        self._moved += circuit.moved
        if circuit.bytes_left == 0 and self.limits.circuit_bytes > 0:
            self._by_bytes += 1
            return "bytes"
        if timed_out:
            self._by_time += 1
            return "time"
        return "closed"

    def circuits(self) -> list[Circuit]:
        return list(self._circuits.values())

    def statistics(self) -> RelayStats:
        return RelayStats(len(self._reservations), len(self._circuits), self._made, self._refused,
                          self._opened, self._circuits_refused, self._by_bytes, self._by_time,
                          self._moved + sum(c.moved for c in self._circuits.values()))

    def _prune(self, now: float, connected: Callable[[str], bool]) -> None:
        for peer, expiry in list(self._reservations.items()):
            if expiry <= now or not connected(peer):
                del self._reservations[peer]


class ByteBucket:
    """A token bucket of bytes: ``rate`` a second, at most ``burst`` saved up.

    :meth:`take` always grants and returns how long the caller must wait first, so
    concurrent takers queue behind each other and the long-run rate never exceeds
    ``rate``. A rate of 0 means no cap.
    """

    def __init__(self, rate: int, burst: int | None = None, now: float = 0.0) -> None:
        self.rate = rate
        self.burst = max(1, rate // 4 if burst is None else burst)  # a quarter second of traffic
        self._level = float(self.burst)
        self._at = now

    def take(self, n: int, now: float) -> float:
        if self.rate <= 0:
            return 0.0
        self._level = min(float(self.burst), self._level + (now - self._at) * self.rate)
        self._at = now
        self._level -= n
        return 0.0 if self._level >= 0 else -self._level / self.rate


# ----------------------------------------------------------------------------- choosing relays

TARGET_RELAYS = 2
MAX_RELAYS = 3
SPREAD_SLACK_MS = 50.0  # a relay this much farther than the nearest one left is still "near"


def choose_relays(
    current: Sequence[str],
    candidates: Sequence[str],
    rtt: Callable[[str, str | None], float | None],
    rng: random.Random,
    want: int = TARGET_RELAYS,
) -> list[str]:
    """The relays to hold: the ``current`` ones still among ``candidates``, topped up to
    ``want`` (at most :data:`MAX_RELAYS`). Round trips are in milliseconds.

    ``rtt(peer, None)`` is the estimated round trip from this node to ``peer`` and
    ``rtt(a, b)`` between two peers (None where unknown). The first new pick is the
    nearest candidate; each further pick is, among the few nearest left (within twice
    the nearest's round trip or :data:`SPREAD_SLACK_MS` more), the one farthest from
    those already held, so one failure (a region, an ISP) does not take
    every relay at once. Unknown distances rank after known ones, in random order.
    """
    want = max(0, min(want, MAX_RELAYS))
    held = [p for p in current if p in candidates][:want]
    rest = [p for p in candidates if p not in held]
    rng.shuffle(rest)
    rest.sort(key=lambda p: _or_inf(rtt(p, None)))
    while len(held) < want and rest:
        if not held:
            pick = rest[0]
        else:
            nearest = _or_inf(rtt(rest[0], None))
            bound = max(2 * nearest, nearest + SPREAD_SLACK_MS)
            near = [p for p in rest[:4] if _or_inf(rtt(p, None)) <= bound] or rest[:1]
            pick = max(near, key=lambda p: min(_or_zero(rtt(p, h)) for h in held))
        held.append(pick)
        rest.remove(pick)
    return held


def _or_inf(value: float | None) -> float:
    return math.inf if value is None else value


def _or_zero(value: float | None) -> float:
    return 0.0 if value is None else value


def renew_at(expiry: float, granted_at: float) -> float:
    """When to renew a reservation granted at ``granted_at`` until ``expiry``: halfway,
    but never sooner than 5 s after it was granted (a relay answering with a tiny TTL
    must not make the client renew in a tight loop)."""
    return granted_at + max(5.0, (expiry - granted_at) / 2)


def is_private_address(ip: str) -> bool:
    """An address behind a NAT: RFC 1918, the carrier-grade shared space 100.64.0.0/10,
    link-local. Loopback is not (a node on 127.0.0.1 shares a machine with its peers,
    as in tests), and documentation ranges such as 203.0.113.0/24 count as public: the
    NAT lab's internet uses them."""
    try:
        parts = [int(p) for p in ip.split(".")]
    except ValueError:
        return False
    if len(parts) != 4:
        return False
    a, b = parts[0], parts[1]
    return (a == 10 or (a == 172 and 16 <= b <= 31) or (a == 192 and b == 168)
            or (a == 100 and 64 <= b <= 127) or (a == 169 and b == 254))


def summarise_punches(records: Mapping[str, Mapping[str, object]]) -> dict[str, int]:
    """Totals over per-peer hole-punch records (``attempts``, ``successes``)."""
    out = {"peers": len(records), "attempts": 0, "successes": 0}
    for rec in records.values():
        out["attempts"] += int(rec.get("attempts", 0) or 0)  # type: ignore[call-overload]
        out["successes"] += int(rec.get("successes", 0) or 0)  # type: ignore[call-overload]
    return out
