"""Alert rules: what is wrong with this node, judged from one observation at a time. Pure.

The companion service gathers an :class:`Observation` (peers, devices, disk, storage,
jobs, credits, peers' adverts) every few seconds and steps an :class:`AlertBook` with it;
the book answers the alerts that were raised or cleared by that step. Nothing here
reads a clock or a file: the observation carries the time.

Two kinds of hysteresis keep an alert from flapping:

- time: a condition must hold for the rule's ``raise_after`` seconds before it raises,
  and be gone for ``clear_after`` seconds before a raised alert clears;
- level: a check is told whether its alert is active, and uses a gentler threshold to
  clear than to raise (a GPU raises at 85 °C and clears below 78 °C).

Each rule has a severity (``critical``, ``warning``, ``info``), and each alert says
since when its condition holds and what the owner can do about it, in plain words.
"""

from __future__ import annotations

import dataclasses
import re
import statistics
from collections.abc import Callable, Sequence
from typing import Any

SEVERITIES = ("critical", "warning", "info")  # worst first
PEER_FLOOR = 3  # fewer connected peers than this, with more known, is an alert
GPU_HOT_C, GPU_COOL_C = 85, 78
BAD_THROTTLE = frozenset({"hw_slowdown", "hw_thermal", "sw_thermal", "hw_power_brake"})
QUOTA_RAISE, QUOTA_CLEAR = 0.90, 0.85
DISK_MIN_FREE, DISK_MIN_FRACTION = 2 << 30, 0.05  # whichever is larger
AUDIT_FAIL_RAISE, AUDIT_FAIL_CLEAR = 0.25, 0.10
FAILED_IN_A_ROW = 3
REPUTATION_RAISE, REPUTATION_CLEAR, REPUTATION_MIN_RUNS = 0.40, 0.50, 4
CREDITS_STALL_S = 6 * 3600.0
SKEW_RAISE_S, SKEW_CLEAR_S = 10.0, 5.0
_VERSION = re.compile(r"^poolai/(\d{1,6})\.(\d{1,6})\.(\d{1,6})")


@dataclasses.dataclass(frozen=True, slots=True)
class GpuReading:
    index: int
    name: str
    temperature_c: int | None = None
    throttle: tuple[str, ...] = ()  # NVML clock-event reasons now active ("hw_slowdown" ...)


@dataclasses.dataclass(frozen=True, slots=True)
class Observation:
    """What the node looks like at ``now`` (unix seconds). ``None``: not known here (a service
    the node does not run); a rule whose facts are unknown stays quiet."""

    now: float
    version: str
    peers_connected: int
    known_peers: int
    gpus: tuple[GpuReading, ...] | None = None
    gpu_note: str = ""
    disk_free: int | None = None
    disk_total: int | None = None
    storage_used: int | None = None
    storage_quota: int | None = None
    audited: int = 0  # audits of holders in the last upkeep pass, and how many failed
    audit_failures: int = 0
    corrupt_shares: int = 0  # shares on this disk that failed their hash
    job_outcomes: tuple[tuple[float, bool], ...] = ()  # (finished at, ok) of recent jobs, any order
    worker_ok: int = 0  # results of jobs this node ran for others: ok and not
    worker_failed: int = 0
    credits_earned: float | None = None
    contributing: bool = False  # holds shares or ran a job lately: credits should follow
    clock_offsets: tuple[float, ...] = ()  # peers' advert timestamp minus arrival here, seconds
    peer_software: tuple[str, ...] = ()  # peers' advertised "poolai/x.y.z"


@dataclasses.dataclass(frozen=True, slots=True)
class Alert:
    key: str
    severity: str
    title: str
    detail: str  # what is wrong now, with numbers
    fix: str  # what the owner can do
    since: float  # when the condition began (unix seconds)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """An alert raised, or cleared (``alert`` then is the alert as it last stood)."""

    kind: str  # "raised" | "cleared"
    alert: Alert
    at: float


@dataclasses.dataclass
class Memory:
    """What rules remember between observations (trends cannot be seen in one)."""

    gpus_max: int = 0
    earned: float | None = None
    earned_since: float = 0.0  # when earned last grew (or was first seen)
    scale: float = 1.0  # the book's delay scale, for checks that measure a duration themselves


Check = Callable[[Observation, Memory, bool], "str | None"]


@dataclasses.dataclass(frozen=True, slots=True)
class Rule:
    """``check(observation, memory, active)`` says what is wrong, or None; ``active`` tells
    it to use its clearing threshold."""

    key: str
    severity: str
    title: str
    fix: str
    check: Check
    raise_after: float = 0.0
    clear_after: float = 0.0


# ----------------------------------------------------------------------------- the checks


def _unreachable(o: Observation, m: Memory, active: bool) -> str | None:
    if o.peers_connected > 0 or o.known_peers == 0:
        return None
    return (f"no peer is connected: the mesh cannot reach this node; it knows {o.known_peers} peer(s) "
            f"but reaches none")


def _alone(o: Observation, m: Memory, active: bool) -> str | None:
    if o.peers_connected > 0 or o.known_peers > 0:
        return None
    return "this node knows no peer: it runs its owner's jobs itself and stores nothing for others"


def _few_peers(o: Observation, m: Memory, active: bool) -> str | None:
    if 0 < o.peers_connected < PEER_FLOOR <= o.known_peers:
        return f"only {o.peers_connected} peer(s) connected of {o.known_peers} known (floor {PEER_FLOOR})"
    return None


def _gpu_missing(o: Observation, m: Memory, active: bool) -> str | None:
    if o.gpus is None or len(o.gpus) >= m.gpus_max:
        return None
    note = f" ({o.gpu_note})" if o.gpu_note else ""
    return f"{len(o.gpus)} GPU(s) visible, {m.gpus_max} seen earlier{note}"


def _gpu_hot(o: Observation, m: Memory, active: bool) -> str | None:
    limit = GPU_COOL_C if active else GPU_HOT_C
    hot = [g for g in o.gpus or () if g.temperature_c is not None and g.temperature_c >= limit]
    return "; ".join(f"GPU {g.index} ({g.name}) at {g.temperature_c} °C" for g in hot) or None


def _gpu_throttled(o: Observation, m: Memory, active: bool) -> str | None:
    slow = [(g, sorted(BAD_THROTTLE & set(g.throttle))) for g in o.gpus or ()]
    return "; ".join(f"GPU {g.index} slowed by {', '.join(r)}" for g, r in slow if r) or None


def _disk_full(o: Observation, m: Memory, active: bool) -> str | None:
    if o.disk_free is None or not o.disk_total:
        return None
    floor = max(DISK_MIN_FREE, DISK_MIN_FRACTION * o.disk_total) * (1.5 if active else 1.0)
    if o.disk_free >= floor:
        return None
    return f"{_size(o.disk_free)} free of {_size(o.disk_total)} on the data directory's disk"


def _quota_full(o: Observation, m: Memory, active: bool) -> str | None:
    if o.storage_used is None or not o.storage_quota:
        return None
    used = o.storage_used / o.storage_quota
    if used < (QUOTA_CLEAR if active else QUOTA_RAISE):
        return None
    return f"shares use {used:.0%} of the storage quota ({_size(o.storage_used)} of {_size(o.storage_quota)})"


def _audits_failing(o: Observation, m: Memory, active: bool) -> str | None:
    parts = []
    if o.corrupt_shares:
        parts.append(f"{o.corrupt_shares} share(s) on this disk failed their hash check")
    if o.audited:
        failing = o.audit_failures / o.audited
        if failing >= (AUDIT_FAIL_CLEAR if active else AUDIT_FAIL_RAISE):
            parts.append(f"{o.audit_failures} of {o.audited} audits of your files' holders failed")
    return "; ".join(parts) or None


def own_reputation(ok: int, failed: int) -> float:
    """This node's score as its submitters build it from the results it sent (the same
    formula as :func:`poolai.node.credits.policy.reputation`: 0.5 for no history)."""
    return (ok + 1.0) / (ok + 4.0 * failed + 2.0)


def _reputation(o: Observation, m: Memory, active: bool) -> str | None:
    runs = o.worker_ok + o.worker_failed
    if runs < REPUTATION_MIN_RUNS:
        return None
    score = own_reputation(o.worker_ok, o.worker_failed)
    if score >= (REPUTATION_CLEAR if active else REPUTATION_RAISE):
        return None
    return f"{o.worker_failed} of the last {runs} jobs run for peers failed (score {score:.2f})"


def failed_in_a_row(outcomes: Sequence[tuple[float, bool]]) -> int:
    """How many of the newest outcomes failed, counting back to the last success."""
    count = 0
    for _, ok in sorted(outcomes, reverse=True):
        if ok:
            break
        count += 1
    return count


def _jobs_failing(o: Observation, m: Memory, active: bool) -> str | None:
    count = failed_in_a_row(o.job_outcomes)
    return f"the last {count} jobs failed" if count >= FAILED_IN_A_ROW else None


def _credits_stalled(o: Observation, m: Memory, active: bool) -> str | None:
    if o.credits_earned is None or not o.contributing or o.peers_connected == 0:
        return None
    flat = o.now - m.earned_since
    if flat < CREDITS_STALL_S * m.scale:
        return None
    return f"no credit earned for {flat / 3600:.1f} h although this node holds shares or runs jobs"


def clock_skew(offsets: Sequence[float]) -> float | None:
    """The median of peers' clock offsets (their advert time minus its arrival here)."""
    return statistics.median(offsets) if offsets else None


def _clock_skew(o: Observation, m: Memory, active: bool) -> str | None:
    skew = clock_skew(o.clock_offsets)
    if skew is None or abs(skew) < (SKEW_CLEAR_S if active else SKEW_RAISE_S):
        return None
    ahead = "behind" if skew > 0 else "ahead of"
    return f"this node's clock is {abs(skew):.0f} s {ahead} its peers' (median of {len(o.clock_offsets)})"


def parse_version(text: str) -> tuple[int, int, int] | None:
    """``(1, 2, 3)`` from ``poolai/1.2.3`` or ``1.2.3``; None for anything else."""
    match = _VERSION.match(text if text.startswith("poolai/") else f"poolai/{text}")
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def newer_release(mine: str, software: Sequence[str]) -> tuple[str, int] | None:
    """The newest version that at least two peers (or the only one) advertise, above ``mine``,
    and how many advertise it; a single peer cannot make every node nag its owner."""
    own = parse_version(mine)
    if own is None:
        return None
    newer = sorted((v for v in map(parse_version, software) if v is not None and v > own), reverse=True)
    need = min(2, len(software))
    for version in dict.fromkeys(newer):
        count = sum(v >= version for v in newer)
        if count >= need:
            return ".".join(map(str, version)), count
    return None


def _new_release(o: Observation, m: Memory, active: bool) -> str | None:
    found = newer_release(o.version, o.peer_software)
    if found is None:
        return None
    return f"{found[1]} peer(s) run poolai {found[0]}; this node runs {o.version}"


def _size(n: float) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


RULES: tuple[Rule, ...] = (
    Rule("unreachable", "critical", "Node unreachable",
         "Check the network and that the listen port (4001 by default) is open; if its peers all "
         "went away, restart with --bootstrap <a live peer's address>.", _unreachable, 120, 30),
    Rule("alone", "info", "Node alone",
         "To join a mesh, restart with --bootstrap <a peer's address> (it prints it as 'listening: ...').",
         _alone, 120, 30),
    Rule("few_peers", "warning", "Few peers",
         "Peers come and go; if this lasts, check the connection and raise max_peers.", _few_peers, 600, 120),
    Rule("gpu_missing", "critical", "GPU missing",
         "A GPU the node saw earlier is gone: check the driver (nvidia-smi) and the card; "
         "restart the node once it is back.", _gpu_missing, 60, 60),
    Rule("gpu_hot", "warning", "GPU hot",
         "Clean the fans and filters, improve airflow, or lower job_slots.", _gpu_hot, 60, 120),
    Rule("gpu_throttled", "warning", "GPU throttled",
         "The GPU slows itself down (heat or power brake): improve cooling or check the power supply.",
         _gpu_throttled, 120, 120),
    Rule("disk_full", "critical", "Disk nearly full",
         "Free disk space, or move the data directory to a larger disk.", _disk_full, 60, 120),
    Rule("quota_full", "warning", "Storage quota nearly full",
         "Raise storage_quota (or from the status page's admin section) if the disk has room.",
         _quota_full, 300, 300),
    Rule("audits_failing", "warning", "Audits failing",
         "Run 'poolai stat ID --verify' on your files; corrupt shares here mean a failing disk: check it.",
         _audits_failing, 0, 600),
    Rule("reputation_falling", "warning", "Reputation falling",
         "Jobs this node runs for peers fail, so peers trust it less: check its GPU, memory and "
         "the job log on the status page.", _reputation, 0, 600),
    Rule("jobs_failing", "warning", "Jobs failing in a row",
         "Open the failed jobs on the status page for their error; check the device and the worker sandbox.",
         _jobs_failing, 0, 0),
    Rule("credits_stalled", "warning", "Credits stalled",
         "Peers are not countersigning this node's claims: check 'poolai credits' and that the "
         "node's clock is right.", _credits_stalled, 0, 0),
    Rule("clock_skew", "warning", "Clock skew",
         "Turn on time synchronisation (NTP, e.g. 'timedatectl set-ntp true'): adverts with a "
         "skewed time are refused.", _clock_skew, 120, 120),
    Rule("new_release", "info", "New release",
         "Update poolai and restart the node when it suits you.", _new_release, 600, 600),
)
RULES_BY_KEY = {r.key: r for r in RULES}


@dataclasses.dataclass
class _Track:
    pending_since: float | None = None  # condition seen, not yet raised
    active: Alert | None = None
    clearing_since: float | None = None  # raised, condition gone since


class AlertBook:
    """The alerts of one node. :meth:`step` with each observation; :meth:`active` for the page.

    ``scale`` multiplies every rule's delays (tests and small meshes use less than 1).
    """

    def __init__(self, rules: Sequence[Rule] = RULES, scale: float = 1.0) -> None:
        self.rules = tuple(rules)
        self.scale = scale
        self.memory = Memory(scale=scale)
        self._tracks = {r.key: _Track() for r in self.rules}

    def step(self, obs: Observation) -> list[Event]:
        """Judge ``obs``; the alerts raised or cleared by it, worst first."""
        self._remember(obs)
        events: list[Event] = []
        for rule in self.rules:
            track = self._tracks[rule.key]
            detail = rule.check(obs, self.memory, track.active is not None)
            if detail is not None:
                track.clearing_since = None
                if track.active is not None:
                    track.active = dataclasses.replace(track.active, detail=detail)
                    continue
                if track.pending_since is None:
                    track.pending_since = obs.now
                if obs.now - track.pending_since >= rule.raise_after * self.scale:
                    track.active = Alert(rule.key, rule.severity, rule.title, detail, rule.fix,
                                         since=track.pending_since)
                    events.append(Event("raised", track.active, obs.now))
                continue
            track.pending_since = None
            if track.active is None:
                continue
            if track.clearing_since is None:
                track.clearing_since = obs.now
            if obs.now - track.clearing_since >= rule.clear_after * self.scale:
                events.append(Event("cleared", track.active, obs.now))
                track.active, track.clearing_since = None, None
        return sorted(events, key=lambda e: SEVERITIES.index(e.alert.severity))

    def active(self) -> list[Alert]:
        """Raised alerts, worst first, then oldest first."""
        found = [t.active for t in self._tracks.values() if t.active is not None]
        return sorted(found, key=lambda a: (SEVERITIES.index(a.severity), a.since, a.key))

    def _remember(self, obs: Observation) -> None:
        m = self.memory
        if obs.gpus is not None:
            m.gpus_max = max(m.gpus_max, len(obs.gpus))
        if obs.credits_earned is not None:
            if m.earned is None or obs.credits_earned > m.earned or not obs.contributing:
                m.earned_since = obs.now
            m.earned = obs.credits_earned
