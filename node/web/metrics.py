"""``/metrics``: the node's status in the Prometheus text exposition format (version 0.0.4).

Pure: :func:`collect` reads the same status dictionary that ``/api/status``
returns (plus the log ring's per-level counts) and :func:`render` writes the
text. A section a node does not run (no storage service yet, say) simply
contributes no metrics; a service's ``stats`` counters are exported without
this module having to know them (``poolai_<service>_events_total``).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LINK_KINDS = ("successors", "predecessors", "long", "proximity")
MAX_LABEL_VALUE = 200
MAX_SAMPLES = 1000  # per family: a hostile peer cannot blow /metrics up through a label
_NAME_OK = re.compile(r"[^a-zA-Z0-9_]")


@dataclasses.dataclass(frozen=True, slots=True)
class Sample:
    labels: tuple[tuple[str, str], ...]
    value: float


@dataclasses.dataclass(frozen=True, slots=True)
class Family:
    """One metric: ``kind`` is ``gauge`` or ``counter`` (a counter's name ends in ``_total``)."""

    name: str
    kind: str
    help: str
    samples: tuple[Sample, ...]


def _one(name: str, kind: str, help_: str, value: Any, **labels: str) -> Family | None:
    if not _is_number(value):
        return None
    return Family(name, kind, help_, (Sample(tuple(labels.items()), float(value)),))


def _many(name: str, kind: str, help_: str, label: str, values: Mapping[str, Any]) -> Family | None:
    samples = tuple(Sample(((label, str(k)),), float(v)) for k, v in sorted(values.items())
                    if _is_number(v))[:MAX_SAMPLES]
    return Family(name, kind, help_, samples) if samples else None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def collect(status: Mapping[str, Any], log_counts: Mapping[str, int] | None = None) -> list[Family]:
    """The metric families describing ``status`` (the ``/api/status`` document)."""
    out: list[Family | None] = [
        Family("poolai_info", "gauge", "Constant 1, labelled with the software version and peer id.",
               (Sample((("version", str(status.get("version", ""))),
                        ("peer_id", str(status.get("peer_id", "")))), 1.0),)),
        _one("poolai_uptime_seconds", "gauge", "Seconds since the node started.", status.get("uptime_s")),
        _one("poolai_peers_connected", "gauge", "Peers with an open connection.",
             len(status.get("peers") or ())),
        _one("poolai_peers_known", "gauge", "Peers in the peer book.", status.get("known_peers")),
    ]
    connections = status.get("connections")
    if isinstance(connections, Mapping):
        out += [
            _many("poolai_connections", "gauge", "Open connections by direction.", "direction",
                  {k: connections.get(k) for k in ("inbound", "outbound")}),
            _many("poolai_inbound_connections_total", "counter",
                  "Inbound connections by what the node did with them (NETWORK.md, inbound limits).",
                  "outcome", {k: connections.get(k) for k in (
                      "accepted", "refused_ip_rate", "refused_peer_rate", "refused_total_rate", "shed")}),
        ]
    out += _overlay(status.get("overlay"))
    out += _capacity(status.get("capacity"))
    out += _jobs(status.get("jobs"))
    out += _storage(status.get("storage"))
    credits = status.get("credits")
    if isinstance(credits, Mapping):
        out += [
            _one("poolai_credits_balance", "gauge", "Credit balance of this node.", credits.get("balance")),
            _many("poolai_credits", "gauge", "Credits this node earned and spent (from verified receipts).",
                  "kind", {"earned": credits.get("earned"), "spent": credits.get("spent")}),
            _one("poolai_credit_receipts", "gauge", "Verified receipts naming this node.",
                 credits.get("receipts")),
        ]
    out += _companion(status.get("companion"))
    for name, section in sorted(status.items()):
        if isinstance(section, Mapping) and isinstance(section.get("stats"), Mapping):
            out.append(_many(f"poolai_{_NAME_OK.sub('_', name)}_events_total", "counter",
                             f"Event counters of the {name} service.", "event", section["stats"]))
    if log_counts is not None:
        out.append(_many("poolai_log_messages_total", "counter",
                         "Log records by level since start (warning and error count the node's errors).",
                         "level", log_counts))
    return [f for f in out if f is not None]


def _overlay(overlay: Any) -> list[Family | None]:
    if not isinstance(overlay, Mapping):
        return []
    links = {kind: len(overlay.get(kind) or ()) for kind in LINK_KINDS}
    return [
        _many("poolai_overlay_links", "gauge", "Overlay links this node keeps, by kind.", "kind", links),
        _one("poolai_overlay_incoming_links", "gauge", "Peers that keep a link to this node.",
             overlay.get("incoming")),
        _one("poolai_overlay_size_estimate", "gauge", "This node's estimate of the network size.",
             overlay.get("size_estimate")),
        _one("poolai_overlay_coordinate_error", "gauge", "Vivaldi coordinate error estimate.",
             (overlay.get("coordinate") or {}).get("error")),
    ]


def _capacity(capacity: Any) -> list[Family | None]:
    if not isinstance(capacity, Mapping):
        return []
    out = [
        _one("poolai_capacity_peers", "gauge", "Peers with a live capacity advert.", capacity.get("peers")),
        _many("poolai_capacity_adverts_rejected_total", "counter", "Capacity adverts refused, by reason.",
              "reason", capacity.get("rejected") or {}),
    ]
    gossip = capacity.get("gossip")
    if isinstance(gossip, Mapping):
        out += [
            _one("poolai_gossip_sent_bytes_total", "counter", "Pubsub bytes written.",
                 gossip.get("bytes_sent")),
            _one("poolai_gossip_rpcs_sent_total", "counter", "Pubsub RPCs written.", gossip.get("rpcs_sent")),
            _one("poolai_gossip_published_total", "counter", "Messages this node published.",
                 gossip.get("published")),
            _one("poolai_gossip_accepted_total", "counter", "Inbound messages accepted.",
                 gossip.get("accepted")),
            _many("poolai_gossip_rejected_total", "counter", "Inbound messages refused, by reason.",
                  "reason", gossip.get("rejected") or {}),
            _one("poolai_gossip_peers", "gauge", "Peers with a pubsub stream.", gossip.get("peers")),
            _one("poolai_gossip_banned_peers", "gauge", "Peers banned for bad messages.",
                 len(gossip.get("banned") or ())),
        ]
    return out


def _jobs(jobs: Any) -> list[Family | None]:
    if not isinstance(jobs, Mapping):
        return []
    submitted = jobs.get("submitted_by_state", jobs.get("submitted"))
    worker = jobs.get("worker") if isinstance(jobs.get("worker"), Mapping) else jobs
    out: list[Family | None] = []
    if isinstance(submitted, Mapping):
        out.append(_many("poolai_jobs_submitted", "gauge",
                         "Jobs this node submitted (and still remembers), by state.", "state", submitted))
    if isinstance(worker.get("run_by_state"), Mapping):
        out.append(_many("poolai_jobs_run", "gauge", "Jobs this node holds as a worker, by state.", "state",
                         worker["run_by_state"]))
    out += [
        _many("poolai_jobs_here", "gauge", "Jobs running, queued and with undelivered results here.", "state",
              {"running": worker.get("running"), "undelivered": worker.get("undelivered"),
               "queued": worker.get("queue_length", worker.get("queued"))}),
        _one("poolai_jobs_slots", "gauge", "Jobs this node runs at once.", worker.get("slots")),
    ]
    if isinstance(worker.get("stats"), Mapping):
        out.append(_many("poolai_jobs_worker_events_total", "counter",
                         "Worker-side job events (offers accepted and refused, jobs finished ...).",
                         "event", worker["stats"]))
    return out


def _companion(companion: Any) -> list[Family | None]:
    if not isinstance(companion, Mapping):
        return []
    alerts = [a for a in companion.get("alerts") or () if isinstance(a, Mapping)]
    by_severity = {s: sum(a.get("severity") == s for a in alerts) for s in ("critical", "warning", "info")}
    telegram = companion.get("telegram") if isinstance(companion.get("telegram"), Mapping) else {}
    streak = companion.get("streak") if isinstance(companion.get("streak"), Mapping) else {}
    active = tuple(Sample((("alert", str(a.get("key"))), ("severity", str(a.get("severity")))), 1.0)
                   for a in alerts)[:MAX_SAMPLES]
    return [
        _many("poolai_alerts_active", "gauge", "Alerts raised now, by severity.", "severity", by_severity),
        Family("poolai_alert", "gauge", "1 for each alert raised now (see /api/alerts for its fix).",
               active) if active else None,
        _one("poolai_telegram_paired", "gauge", "1 when the Telegram bot is paired with the owner's chat.",
             int(bool(telegram.get("paired")))) if telegram.get("configured") else None,
        _one("poolai_contribution_streak_days", "gauge", "Days in a row this node contributed.",
             streak.get("current")),
    ]


def _storage(storage: Any) -> list[Family | None]:
    if not isinstance(storage, Mapping):
        return []
    sizes = {"used": storage.get("used_bytes"), "quota": storage.get("quota_bytes")}
    out = [
        _many("poolai_storage_bytes", "gauge", "Share storage on this node, in bytes.", "kind", sizes),
        _one("poolai_storage_shares", "gauge", "Shares held for the mesh.", storage.get("shares")),
        _one("poolai_storage_files", "gauge", "Files this node looks after.", storage.get("files")),
        _one("poolai_storage_hash_failures", "gauge", "Shares found corrupt on disk.",
             storage.get("hash_failures")),
        _one("poolai_storage_recent_errors", "gauge", "Storage operations failed lately (last 20 kept).",
             len(storage.get("recent_errors") or ())),
    ]
    server, transport = storage.get("server"), storage.get("transport")
    if isinstance(server, Mapping):
        out += [
            _many("poolai_share_stream_bytes_total", "counter", "Share bytes over the storage protocol.",
                  "direction", {"in": server.get("bytes_in"), "out": server.get("bytes_out")}),
            _many("poolai_share_requests_total", "counter", "Inbound storage protocol requests, by outcome.",
                  "outcome", {k: server.get(k) for k in ("requests", "busy", "bad_requests", "timeouts",
                                                         "quota_refusals", "hash_refusals", "corrupt")}),
        ]
    if isinstance(transport, Mapping):
        out += [
            _many("poolai_share_transport_bytes_total", "counter", "Share bytes this node sent and fetched.",
                  "direction", {"sent": transport.get("bytes_sent"),
                                "received": transport.get("bytes_received")}),
            _many("poolai_share_transport_requests_total", "counter",
                  "Outbound storage requests, by outcome.",
                  "outcome", {"all": transport.get("requests"), "failed": transport.get("failures")}),
        ]
    return out


def render(families: Iterable[Family]) -> str:
    """The text exposition of ``families`` (one HELP and TYPE line each)."""
    lines: list[str] = []
    for family in families:
        lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for sample in family.samples:
            labels = ",".join(f'{k}="{_escape_label(v)}"' for k, v in sample.labels)
            lines.append(f"{family.name}{{{labels}}} {_number(sample.value)}" if labels
                         else f"{family.name} {_number(sample.value)}")
    return "\n".join(lines) + "\n"


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(value: str) -> str:
    value = value[:MAX_LABEL_VALUE]
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)
