"""Reachability: what a node concludes from dial-backs, when it asks again, and what it
serves to others. Pure: no I/O, time and randomness passed in.

* :func:`choose_servers`: whom to ask (peers on other /24s first, reached directly).
* :func:`conclude`: the verdict from the answers: **public** when at least
  ``public_min`` servers got through on one address (through = the nonce arrived over a
  fresh inbound connection; a server's word alone counts for nothing), **private** when
  at least ``private_min`` servers answered and none got through, **unknown** otherwise;
  plus what the observed addresses tell of the NAT (:class:`Mapping`).
* :class:`Rechecks`: when to run the next round (first when enough peers are connected,
  then periodically, sooner while unknown, and when the addresses change).
* :class:`ServerPolicy`: the dial-back server's limits (per requester, per requester IP,
  in total) and the addresses it dials: the requester's observed IP only.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from poolai.mesh.admission import Rate, TokenBuckets
from poolai.mesh.reach import MAX_PORTS, tcp_addr

PUBLIC, PRIVATE, UNKNOWN = "public", "private", "unknown"


@dataclass(frozen=True, slots=True)
class ReachConfig:
    """How a node checks its reachability (defaults in NETWORK.md, "Reachability")."""

    servers: int = 4  # peers asked per round
    public_min: int = 2  # servers that must get through on one address
    private_min: int = 3  # servers that must answer, none getting through
    interval: float = 1800.0  # seconds between rounds once conclusive
    retry: float = 60.0  # seconds between rounds while unknown
    min_gap: float = 10.0  # no two rounds closer than this, whatever changes
    start_grace: float = 30.0  # the first round waits this long for `servers` peers (then
    # goes with `private_min` of them, and after four times as long with any)
    keep_for: float = 3600.0  # a conclusive verdict outlives inconclusive periodic rounds this long

    def __post_init__(self) -> None:
        if not 1 <= self.public_min <= self.servers or not 1 <= self.private_min <= self.servers:
            raise ValueError(f"public_min and private_min must be within 1..servers: {self}")

    @classmethod
    def every(cls, interval: float) -> ReachConfig:
        """The defaults with rounds every ``interval`` s (retries and gaps scaled down with it)."""
        return cls(interval=interval, retry=min(60.0, interval), min_gap=min(10.0, interval / 2),
                   start_grace=min(30.0, interval / 4), keep_for=2 * interval)


# ----------------------------------------------------------------------------- whom to ask


@dataclass(frozen=True, slots=True)
class Candidate:
    """A connected peer that might serve a dial-back."""

    peer_id: str
    ip: str | None  # its end of our connection to it
    relayed: bool = False  # reached through a relay: its view of our address is the relay's


def same_24(a: str | None, b: str | None) -> bool:
    """Whether two IPs share a /24 (IPv4) or a /48 (IPv6)."""
    if a is None or b is None:
        return False
    try:
        x, y = ipaddress.ip_address(a), ipaddress.ip_address(b)
    except ValueError:
        return False
    if x.version != y.version:
        return False
    bits = 24 if x.version == 4 else 48
    return ipaddress.ip_network(f"{x}/{bits}", strict=False) == \
        ipaddress.ip_network(f"{y}/{bits}", strict=False)


def choose_servers(candidates: Iterable[Candidate], own_ips: Iterable[str], n: int,
                   rng: random.Random, skip: Iterable[str] = ()) -> list[str]:
    """Up to ``n`` peers to ask: direct before relayed, off this node's /24s before on them,
    one per /24 before a second from the same one, in random order within each rank."""
    own, skipped = list(own_ips), set(skip)
    pool = [c for c in candidates if c.peer_id not in skipped]
    rng.shuffle(pool)
    pool.sort(key=lambda c: (c.relayed, any(same_24(c.ip, o) for o in own)))
    chosen: list[Candidate] = []
    for c in pool:  # a first pass for distinct /24s, a second for the rest
        if len(chosen) < n and not any(same_24(c.ip, d.ip) for d in chosen):
            chosen.append(c)
    for c in pool:
        if len(chosen) < n and c not in chosen:
            chosen.append(c)
    return [c.peer_id for c in chosen]


# ----------------------------------------------------------------------------- the verdict


@dataclass(frozen=True, slots=True)
class Tried:
    """One address a server dialled: ``claimed`` its word, ``confirmed`` our nonce arriving
    there over a fresh inbound connection."""

    addr: str
    claimed: bool
    confirmed: bool
    error: str = ""


@dataclass(frozen=True, slots=True)
class Answer:
    """A server's reply to one request, and what we know of the connection it went on."""

    server: str
    observed: tuple[str, int] | None  # where the server saw the request come from
    local: tuple[str, int] | None  # our end of that connection
    outbound: bool  # we opened that connection, so `observed` is our NAT's mapping of `local`
    tried: tuple[Tried, ...]


@dataclass(frozen=True, slots=True)
class Mapping:
    """What the observed addresses tell of the NAT. None: cannot tell."""

    nat: bool | None  # some server saw another IP than the one we sent from
    port_preserving: bool | None  # observed port == our local port on every outbound connection
    address_dependent: bool | None  # one local port seen as different ports by different servers
    observed: tuple[str, ...] = ()  # distinct observed addresses, sorted

    def describe(self) -> str:
        """A few words for the status line ("port-preserving mapping"), or ""."""
        if self.address_dependent:
            return "address-dependent mapping"
        if self.port_preserving:
            return "port-preserving mapping"
        if self.port_preserving is False:
            return "ports rewritten per connection"
        return ""


@dataclass(frozen=True, slots=True)
class Verdict:
    state: str  # PUBLIC, PRIVATE or UNKNOWN
    at: float
    asked: int = 0
    answers: int = 0
    public_addr: str | None = None
    confirmed: int = 0  # servers that got through on public_addr
    unverified: int = 0  # servers that claimed a success we never saw arrive
    observed_ip: str | None = None  # the IP most servers saw us at
    mapping: Mapping = Mapping(None, None, None)
    reason: str = ""  # what started the round

    def line(self) -> str:
        """One plain line for ``poolai status`` and the status page."""
        if self.state == PUBLIC:
            return f"reachable from the internet at {self.public_addr}"
        if self.state == PRIVATE:
            if self.mapping.nat is False:
                return "behind a firewall (no NAT), not reachable directly"
            how = self.mapping.describe()
            return f"behind NAT ({how}), not reachable directly" if how else \
                "behind NAT, not reachable directly"
        return f"reachability unknown ({self.answers} answer{'' if self.answers == 1 else 's'})"

    def as_json(self) -> dict[str, object]:
        out = dataclasses.asdict(self)
        out["mapping"]["observed"] = list(self.mapping.observed)
        out["line"] = self.line()
        return out


NOT_CHECKED = Verdict(UNKNOWN, 0.0, reason="not checked yet")


def conclude(answers: Sequence[Answer], asked: int, config: ReachConfig, now: float,
             reason: str = "") -> Verdict:
    """The verdict of one round from the servers that answered (those that did not, or
    refused, are simply not in ``answers``)."""
    through: dict[str, set[str]] = {}
    unverified = 0
    for a in answers:
        for t in a.tried:
            if t.confirmed:
                through.setdefault(t.addr, set()).add(a.server)
        if any(t.claimed and not t.confirmed for t in a.tried):
            unverified += 1
    mapping = mapping_of(answers)
    ips = [a.observed[0] for a in answers if a.observed]
    observed_ip = max(sorted(set(ips)), key=ips.count) if ips else None
    common = dict(at=now, asked=asked, answers=len(answers), unverified=unverified,
                  observed_ip=observed_ip, mapping=mapping, reason=reason)
    if through:
        addr = max(sorted(through), key=lambda k: len(through[k]))
        if len(through[addr]) >= config.public_min:
            return Verdict(PUBLIC, public_addr=addr, confirmed=len(through[addr]), **common)  # type: ignore[arg-type]
    elif len(answers) >= config.private_min:
        return Verdict(PRIVATE, **common)  # type: ignore[arg-type]
    return Verdict(UNKNOWN, **common)  # type: ignore[arg-type]


def mapping_of(answers: Iterable[Answer]) -> Mapping:
    """What the (local, observed) pairs of our outbound connections say of the NAT."""
    pairs = [(a.local, a.observed) for a in answers if a.outbound and a.local and a.observed]
    observed = tuple(sorted({tcp_addr(*o) for a in answers if (o := a.observed)}))
    if not pairs:
        return Mapping(None, None, None, observed)
    nat = any(local[0] != seen[0] for local, seen in pairs)
    preserving = all(local[1] == seen[1] for local, seen in pairs)
    by_port: dict[int, set[int]] = {}
    for local, seen in pairs:
        by_port.setdefault(local[1], set()).add(seen[1])
    if any(len(ports) > 1 for ports in by_port.values()):
        dependent: bool | None = True
    elif preserving and len(pairs) >= 2:
        dependent = False  # the port stayed whoever the other end was
    else:
        dependent = None
    return Mapping(nat, preserving, dependent, observed)


def merge(previous: Verdict, new: Verdict, config: ReachConfig) -> Verdict:
    """What to show after a round: a conclusive verdict outlives an inconclusive routine
    round for ``keep_for`` seconds (peers busy or gone say nothing about our addresses),
    but not a round started because our addresses changed."""
    routine = new.reason in ("periodic", "retry")
    if (new.state == UNKNOWN and previous.state != UNKNOWN and routine
            and new.at - previous.at < config.keep_for):
        return previous
    return new


# ----------------------------------------------------------------------------- when to ask


class Rechecks:
    """When the next round is due, and why. Feed it observations of our address as they
    arrive (identify replies, dial-back replies); ask :meth:`due` every tick."""

    def __init__(self, config: ReachConfig, started_at: float) -> None:
        self.config = config
        self.started_at = started_at
        self.last_round: float | None = None
        self.last_state = UNKNOWN
        self._known_ips: set[str] = set()  # observed IPs the last round saw
        self._listen: tuple[str, ...] = ()
        self._changed: str | None = None

    def observe(self, ip: str) -> None:
        """A peer saw us at ``ip`` (on a direct connection)."""
        if self.last_round is not None and ip not in self._known_ips and self._changed is None:
            self._changed = ip

    def due(self, now: float, candidates: int, listen: Sequence[str]) -> str | None:
        """The reason for a round now, or None."""
        cfg = self.config
        if candidates == 0:
            return None
        if self.last_round is None:
            waited = now - self.started_at
            if (candidates >= cfg.servers or waited >= cfg.start_grace and candidates >= cfg.private_min
                    or waited >= 4 * cfg.start_grace):
                return "first check"
            return None
        since = now - self.last_round
        if since < cfg.min_gap:
            return None
        if tuple(sorted(listen)) != self._listen:
            return "listen addresses changed"
        if self._changed is not None:
            return f"seen at a new address {self._changed}"
        if self.last_state == UNKNOWN and since >= cfg.retry:
            return "retry"
        if since >= cfg.interval:
            return "periodic"
        return None

    def round_done(self, verdict: Verdict, listen: Sequence[str]) -> None:
        self.last_round = verdict.at
        self.last_state = verdict.state
        self._known_ips = {o.split("/")[2] for o in verdict.mapping.observed}
        self._listen = tuple(sorted(listen))
        self._changed = None


# ----------------------------------------------------------------------------- serving


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """What a node spends on strangers' dial-back requests (see NETWORK.md)."""

    per_peer: Rate = Rate(1 / 60, 3)  # one requester: 3, then one a minute
    per_ip: Rate = Rate(1 / 20, 6)  # one requester IP (several nodes behind one NAT)
    total: Rate = Rate(0.5, 10)  # everyone together
    concurrent: int = 4  # requests being served at once; more are answered busy
    dial_timeout: float = 4.0  # one dial-back, connection and nonce
    max_tracked: int = 4096  # requesters and IPs whose buckets are remembered


class ServerPolicy:
    """Whether to serve a request, and which addresses to dial for it."""

    def __init__(self, limits: ServerLimits | None = None) -> None:
        self.limits = limits or ServerLimits()
        lim = self.limits
        self._peers = TokenBuckets(lim.per_peer, lim.max_tracked)
        self._ips = TokenBuckets(lim.per_ip, lim.max_tracked)
        self._total = TokenBuckets(lim.total, 1)
        self.refused: dict[str, int] = {"peer_rate": 0, "ip_rate": 0, "total_rate": 0}
        self.served = 0

    def admit(self, peer_id: str, ip: str, now: float) -> str | None:
        """None to serve (a token taken from each bucket), or why not."""
        for name, buckets, key in (("peer_rate", self._peers, peer_id), ("ip_rate", self._ips, ip),
                                   ("total_rate", self._total, "")):
            if buckets.tokens(key, now) < 1.0:
                self.refused[name] += 1
                return name
        self._peers.take(peer_id, now)
        self._ips.take(ip, now)
        self._total.take("", now)
        self.served += 1
        return None

    @staticmethod
    def targets(observed: tuple[str, int], ports: Iterable[int]) -> list[str]:
        """The addresses to dial: the requester's observed IP only, at each port it named
        (at most :data:`MAX_PORTS`, each once) and at its observed port."""
        ip, seen_port = observed
        named: list[str] = []
        for port in ports:
            if 0 < port < 65536 and (addr := tcp_addr(ip, port)) not in named:
                named.append(addr)
        seen = tcp_addr(ip, seen_port)
        return [a for a in named[:MAX_PORTS] if a != seen] + [seen]
