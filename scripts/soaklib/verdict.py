"""The soak's verdicts from what it recorded: resource trends, jobs' results, ledgers.

Pure functions of plain data, so each rule is tested without a mesh
(``tests/test_soak_verdict.py``).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from poolai.mesh.short_ids import short_id

MiB = 1 << 20


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading of a node process: seconds since the soak began, pid, RSS bytes, fds."""

    t: float
    pid: int
    rss: int
    fds: int


@dataclass(frozen=True, slots=True)
class Bounds:
    """What "bounded" means for one node process (the soak's defaults, see ``--help``)."""

    rss_mib: float = 640.0
    fds: int = 512
    rss_slope_mib_per_min: float = 4.0
    fds_slope_per_min: float = 10.0
    # A slope fitted over a shorter window measures a node's warm-up, not a leak: it is
    # reported but not judged.
    trend_minutes: float = 5.0


def slope_per_minute(points: Sequence[tuple[float, float]]) -> float:
    """The least-squares slope of ``(seconds, value)`` points, per minute; 0 for fewer than
    two distinct times."""
    n = len(points)
    if n < 2:
        return 0.0
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    return 60.0 * sum((t - mt) * (v - mv) for t, v in points) / var


def trend_points(samples: Sequence[Sample], start: float) -> list[Sample]:
    """The samples a node's trend is fitted on: those from ``start`` on, of the process
    that ran longest in that window (a restart starts a new process whose memory begins
    low again, so one line through two processes would measure the restart, not a leak)."""
    spans: dict[int, list[Sample]] = defaultdict(list)
    for s in samples:
        if s.t >= start:
            spans[s.pid].append(s)
    if not spans:
        return []
    return max(spans.values(), key=lambda run: (run[-1].t - run[0].t, len(run)))


def resources(samples: Mapping[str, Sequence[Sample]], start: float, bounds: Bounds) -> dict[str, Any]:
    """Per node: max RSS (MiB) and fds over the whole run, and their slopes per minute over
    the window from ``start`` (the run's second half); ``ok`` when all are within ``bounds``."""
    nodes, over = {}, []
    for name, series in samples.items():
        if not series:
            continue
        trend = trend_points(series, start)
        row = {"max_rss_mib": round(max(s.rss for s in series) / MiB, 1),
               "max_fds": max(s.fds for s in series),
               "rss_slope_mib_per_min": round(slope_per_minute([(s.t, s.rss / MiB) for s in trend]), 3),
               "fds_slope_per_min": round(slope_per_minute([(s.t, s.fds) for s in trend]), 3),
               "trend_minutes": round((trend[-1].t - trend[0].t) / 60, 2) if trend else 0.0,
               "samples": len(series)}
        nodes[name] = row
        judged = row["trend_minutes"] >= bounds.trend_minutes
        row["slopes_judged"] = judged
        if (row["max_rss_mib"] > bounds.rss_mib or row["max_fds"] > bounds.fds
                or judged and (row["rss_slope_mib_per_min"] > bounds.rss_slope_mib_per_min
                               or row["fds_slope_per_min"] > bounds.fds_slope_per_min)):
            over.append(name)
    rows = nodes.values()
    return {
        "ok": not over and bool(nodes),
        "bounds": {"rss_mib": bounds.rss_mib, "fds": bounds.fds,
                   "rss_slope_mib_per_min": bounds.rss_slope_mib_per_min,
                   "fds_slope_per_min": bounds.fds_slope_per_min,
                   "slopes_judged_from_minutes": bounds.trend_minutes},
        "max_rss_mib": max((r["max_rss_mib"] for r in rows), default=0.0),
        "max_fds": max((r["max_fds"] for r in rows), default=0),
        "max_rss_slope_mib_per_min": max((r["rss_slope_mib_per_min"] for r in rows), default=0.0),
        "max_fds_slope_per_min": max((r["fds_slope_per_min"] for r in rows), default=0.0),
        "over_bounds": sorted(over), "nodes": nodes,
    }


def responsiveness(times: Sequence[float], prompt_s: float) -> dict[str, Any]:
    """How one process answered its probes (seconds each; inf for no answer): how many,
    the share within ``prompt_s``, the 99th percentile and the worst."""
    if not times:
        return {"probes": 0, "over": 0, "prompt_share": 1.0, "median_s": None, "p99_s": 0.0, "worst_s": 0.0}
    ordered = sorted(times)
    over = sum(t > prompt_s for t in ordered)

    def seconds(t: float) -> float | None:  # JSON has no infinity: None is "no answer"
        return round(t, 4) if math.isfinite(t) else None

    return {"probes": len(ordered), "over": over, "prompt_share": round(1 - over / len(ordered), 5),
            "median_s": seconds(ordered[len(ordered) // 2]),
            "p99_s": seconds(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]),
            "worst_s": seconds(ordered[-1])}


class JobRecord:
    """Every observation of each job's result: a job must end with exactly one terminal
    state and its accepted result must never change once seen."""

    def __init__(self) -> None:
        self.submitted: dict[str, Any] = {}  # job id -> what the soak needs to check it
        self.results: dict[str, tuple[Any, ...]] = {}  # job id -> the first result seen
        self.changed: dict[str, list[tuple[Any, ...]]] = {}
        self.terminal: dict[str, str] = {}  # job id -> "done: <status>" or "cancelled"
        self.wrong_output: list[str] = []
        self.ok_runs: Counter[str] = Counter()

    def submit(self, job_id: str, expected: Any) -> None:
        self.submitted[job_id] = expected

    def observe(self, job: Mapping[str, Any]) -> bool:
        """Record one status document; True when the job has just ended (first sight)."""
        job_id = job["job_id"]
        if job["phase"] not in ("done", "cancelled"):
            return False
        result = job.get("result")
        key = ("cancelled",) if result is None else (
            result["status"], job.get("worker"), job.get("output_id"),
            (result.get("output") or {}).get("sha256"))
        self.ok_runs[job_id] = max(self.ok_runs[job_id],
                                   sum(a.get("outcome") == "ok" for a in job.get("attempts", ())))
        first = self.results.setdefault(job_id, key)
        if key != first:
            self.changed.setdefault(job_id, []).append(key)
        if job_id in self.terminal:
            return False
        self.terminal[job_id] = "cancelled" if result is None else f"done: {result['status']}"
        return True

    def verdict(self) -> dict[str, Any]:
        unfinished = sorted(set(self.submitted) - set(self.terminal))
        ends = Counter(self.terminal.get(j, "unfinished") for j in self.submitted)
        return {"ok": not unfinished and not self.changed and not self.wrong_output,
                "submitted": len(self.submitted), "ends": dict(sorted(ends.items())),
                "unfinished": unfinished[:20], "results_changed": dict(list(self.changed.items())[:20]),
                "wrong_output": self.wrong_output[:20],
                "jobs_with_two_ok_runs": sum(1 for v in self.ok_runs.values() if v > 1)}


def ledgers_agree(balances: Mapping[str, Mapping[str, Mapping[str, int]]],
                  statements: Mapping[str, Iterable[Mapping[str, Any]]]) -> dict[str, Any]:
    """Whether the nodes' ledgers agree on what they share.

    ``balances``: each node's ``/api/credits/balances`` (peer -> account), keyed by the
    node's peer id; ``statements``: each node's own statement rows, by the same keys.
    A node keeps all of its own receipts but only a bounded share of others' (see
    ``node/credits/retention.py``), so two views of a third peer may rightly differ by
    receipts one of them did not keep. What must hold:

    * every node's accounts sum to zero (each receipt is one peer's credit and
      another's debit);
    * a receipt in the statements of both its parties has the same credits, earned by
      one and spent by the other;
    * no node's view of a peer holds more than that peer's own view of itself: more
      receipts, or more earned or spent, would be a receipt the peer never signed.

    ``identical_views`` counts the nodes whose whole view equals the first node's.
    """
    problems = []
    for node, accounts in balances.items():
        total = sum(a["balance_milli"] for a in accounts.values())
        if total != 0:
            problems.append(f"{short_id(node)}: balances sum to {total} millicredits")
    seen: dict[str, tuple[str, str, float, str]] = {}
    shared = 0
    for node, rows in statements.items():
        for row in rows:
            mine = (node, row["direction"], abs(row["credits"]), row["counterparty"])
            other = seen.get(row["receipt_id"])
            if other is None:
                seen[row["receipt_id"]] = mine
                continue
            shared += 1
            if not (other[0] == row["counterparty"] and other[3] == node and other[2] == mine[2]
                    and {other[1], mine[1]} == {"earned", "spent"}):
                problems.append(f"receipt {row['receipt_id'][:12]}: {other} vs {mine}")
    for viewer, accounts in balances.items():
        for peer, account in accounts.items():
            own = balances.get(peer, {}).get(peer)
            if own is None:
                continue  # not one of the nodes asked: nothing to compare with
            for key in ("receipts", "earned_milli", "spent_milli"):
                if account[key] > own[key]:
                    problems.append(f"{short_id(viewer)} counts {key} {account[key]} for {short_id(peer)}, "
                                    f"which counts {own[key]} itself")
    reference = next(iter(balances.values()), {})
    identical = sum(dict(view) == dict(reference) for view in balances.values())
    return {"ok": not problems, "nodes": len(balances), "identical_views": identical,
            "receipts_in_two_statements": shared, "receipts": len(seen), "problems": problems[:20]}
