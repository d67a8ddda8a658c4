"""What the status page shows, computed from the node's status: pure, no I/O.

The page polls ``/api/page``, which is :func:`page_view` of the live status.
Everything that can grow with the mesh (peers, capacity adverts, jobs, files)
comes back as one page of at most :data:`PAGE_SIZE` rows plus totals, so a node
with 200 peers and 1,000 finished jobs sends the browser about as much as one
with three. Sections whose service this node does not run come back as None
and the page says so.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

PAGE_SIZE = 25
PEERS_PAGE = 15
CREDIT_KEYS = ("balance", "earned", "spent", "receipts", "priority", "payout_address")
MAX_ALERTS = 12
LOG_TAIL = 60
STORAGE_WARN = 0.9  # fraction of the quota used above which the page warns


def page_of(items: Sequence[Any], offset: int, size: int = PAGE_SIZE) -> dict[str, Any]:
    """``{"total", "offset", "items"}`` for one page; ``offset`` is clamped into range."""
    total = len(items)
    offset = max(0, min(offset, max(total - 1, 0)))
    offset -= offset % size
    return {"total": total, "offset": offset, "size": size, "items": list(items[offset:offset + size])}


def reachability(addrs: Sequence[str]) -> dict[str, Any]:
    """What the listen addresses say about reachability (the node runs no NAT probe yet)."""
    kinds = {_addr_kind(a) for a in addrs}
    if "public" in kinds:
        state, note = "public", "listens on a public address; peers anywhere can dial it"
    elif "private" in kinds:
        state, note = "private", ("listens on a private (LAN) address only: peers outside this network "
                                  "reach it only through connections it opens")
    elif kinds and kinds <= {"loopback"}:
        state, note = "local", "listens on loopback only: reachable from this machine alone"
    else:
        state, note = "unknown", "no dialable address"
    return {"state": state, "note": note}


def reach_view(reach: Any) -> dict[str, Any] | None:
    """What the dial-back checks concluded (the ``reach`` section), for the node card: the
    line ("reachable from the internet at ...", "behind NAT, reachable through relays ...",
    "LAN only: ..."), the verdict's own detail, the relay addresses, the observed public
    address and what the observed ports tell of the NAT."""
    if not isinstance(reach, Mapping):
        return None
    mapping = reach.get("mapping") if isinstance(reach.get("mapping"), Mapping) else {}
    return {"state": reach.get("state"), "line": str(reach.get("summary") or reach.get("line") or ""),
            "detail": str(reach.get("line") or ""),
            "relay_addrs": [str(a) for a in list(reach.get("relay_addrs") or ())[:8]],
            "public_addr": reach.get("public_addr"), "observed_ip": reach.get("observed_ip"),
            "answers": reach.get("answers"), "age_s": reach.get("age_s"),
            "nat": mapping.get("nat"), "port_preserving": mapping.get("port_preserving"),
            "address_dependent": mapping.get("address_dependent"),
            "observed": list(mapping.get("observed") or ())[:8]}


def _addr_kind(addr: str) -> str:
    parts = addr.split("/")
    if len(parts) < 3 or parts[1] not in ("ip4", "ip6"):
        return "other"
    try:
        ip = ipaddress.ip_address(parts[2])
    except ValueError:
        return "other"
    if ip.is_loopback:
        return "loopback"
    if ip.is_unspecified:
        return "other"
    return "private" if ip.is_private or ip.is_link_local else "public"


def latencies(status: Mapping[str, Any], capacity_entries: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Best round-trip estimate per peer, in ms: measured overlay pings, then predictions."""
    out: dict[str, float] = {}
    for entry in capacity_entries:
        if isinstance(entry.get("rtt_ms"), int | float):
            out[entry["peer_id"]] = float(entry["rtt_ms"])
    overlay = status.get("overlay")
    if isinstance(overlay, Mapping):
        for kind in ("successors", "predecessors", "long", "proximity"):
            for link in overlay.get(kind) or ():
                value = link.get("rtt_ms", link.get("predicted_rtt_ms"))
                if isinstance(value, int | float):
                    out[link["peer_id"]] = float(value)
    return out


def devices(self_entry: Mapping[str, Any] | None, capacity: Mapping[str, Any] | None,
            entries: Sequence[Mapping[str, Any]], self_id: str) -> dict[str, Any] | None:
    """This node's devices (from its own advert) and a summary of the pool's."""
    if capacity is None:
        return None
    others = [e for e in entries if e.get("peer_id") != self_id]
    pool = {
        "peers": len(others),
        "gpus": sum(len(e.get("gpus") or ()) for e in others),
        "gpu_memory_total": sum(g.get("memory_total", 0) for e in others for g in e.get("gpus") or ()),
        "cpu_cores": sum(e.get("cpu_cores", 0) for e in others),
        "free_slots": sum(e.get("free_slots", 0) for e in others),
    }
    mine = None
    if self_entry is not None:
        mine = {k: self_entry.get(k) for k in (
            "gpus", "cpu_cores", "ram_total", "ram_free", "storage_free", "job_slots", "free_slots",
            "queue_length", "driver_version", "cuda_version", "torch_cuda", "simulated")}
    return {"self": mine, "note": capacity.get("inventory_note", ""),
            "simulated": bool(capacity.get("simulated")), "pool": pool}


def alerts(status: Mapping[str, Any], warnings: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Conditions an owner should see, worst first, then the newest logged warnings."""
    found: list[dict[str, Any]] = []

    def add(level: str, text: str) -> None:
        found.append({"level": level, "text": text})

    companion = status.get("companion")
    raised = companion.get("alerts") if isinstance(companion, Mapping) else None
    raised = [a for a in raised if isinstance(a, Mapping)] if isinstance(raised, list) else []
    for a in raised:  # the companion's rules (with delays against flapping) come first
        add(str(a.get("severity")), f"{a.get('title')} (since {_utc(a.get('since'))}): {a.get('detail')}. "
                                    f"Fix: {a.get('fix')}")
    covered = {a.get("key") for a in raised}
    if not status.get("peers") and not covered & {"unreachable", "alone"}:
        add("warning", "No peer connected: the node is alone (check the bootstrap addresses).")
    overlay = status.get("overlay")
    if isinstance(overlay, Mapping) and status.get("peers") and not overlay.get("successors"):
        add("info", "The overlay has no successor yet; it is still joining the ring.")
    storage = status.get("storage")
    if isinstance(storage, Mapping):
        used, quota = storage.get("used_bytes"), storage.get("quota_bytes")
        if (isinstance(used, int) and isinstance(quota, int) and quota > 0 and used >= STORAGE_WARN * quota
                and "quota_full" not in covered):
            add("warning", f"Storage is {used / quota:.0%} full.")
    jobs = status.get("jobs")
    if isinstance(jobs, Mapping):
        if jobs.get("draining"):
            add("info", "Draining: running jobs finish, no new job is accepted.")
        if jobs.get("paused"):
            add("info", "Jobs are paused: queued jobs wait until you resume.")
        sandbox = jobs.get("sandbox")
        if isinstance(sandbox, Mapping) and sandbox.get("available") is False:
            if sandbox.get("unsandboxed_jobs"):
                add("warning", f"No job sandbox ({sandbox.get('problem')}): peers' jobs run "
                               "without it because unsandboxed_jobs = true.")
            else:
                add("warning", f"No job sandbox ({sandbox.get('problem')}): peers' jobs are "
                               "refused; this node's own jobs still run.")
    room = MAX_ALERTS - len(found)
    for entry in list(warnings)[-room:] if room > 0 else []:
        add(entry["level"], f"{entry['logger']}: {entry['msg']}")
    order = {"error": 0, "critical": 0, "warning": 1, "info": 2}
    return sorted(found, key=lambda a: order.get(a["level"], 3))[:MAX_ALERTS]


def _utc(t: Any) -> str:
    if not isinstance(t, int | float):
        return "?"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))


def page_view(
    status: Mapping[str, Any],
    *,
    capacity_entries: Sequence[Mapping[str, Any]] = (),
    log: Sequence[Mapping[str, Any]] = (),
    jobs: Mapping[str, Any] | None = None,
    files: Sequence[Mapping[str, Any]] | None = None,
    peers_offset: int = 0,
    jobs_offset: int = 0,
) -> dict[str, Any]:
    """The JSON document behind the page (see docs/status-page.md for its fields)."""
    self_id = str(status.get("peer_id", ""))
    rtt = latencies(status, capacity_entries)
    peers = sorted(
        ({"peer_id": p["peer_id"], "addrs": list(p.get("addrs") or ())[:4], "rtt_ms": rtt.get(p["peer_id"])}
         for p in status.get("peers") or ()),
        key=lambda p: (p["rtt_ms"] is None, p["rtt_ms"] or 0.0, p["peer_id"]),
    )
    self_entry = next((e for e in capacity_entries if e.get("peer_id") == self_id), None)
    capacity = status.get("capacity") if isinstance(status.get("capacity"), Mapping) else None
    warnings = [e for e in log if logging.getLevelName(str(e.get("level", "")).upper()) in
                (logging.WARNING, logging.ERROR, logging.CRITICAL)]
    return {
        "node": {
            "peer_id": self_id,
            "addrs": list(status.get("addrs") or ()),
            "version": status.get("version"),
            "uptime_s": status.get("uptime_s"),
            "known_peers": status.get("known_peers"),
            "reachability": reachability(list(status.get("addrs") or ())),
            "reach": reach_view(status.get("reach")),
        },
        "peers": page_of(peers, peers_offset, PEERS_PAGE),
        "overlay": status.get("overlay"),
        "devices": devices(self_entry, capacity, capacity_entries, self_id),
        "jobs": _jobs_view(jobs, jobs_offset),
        "storage": _storage_view(status.get("storage"), files),
        "credits": _credits_view(status.get("credits")),
        "alerts": alerts(status, warnings),
        "log": list(log)[-LOG_TAIL:],
        "sections": sorted(k for k, v in status.items() if isinstance(v, Mapping)),
    }


def job_rows(submitted: Sequence[Mapping[str, Any]], worker: Mapping[str, Any] | None,
             now: float) -> list[dict[str, Any]]:
    """One row per job: those this node submitted (``JobService.job_json``) and those it runs.

    A worker-side job has no timings of its own here; its submitter's page has them.
    """
    rows = []
    for job in submitted:
        result = job.get("result") or {}
        timings = result.get("timings") or {}
        finished = job.get("phase") in ("done", "cancelled")
        submitted_at, finished_at = job.get("submitted_at"), job.get("finished_at")
        rows.append({
            "job_id": job.get("job_id"), "role": "submitted",
            "device": (job.get("requirements") or {}).get("device"),
            "state": job.get("state"), "finished": finished,
            "result": result.get("status") or ("cancelled" if job.get("phase") == "cancelled" else None),
            "error": str(result.get("error") or "")[:300],
            "peer": job.get("worker") or None,
            "submitted_at": submitted_at, "running_at": job.get("running_at"), "finished_at": finished_at,
            "run_s": timings.get("run_s"), "wall_s": timings.get("wall_s"),
            "total_s": _span(submitted_at, finished_at),
            "elapsed_s": None if finished else _span(submitted_at, now),
        })
    held = (worker or {}).get("held", (worker or {}).get("jobs"))
    for job in held or ():
        rows.append({"job_id": job.get("job_id"), "role": "run here", "device": None,
                     "state": job.get("state"), "finished": False, "result": None, "error": "",
                     "peer": job.get("submitter"), "submitted_at": None, "finished_at": None,
                     "run_s": None, "total_s": None, "elapsed_s": None})
    return rows


def _span(start: Any, end: Any) -> float | None:
    if isinstance(start, int | float) and isinstance(end, int | float):
        return round(max(0.0, end - start), 3)
    return None


def _jobs_view(jobs: Mapping[str, Any] | None, offset: int) -> dict[str, Any] | None:
    """Active jobs in full (bounded by the node's limits), finished ones a page at a time."""
    if jobs is None:
        return None
    items = list(jobs.get("rows") or ())
    active = [j for j in items if not j.get("finished")]
    finished = sorted((j for j in items if j.get("finished")),
                      key=lambda j: j.get("finished_at") or 0.0, reverse=True)
    counts: dict[str, int] = {}
    for job in items:
        key = str(job.get("result") or job.get("state"))
        counts[key] = counts.get(key, 0) + 1
    return {
        "counts": dict(sorted(counts.items())),
        "active": active[:PAGE_SIZE * 4],
        "active_total": len(active),
        "finished": page_of(finished, offset),
        **{k: v for k, v in jobs.items() if k != "rows"},
    }


def _credits_view(credits: Any) -> dict[str, Any] | None:
    if not isinstance(credits, Mapping):
        return None
    ledger = credits.get("ledger") if isinstance(credits.get("ledger"), Mapping) else {}
    return {**{k: credits.get(k) for k in CREDIT_KEYS if k in credits},
            "ledger_held": ledger.get("held"), "ledger_pending": ledger.get("pending")}


def file_health(counts: Mapping[str, int] | None) -> str:
    """One word for a file from its segments' health counts: lost, degraded, concentrated
    (every share found, but some peers hold several), healthy or unchecked."""
    if not counts:
        return "unchecked"
    for word in ("lost", "degraded", "concentrated"):
        if counts.get(word):
            return word
    return "healthy"


def _storage_view(storage: Any, files: Sequence[Mapping[str, Any]] | None) -> dict[str, Any] | None:
    """The storage section, with the files this node placed, newest first, one page of them."""
    if not isinstance(storage, Mapping):
        return None
    listed = sorted(files or (), key=lambda f: f.get("added") or 0, reverse=True)
    keep = ("quota_bytes", "used_bytes", "shares", "files", "pinned", "hash_failures")
    return {**{k: storage.get(k) for k in keep},
            "recent_errors": list(storage.get("recent_errors") or ())[-5:],
            "placed": [{**f, "health": file_health(f.get("health"))} for f in listed[:PAGE_SIZE]]}
