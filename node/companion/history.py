"""The node's history: a bounded time series of what it did, and the streaks it makes. Pure.

Two rings: a point a minute for the last day (1,440) and a point an hour for the last 90
days (2,160), each point holding five series:

- ``peers``: peers connected (a gauge; an hourly point holds the hour's mean);
- ``stored``: bytes of shares kept for the mesh (a gauge, likewise);
- ``served``, ``jobs``, ``earned``: bytes served to peers, jobs finished (run here or
  submitted from here) and credits earned, as running totals that survive restarts
  (the node's own counters start again at 0 with each process; :meth:`History.record`
  adds what they grew by, so a restart loses at most one minute).

The service records one sample a minute and saves :meth:`History.to_json` now and then
and at stop (``companion/history.json``, version 1); :func:`History.from_json` checks
every field before trusting it. About 230 KB on disk when full.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

FIELDS = ("peers", "stored", "served", "jobs", "earned")
GAUGES = ("peers", "stored")
COUNTERS = ("served", "jobs", "earned")
MINUTE, HOUR, DAY = 60, 3600, 86400
MINUTES_KEPT = 24 * 60
HOURS_KEPT = 90 * 24
FORMAT_VERSION = 1
MILESTONES: tuple[tuple[str, str, tuple[float, ...]], ...] = (
    ("jobs", "jobs run", (1, 10, 100, 1_000, 10_000, 100_000)),
    ("served", "bytes served", (1 << 30, 10 << 30, 100 << 30, 1 << 40, 10 << 40)),
    ("earned", "credits earned", (1, 10, 100, 1_000, 10_000, 100_000)),
    ("streak", "days in a row", (3, 7, 30, 90, 365)),
)


@dataclasses.dataclass(frozen=True, slots=True)
class Point:
    t: float  # the start of its minute or hour (unix seconds)
    peers: float
    stored: float
    served: float
    jobs: float
    earned: float


@dataclasses.dataclass(frozen=True, slots=True)
class Sample:
    """One reading of the node: gauges as they are, the process's counters as they stand."""

    peers: int
    stored: int
    served: int  # bytes served since this process started
    jobs: int  # jobs finished since this process started
    earned: float  # credits earned (the ledger's total: it survives restarts itself)


class History:
    """The two rings, and the running totals of the counters."""

    def __init__(self) -> None:
        self.minutes: deque[Point] = deque(maxlen=MINUTES_KEPT)
        self.hours: deque[Point] = deque(maxlen=HOURS_KEPT)
        self.totals = {"served": 0.0, "jobs": 0.0}
        self._raw: dict[str, float] = {"served": 0.0, "jobs": 0.0}  # this process's counters last seen

    def record(self, now: float, sample: Sample) -> Point:
        """Add ``sample`` taken at ``now``: one point per minute (a second sample in the same
        minute replaces the first); an hour that ended is folded into its hourly point."""
        for key in ("served", "jobs"):
            raw = float(getattr(sample, key))
            grown = raw - self._raw[key] if raw >= self._raw[key] else raw  # a smaller one: restarted
            self.totals[key] += max(0.0, grown)
            self._raw[key] = raw
        point = Point(t=float(int(now) // MINUTE * MINUTE), peers=float(sample.peers),
                      stored=float(sample.stored), served=self.totals["served"], jobs=self.totals["jobs"],
                      earned=float(sample.earned))
        if self.minutes and self.minutes[-1].t == point.t:
            self.minutes.pop()
        elif self.minutes and self.minutes[-1].t > point.t:
            return self.minutes[-1]  # the clock stepped back: keep the series ordered
        if self.minutes and _hour(self.minutes[-1].t) != _hour(point.t):
            self._fold(_hour(self.minutes[-1].t))
        self.minutes.append(point)
        return point

    def _fold(self, hour: float) -> None:
        inside = [p for p in self.minutes if _hour(p.t) == hour]
        if not inside or (self.hours and self.hours[-1].t >= hour):
            return
        self.hours.append(_mean_point(hour, inside))

    def hourly(self) -> list[Point]:
        """The hourly ring with the current hour so far as its last point."""
        out = list(self.hours)
        if self.minutes:
            hour = _hour(self.minutes[-1].t)
            if not out or out[-1].t < hour:
                out.append(_mean_point(hour, [p for p in self.minutes if _hour(p.t) == hour]))
        return out

    def latest(self) -> Point | None:
        return self.minutes[-1] if self.minutes else None

    def change(self, since: float) -> dict[str, float]:
        """How much each counter grew since ``since`` (from the finest ring that reaches back)."""
        points = list(self.minutes) if self.minutes and self.minutes[0].t <= since else self.hourly()
        if not points:
            return {k: 0.0 for k in COUNTERS}
        before = [p for p in points if p.t <= since]
        if before:
            start = {k: getattr(before[-1], k) for k in COUNTERS}
        else:  # the history began after ``since``: served and jobs count from 0 at its start
            start = {"served": 0.0, "jobs": 0.0, "earned": points[0].earned}
        return {k: max(0.0, getattr(points[-1], k) - start[k]) for k in COUNTERS}

    # ------------------------------------------------------------------ on disk
    def to_json(self) -> dict[str, Any]:
        return {"version": FORMAT_VERSION, "totals": dict(self.totals),
                "minutes": columns(self.minutes), "hours": columns(self.hours)}

    @classmethod
    def from_json(cls, data: Any) -> History:
        """A history from :meth:`to_json`'s document; ValueError naming what is wrong."""
        if not isinstance(data, Mapping) or data.get("version") != FORMAT_VERSION:
            raise ValueError(f"not a version {FORMAT_VERSION} history document")
        history = cls()
        totals = data.get("totals")
        if not isinstance(totals, Mapping):
            raise ValueError("totals missing")
        for key in history.totals:
            history.totals[key] = _number(totals.get(key), f"totals.{key}")
        history.minutes.extend(_rows(data.get("minutes"), MINUTES_KEPT, "minutes"))
        history.hours.extend(_rows(data.get("hours"), HOURS_KEPT, "hours"))
        return history


def _hour(t: float) -> float:
    return float(int(t) // HOUR * HOUR)


def _mean_point(t: float, points: Sequence[Point]) -> Point:
    last = points[-1]
    return Point(t=t, peers=round(sum(p.peers for p in points) / len(points), 2),
                 stored=round(sum(p.stored for p in points) / len(points)),
                 served=last.served, jobs=last.jobs, earned=last.earned)


def columns(points: Iterable[Point]) -> dict[str, list[float]]:
    rows = list(points)
    return {f: [getattr(p, f) for p in rows] for f in ("t", *FIELDS)}


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what} is not a finite number")
    if value < 0 or value > 1e18:
        raise ValueError(f"{what} is out of range")
    return float(value)


def _rows(columns: Any, limit: int, what: str) -> list[Point]:
    if not isinstance(columns, Mapping):
        raise ValueError(f"{what} missing")
    lists = [columns.get(f) for f in ("t", *FIELDS)]
    if not all(isinstance(c, list) for c in lists) or len({len(c) for c in lists}) != 1:  # type: ignore[arg-type]
        raise ValueError(f"{what}: columns missing or of different lengths")
    rows = list(zip(*lists, strict=True))[-limit:]  # type: ignore[call-overload]
    points = [Point(*(_number(v, what) for v in row)) for row in rows]
    if any(a.t >= b.t for a, b in zip(points, points[1:], strict=False)):
        raise ValueError(f"{what}: times not increasing")
    return points


# ----------------------------------------------------------------------------- what the page shows


def chart(points: Sequence[Point], field: str, *, width: int = 600, height: int = 120,
          rate: bool = False) -> dict[str, Any]:
    """One series as an SVG polyline in a ``width`` x ``height`` box (y grows downwards).

    ``rate``: plot each step's growth of a running total instead of the total."""
    if field not in FIELDS:
        raise ValueError(f"unknown series {field!r}")
    if not points:
        return {"field": field, "points": "", "max": 0, "last": None, "total": None,
                "start": None, "end": None}
    xs = [p.t for p in points]
    values = [getattr(p, field) for p in points]
    if rate:
        values = [0.0] + [max(0.0, b - a) for a, b in zip(values, values[1:], strict=False)]
    top = max(values) or 1.0
    x0, sx, sy = xs[0], width / ((xs[-1] - xs[0]) or 1.0), (height - 4) / top
    coords = " ".join(["%.1f,%.1f" % ((x - x0) * sx, height - 2 - v * sy)  # noqa: UP031 - twice as fast
                       for x, v in zip(xs, values, strict=True)])
    return {"field": field, "points": coords, "max": max(values), "last": values[-1],
            "total": sum(values) if rate else None, "start": xs[0], "end": xs[-1]}


def charts(points: Sequence[Point]) -> list[dict[str, Any]]:
    """The page's charts of ``points`` (``list(history.minutes)`` or ``history.hourly()``)."""
    return [
        {**chart(points, "peers"), "label": "peers connected", "unit": "peers"},
        {**chart(points, "stored"), "label": "bytes stored for the mesh", "unit": "bytes"},
        {**chart(points, "served", rate=True), "label": "bytes served", "unit": "bytes"},
        {**chart(points, "jobs", rate=True), "label": "jobs finished", "unit": "jobs"},
        {**chart(points, "earned", rate=True), "label": "credits earned", "unit": "credits"},
    ]


def contribution_days(history: History) -> set[int]:
    """UTC day numbers (unix days) in which this node held shares, served, ran jobs or earned."""
    days: set[int] = set()
    for ring in (history.hourly(), list(history.minutes)):
        previous: Point | None = None
        for p in ring:
            grew = previous is not None and any(getattr(p, k) > getattr(previous, k) for k in COUNTERS)
            if p.stored > 0 or grew:
                days.add(int(p.t // DAY))
            previous = p
    return days


def streaks(history: History, now: float | None = None) -> dict[str, int]:
    """``current``: days in a row up to today (or yesterday, while today is young) with a
    contribution; ``best``: the longest such run kept in the history; ``days``: how many."""
    now = time.time() if now is None else now
    days = contribution_days(history)
    today = int(now // DAY)
    start = today if today in days else today - 1
    current = 0
    while start - current in days:
        current += 1
    best = run = 0
    for day in sorted(days):
        run = run + 1 if day - 1 in days else 1
        best = max(best, run)
    return {"current": current, "best": best, "days": len(days)}


def milestones(history: History, now: float | None = None, streak: int | None = None) -> dict[str, Any]:
    """Milestones reached (the highest of each kind) and the next one of each, with progress
    (``streak``: the current streak when the caller has it already)."""
    latest = history.latest()
    days = streaks(history, now)["current"] if streak is None else streak
    have = {"jobs": latest.jobs if latest else 0.0, "served": latest.served if latest else 0.0,
            "earned": latest.earned if latest else 0.0, "streak": float(days)}
    reached, upcoming = [], []
    for key, label, goals in MILESTONES:
        done = [g for g in goals if have[key] >= g]
        if done:
            reached.append({"kind": key, "label": label, "goal": done[-1]})
        rest = [g for g in goals if have[key] < g]
        if rest:
            upcoming.append({"kind": key, "label": label, "goal": rest[0], "have": have[key],
                             "progress": round(min(1.0, have[key] / rest[0]), 3)})
    return {"reached": reached, "next": upcoming}
