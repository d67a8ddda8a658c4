"""The Telegram bot's rules: pairing, who may command it, what it answers, what it pushes. Pure.

:class:`BotCore` takes one Bot API ``Update`` (a dict, as ``getUpdates`` returns it) and
answers :class:`Reply` and :class:`Action` values; the service sends the replies and
carries out the actions. Nothing here does I/O or reads a clock.

Pairing: ``poolai telegram pair`` (or the status page) asks the node for a one-time code
(:meth:`BotCore.new_code`, valid :data:`CODE_TTL_S`). The first private chat that sends
``/start CODE`` becomes the owner's chat; the code is then spent. Only the owner's chat
gets answers and may ``/drain`` or ``/resume``; every other chat is told, at most once a
minute, that the bot is someone else's, and nothing it sends changes anything. A new
code, used, moves the bot to the chat that used it.

:class:`Outbox` groups alert events for the owner: the first event waits
:data:`GROUP_S` for others to join it, one message carries them all, and a token bucket
(:data:`BURST` messages, one more every :data:`REFILL_S`) bounds how often the owner's
phone buzzes; what waits meanwhile goes out in the next message.
"""

from __future__ import annotations

import dataclasses
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from poolai.node.companion.rules import Event

CODE_TTL_S = 900.0
CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I
CODE_LENGTH = 8
STRANGER_REPLY_S = 60.0
MAX_STRANGERS = 256
STRANGER_REPLIES_PER_MIN = 20  # all strangers together: a crowd of chats cannot make the bot spam
MAX_TEXT = 4000  # Telegram refuses messages over 4096 characters
GROUP_S = 10.0
BURST, REFILL_S = 3, 300.0
COMMANDS = ("/status", "/jobs", "/credits", "/peers", "/streak", "/alerts", "/drain", "/resume", "/help")
OWNER_ONLY = frozenset({"/drain", "/resume"})
HELP = ("/status: peers, alerts and uptime\n/jobs: jobs here\n/credits: earned, spent, balance\n"
        "/peers: connected peers\n/streak: contribution streak and milestones\n/alerts: alerts now\n"
        "/drain: finish running jobs, accept none\n/resume: accept jobs again")
STRANGER = ("This bot answers its owner's chat only. To pair it with your node, run "
            "'poolai telegram pair' there and send /start CODE here.")


@dataclasses.dataclass(frozen=True, slots=True)
class Reply:
    chat_id: int
    text: str


@dataclasses.dataclass(frozen=True, slots=True)
class Action:
    """Something the owner asked for: ``kind`` is ``drain``, ``resume`` or a command to answer
    from the node's state (``status``, ``jobs``, ``credits``, ``peers``, ``streak``, ``alerts``)."""

    kind: str
    chat_id: int


@dataclasses.dataclass
class BotState:
    """What the bot keeps across restarts (``companion/telegram.json``, mode 0600)."""

    owner_chat: int | None = None
    offset: int = 0  # the next update id to ask for
    last_summary: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"version": 1, "owner_chat": self.owner_chat, "offset": self.offset,
                "last_summary": self.last_summary}

    @classmethod
    def from_json(cls, data: Any) -> BotState:
        if not isinstance(data, Mapping) or data.get("version") != 1:
            raise ValueError("not a version 1 bot state")
        owner, offset, last = data.get("owner_chat"), data.get("offset"), data.get("last_summary")
        if owner is not None and (not isinstance(owner, int) or isinstance(owner, bool)):
            raise ValueError("owner_chat is not a chat id")
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise ValueError("offset is not an update id")
        if not isinstance(last, int | float) or isinstance(last, bool):
            raise ValueError("last_summary is not a time")
        return cls(owner, offset, float(last))


class BotCore:
    """Pairing and commands. ``state`` is saved by the service whenever :attr:`dirty`."""

    def __init__(self, state: BotState | None = None) -> None:
        self.state = state or BotState()
        self.dirty = False
        self._code: tuple[str, float] | None = None  # (code, expires at)
        self._strangers: OrderedDict[int, float] = OrderedDict()  # chat -> last told at

    # ------------------------------------------------------------------ pairing
    def new_code(self, now: float, rng: secrets.SystemRandom | None = None) -> tuple[str, float]:
        """A fresh one-time pairing code and when it expires; any earlier code stops working."""
        pick = (rng or secrets.SystemRandom()).choice
        code = "".join(pick(CODE_ALPHABET) for _ in range(CODE_LENGTH))
        self._code = (code, now + CODE_TTL_S)
        return self._code

    def code(self, now: float) -> tuple[str, float] | None:
        """The pairing code waiting to be used, if any."""
        if self._code is not None and now >= self._code[1]:
            self._code = None
        return self._code

    @property
    def paired(self) -> bool:
        return self.state.owner_chat is not None

    # ------------------------------------------------------------------ updates
    def handle(self, update: Any, now: float) -> tuple[list[Reply], list[Action]]:
        """Replies and actions for one ``Update``; anything malformed is skipped."""
        if not isinstance(update, Mapping):
            return [], []
        update_id = update.get("update_id")
        if isinstance(update_id, int) and not isinstance(update_id, bool) and update_id >= self.state.offset:
            self.state.offset = update_id + 1
            self.dirty = True
        message = update.get("message")
        if not isinstance(message, Mapping):
            return [], []
        chat = message.get("chat")
        text = message.get("text")
        if not isinstance(chat, Mapping) or not isinstance(text, str):
            return [], []
        chat_id = chat.get("id")
        if not isinstance(chat_id, int) or isinstance(chat_id, bool):
            return [], []
        command, _, arg = text.strip()[:200].partition(" ")
        command = command.split("@", 1)[0].lower()
        if command == "/start":
            return self._start(chat_id, str(chat.get("type", "")), arg.strip(), now), []
        if chat_id != self.state.owner_chat:
            return self._stranger(chat_id, now), []
        if command in ("/help", "/start"):
            return [Reply(chat_id, HELP)], []
        if command in COMMANDS:
            return [], [Action(command[1:], chat_id)]
        return [Reply(chat_id, "Unknown command.\n" + HELP)], []

    def _start(self, chat_id: int, chat_type: str, code: str, now: float) -> list[Reply]:
        waiting = self.code(now)
        if waiting is not None and code and hmac.compare_digest(code.upper(), waiting[0]):
            if chat_type != "private":
                return [Reply(chat_id, "Pair the bot from a private chat with it, not a group.")]
            self._code = None
            self.state.owner_chat = chat_id
            self.dirty = True
            return [Reply(chat_id, "Paired: this chat now gets this node's alerts and a daily "
                                   "summary.\n" + HELP)]
        if chat_id == self.state.owner_chat:
            return [Reply(chat_id, "This chat is already paired.\n" + HELP)]
        return self._stranger(chat_id, now, "That code is not valid (codes are used once and expire "
                                            "after 15 minutes). ")

    def _stranger(self, chat_id: int, now: float, prefix: str = "") -> list[Reply]:
        last = self._strangers.get(chat_id)
        if last is not None and now - last < STRANGER_REPLY_S:
            return []
        if sum(now - t < STRANGER_REPLY_S for t in self._strangers.values()) >= STRANGER_REPLIES_PER_MIN:
            return []
        self._strangers[chat_id] = now
        self._strangers.move_to_end(chat_id)
        while len(self._strangers) > MAX_STRANGERS:
            self._strangers.popitem(last=False)
        return [Reply(chat_id, prefix + STRANGER)]


# ----------------------------------------------------------------------------- pushing alerts


class Outbox:
    """Alert events waiting for the owner, grouped and rate-limited (see the module docstring)."""

    def __init__(self, group_s: float = GROUP_S, burst: int = BURST, refill_s: float = REFILL_S) -> None:
        self.group_s, self.burst, self.refill_s = group_s, burst, refill_s
        self._waiting: dict[str, Event] = {}  # alert key -> newest event
        self._first_at: float | None = None
        self._tokens = float(burst)
        self._refilled_at: float | None = None
        self._announced: set[str] = set()  # keys whose raise the owner was told of
        self.sent = 0
        self.held_back = 0  # times a due message waited for the bucket

    def add(self, events: Sequence[Event], now: float) -> None:
        for event in events:
            self._waiting[event.alert.key] = event
        if self._waiting and self._first_at is None:
            self._first_at = now

    def due(self, now: float) -> list[Event]:
        """The events to send now as one message (empty: nothing, or not yet)."""
        self._refill(now)
        if self._first_at is None or now - self._first_at < self.group_s:
            return []
        news = [e for e in self._waiting.values()
                if (e.kind == "raised") != (e.alert.key in self._announced)]
        if not news:
            self._waiting.clear()
            self._first_at = None
            return []
        if self._tokens < 1.0:
            self.held_back += 1
            return []
        self._tokens -= 1.0
        self._waiting.clear()
        self._first_at = None
        for event in news:
            (self._announced.add if event.kind == "raised" else self._announced.discard)(event.alert.key)
        self.sent += 1
        return sorted(news, key=lambda e: (e.kind != "raised", e.alert.severity != "critical", e.at))

    def _refill(self, now: float) -> None:
        if self._refilled_at is not None:
            self._tokens = min(float(self.burst), self._tokens + (now - self._refilled_at) / self.refill_s)
        self._refilled_at = now


# ----------------------------------------------------------------------------- texts

ICON = {"critical": "\u26d4", "warning": "\u26a0\ufe0f", "info": "\u2139\ufe0f"}


def alerts_text(node: str, events: Sequence[Event]) -> str:
    lines = [f"PoolAI node {node}:"]
    for e in events:
        a = e.alert
        if e.kind == "raised":
            lines.append(f"{ICON.get(a.severity, '')} {a.title} (since {_hhmm(a.since)} UTC): {a.detail}. "
                         f"Fix: {a.fix}")
        else:
            lines.append(f"\u2705 cleared: {a.title}")
    return clip("\n".join(lines))


def active_text(alerts: Sequence[Mapping[str, Any]]) -> str:
    if not alerts:
        return "No alerts: all quiet."
    return clip("\n".join(f"{ICON.get(a['severity'], '')} {a['title']} (since {_hhmm(a['since'])} UTC): "
                          f"{a['detail']}. Fix: {a['fix']}" for a in alerts))


def status_text(s: Mapping[str, Any]) -> str:
    lines = [f"Node {s.get('peer_id', '')}", f"version {s.get('version')}, up {_duration(s.get('uptime_s'))}",
             f"peers: {s.get('peers', 0)} connected, {s.get('known_peers', 0)} known"]
    jobs = s.get("jobs")
    if isinstance(jobs, Mapping):
        mode = "draining" if jobs.get("draining") else "paused" if jobs.get("paused") else "accepting jobs"
        lines.append(f"jobs: {jobs.get('running', 0)} running, {jobs.get('queue_length', 0)} queued ({mode})")
    alerts = s.get("alerts") or []
    lines.append(f"alerts: {len(alerts)}" + "".join(f"\n  {ICON.get(a['severity'], '')} {a['title']}"
                                                    for a in alerts))
    return clip("\n".join(lines))


def jobs_text(jobs: Mapping[str, Any] | None) -> str:
    if jobs is None:
        return "This node runs no jobs service."
    mode = "draining" if jobs.get("draining") else "paused" if jobs.get("paused") else "accepting jobs"
    lines = [f"{jobs.get('running', 0)} running, {jobs.get('queue_length', 0)} queued, "
             f"{jobs.get('slots', 0)} slot(s); {mode}"]
    submitted = jobs.get("submitted_by_state") or {}
    if submitted:
        lines.append("submitted: " + ", ".join(f"{n} {k}" for k, n in sorted(submitted.items())))
    for job in (jobs.get("held") or [])[:10]:
        lines.append(f"  {job.get('job_id')} for {str(job.get('submitter'))[-8:]}: {job.get('state')}")
    return clip("\n".join(lines))


def credits_text(c: Mapping[str, Any] | None) -> str:
    if c is None:
        return "This node keeps no credit ledger."
    return (f"earned {c.get('earned', 0):.3f}, spent {c.get('spent', 0):.3f}, "
            f"balance {c.get('balance', 0):.3f} credits ({c.get('receipts', 0)} receipts)")


def peers_text(peers: Sequence[str]) -> str:
    if not peers:
        return "No peer connected."
    shown = "\n".join(f"  {p}" for p in peers[:30])
    more = f"\n  … and {len(peers) - 30} more" if len(peers) > 30 else ""
    return clip(f"{len(peers)} peer(s) connected:\n{shown}{more}")


def streak_text(streak: Mapping[str, int], marks: Mapping[str, Any]) -> str:
    lines = [f"Contribution streak: {streak.get('current', 0)} day(s) in a row "
             f"(best {streak.get('best', 0)}, {streak.get('days', 0)} day(s) in all)"]
    for m in marks.get("reached") or []:
        lines.append(f"\U0001f3c5 {amount(m['kind'], m['goal'])} {m['label']}")
    for m in marks.get("next") or []:
        lines.append(f"next: {amount(m['kind'], m['goal'])} {m['label']} ({m['progress']:.0%})")
    return clip("\n".join(lines))


def summary_text(node: str, day: Mapping[str, float], streak: Mapping[str, int], stored: float,
                 alerts: int) -> str:
    return clip(f"Daily summary of node {node}:\n"
                f"jobs run: {int(day.get('jobs', 0))}\n"
                f"bytes stored: {amount('served', stored)}, "
                f"served: {amount('served', day.get('served', 0))}\n"
                f"credits earned: {day.get('earned', 0):.3f}\n"
                f"streak: {streak.get('current', 0)} day(s); alerts now: {alerts}")


def clip(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT - 1] + "…"


def amount(kind: str, value: float) -> str:
    if kind != "served":
        return f"{value:g}"
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{int(value)} B"


def _hhmm(t: Any) -> str:
    return time.strftime("%H:%M", time.gmtime(t)) if isinstance(t, int | float) else "?"


def _duration(s: Any) -> str:
    if not isinstance(s, int | float):
        return "?"
    if s < 3600:
        return f"{s / 60:.0f} min"
    if s < 2 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"
