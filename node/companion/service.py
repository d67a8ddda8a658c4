"""The companion service: watches the node, keeps its history, raises alerts, runs the bot.

Every :data:`SAMPLE_S` seconds (times ``alert_scale``) it reads the other services into
an :class:`~poolai.node.companion.rules.Observation`, steps the
:class:`~poolai.node.companion.rules.AlertBook` with it, and records a
:class:`~poolai.node.companion.history.Sample` (one point a minute is kept). Alerts
raised or cleared are logged, counted for ``/metrics`` and, when a Telegram chat is
paired, queued in the bot's :class:`~poolai.node.companion.bot.Outbox`.

With ``telegram_token`` set, two more tasks run in the service's nursery: the long poll
of ``getUpdates`` (each update handled by :class:`~poolai.node.companion.bot.BotCore`)
and the sender of grouped alerts and the daily summary. Every Bot API call is bounded by
``trio.fail_after``; failures back off and are logged without the token (see
:mod:`poolai.node.companion.botapi`).

It reads the others through the services the root passes in, any of which may be None
(a test node without jobs, say): the rules that need a missing service stay quiet.
Files (``companion/`` in the data directory, mode 0600): ``history.json``, saved every
:data:`SAVE_EVERY_S` and at stop; ``telegram.json``, the paired chat and the update offset.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from poolai.mesh.durable import write_atomic
from poolai.node import __version__
from poolai.node.companion import bot, history
from poolai.node.companion.botapi import BotApi, BotApiError, Redactor, wait_for_updates
from poolai.node.companion.rules import RULES, AlertBook, Event, GpuReading, Observation
from poolai.node.context import NodeContext

if TYPE_CHECKING:
    from poolai.node.capacity.service import CapacityService
    from poolai.node.credits.service import CreditsService
    from poolai.node.files.service import StorageService
    from poolai.node.jobs.service import JobService

log = logging.getLogger(__name__)

DIR = "companion"
HISTORY_FILE = "history.json"
BOT_FILE = "telegram.json"
SAMPLE_S = 15.0
SAVE_EVERY_S = 300.0
POLL_S = 25  # getUpdates long-poll seconds
SEND_TIMEOUT_S = 15.0
BACKOFF_S = (1.0, 60.0)
SUMMARY_EVERY_S = 86400.0
RECENT_EVENTS = 50
MAX_HISTORY_BYTES = 4 << 20


class CompanionService:
    """Alerts, history and the Telegram bot of one node."""

    name = "companion"

    def __init__(self, ctx: NodeContext, *, capacity: CapacityService | None = None,
                 credits: CreditsService | None = None, files: StorageService | None = None,
                 jobs: JobService | None = None) -> None:
        self.ctx = ctx
        self.capacity, self.credits, self.files, self.jobs = capacity, credits, files, jobs
        config = ctx.config
        self.scale = float(getattr(config, "alert_scale", 1.0))
        self.token = str(getattr(config, "telegram_token", ""))
        self.api_url = str(getattr(config, "telegram_api_url", "https://api.telegram.org"))
        self.dir = ctx.data_dir / DIR
        self.book = AlertBook(RULES, scale=self.scale)
        self.history = history.History()
        self.bot = bot.BotCore()
        self.outbox = bot.Outbox(group_s=bot.GROUP_S * self.scale)
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_EVENTS)
        self.stats = {"alerts_raised": 0, "alerts_cleared": 0, "bot_updates": 0, "bot_messages_sent": 0,
                      "bot_refusals": 0, "bot_api_errors": 0, "summaries_sent": 0}
        self.bot_error = ""
        self.bot_name = ""
        self.started_at = time.time()
        self._streak: tuple[float, dict[str, int]] | None = None  # (computed at, streak)
        self._saved_at = 0.0
        self._wake_sender = trio.Event()
        self._reached: set[tuple[str, float]] | None = None  # milestones reached, once known
        self.news: deque[str] = deque(maxlen=8)  # milestone messages waiting for the owner's chat

    # ------------------------------------------------------------------ running
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.dir.mkdir(mode=0o700, exist_ok=True)
        self._load()
        self._check_secret_file()
        redactor = Redactor(self.token)
        handlers = list(logging.getLogger().handlers)
        for handler in handlers:
            handler.addFilter(redactor)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch)
                if self.token:
                    nursery.start_soon(self._bot)
                task_status.started()
        finally:
            self._save_history()
            for handler in handlers:
                handler.removeFilter(redactor)

    async def _watch(self) -> None:
        period = max(0.2, SAMPLE_S * self.scale)
        while True:
            self.sample_now()
            if time.time() - self._saved_at >= SAVE_EVERY_S:
                await trio.to_thread.run_sync(self._save_history)
            await trio.sleep(period)

    def sample_now(self) -> list[Event]:
        """Observe the node once: step the alerts, record history; the events it raised."""
        now = time.time()
        events = self.book.step(self.observe(now))
        for event in events:
            self.stats["alerts_raised" if event.kind == "raised" else "alerts_cleared"] += 1
            self.recent.append({"kind": event.kind, "at": event.at, **event.alert.to_json()})
            a = event.alert
            if event.kind == "raised":
                (log.warning if a.severity != "info" else log.info)("alert: %s: %s", a.title, a.detail)
            else:
                log.info("alert cleared: %s", a.title)
        if events and self.bot.paired:
            self.outbox.add(events, now)
            self._wake_sender.set()
        self.history.record(now, self._sample())
        self._note_milestones(now)
        return events

    def _note_milestones(self, now: float) -> None:
        """Queue a message for each milestone reached since the last look (none for those
        reached before this process started)."""
        marks = history.milestones(self.history, now, streak=self.streak["current"])["reached"]
        reached = {(m["kind"], m["goal"]) for m in marks}
        if self._reached is not None:
            for m in marks:
                if (m["kind"], m["goal"]) not in self._reached and self.bot.paired:
                    what = f"{bot.amount(m['kind'], m['goal'])} {m['label']}"
                    self.news.append(f"\U0001f3c5 Milestone: {what}! "
                                     f"Streak: {self.streak['current']} day(s) in a row.")
                    self._wake_sender.set()
        self._reached = reached

    # ------------------------------------------------------------------ reading the node
    def observe(self, now: float) -> Observation:
        host = self.ctx.host
        peers = len(host.connected_peers())
        gpus, note = None, ""
        inventory = self.capacity.inventory if self.capacity is not None else None
        if inventory is not None:
            gpus = tuple(GpuReading(g.index, g.name, g.temperature_c, tuple(getattr(g, "throttle", ())))
                         for g in inventory.gpus)
            note = inventory.note
        offsets, software = [], []
        if self.capacity is not None:
            for entry in self.capacity.table.entries(now):
                if entry.peer_id != self.ctx.peer_id:
                    offsets.append(entry.advert.timestamp - entry.received_at)
                    software.append(entry.advert.software)
        disk_free = disk_total = None
        try:
            usage = shutil.disk_usage(self.ctx.data_dir)
            disk_free, disk_total = usage.free, usage.total
        except OSError:
            pass
        storage = self.files.status() if self.files is not None else None
        upkeep = (storage or {}).get("upkeep") or {}
        outcomes, worker_ok, worker_failed = self._job_outcomes()
        credits = self.credits.status() if self.credits is not None else None
        used = storage.get("used_bytes") if storage else None
        return Observation(
            now=now, version=__version__, peers_connected=peers,
            known_peers=len(self.ctx.book) if self.ctx.book is not None else peers,
            gpus=gpus, gpu_note=note, disk_free=disk_free, disk_total=disk_total,
            storage_used=used, storage_quota=storage.get("quota_bytes") if storage else None,
            audited=int(upkeep.get("audited") or 0), audit_failures=int(upkeep.get("audit_failures") or 0),
            corrupt_shares=int((storage or {}).get("hash_failures") or 0),
            job_outcomes=tuple(outcomes), worker_ok=worker_ok, worker_failed=worker_failed,
            credits_earned=float(credits["earned"]) if credits else None,
            contributing=bool(used) or bool(outcomes and max(t for t, _ in outcomes) > now - 3600),
            clock_offsets=tuple(offsets[:256]), peer_software=tuple(software[:256]))

    def _job_outcomes(self) -> tuple[list[tuple[float, bool]], int, int]:
        if self.jobs is None:
            return [], 0, 0
        outcomes: list[tuple[float, bool]] = []
        worker_ok = worker_failed = 0
        for finished_at, _job, status in list(self.jobs.executor.recent_results):
            outcomes.append((finished_at, status == "ok"))
            worker_ok += status == "ok"
            worker_failed += status != "ok"
        for sub in list(self.jobs.jobs.values())[-64:]:
            result = getattr(sub, "result", None)
            finished = getattr(sub, "finished_at", None)
            if result is not None and isinstance(finished, int | float):
                status = getattr(result, "status", None)
                outcomes.append((float(finished), getattr(status, "value", status) == "ok"))
        return outcomes, worker_ok, worker_failed

    def _sample(self) -> history.Sample:
        storage = self.files.status() if self.files is not None else {}
        server = storage.get("server") or {}
        return history.Sample(
            peers=len(self.ctx.host.connected_peers()), stored=int(storage.get("used_bytes") or 0),
            served=int(server.get("bytes_out") or 0),
            jobs=int(self.jobs.executor.stats.get("finished", 0)) if self.jobs is not None else 0,
            earned=float(self.credits.status()["earned"]) if self.credits is not None else 0.0)

    # ------------------------------------------------------------------ the bot
    async def _bot(self) -> None:
        async with BotApi(self.api_url, self.token, read_timeout=POLL_S + 10.0) as api, \
                trio.open_nursery() as nursery:
            nursery.start_soon(self._send_loop, api)
            await self._poll_loop(api)

    async def _poll_loop(self, api: BotApi) -> None:
        delay = BACKOFF_S[0]
        while True:
            try:
                if not self.bot_name:
                    with trio.fail_after(SEND_TIMEOUT_S):
                        me = await api.call("getMe")
                    self.bot_name = str((me or {}).get("username", ""))[:64] if isinstance(me, dict) else ""
                    log.info("telegram bot @%s ready%s", self.bot_name or "?",
                             "" if self.bot.paired else " (not paired: run 'poolai telegram pair')")
                updates = await wait_for_updates(api, self.bot.state.offset, POLL_S)
            except (BotApiError, trio.TooSlowError) as exc:
                self._bot_failed(exc)
                await trio.sleep(delay)
                delay = min(delay * 2, BACKOFF_S[1])
                continue
            delay, self.bot_error = BACKOFF_S[0], ""
            handled = [self.bot.handle(update, time.time()) for update in updates[:100]]
            self.stats["bot_updates"] += len(handled)
            if self.bot.dirty:  # a new owner and the offset are on disk before anyone is answered
                self.bot.state.last_summary = self.bot.state.last_summary or time.time()
                await trio.to_thread.run_sync(self._save_bot)
            for replies, actions in handled:
                for action in actions:
                    replies.append(bot.Reply(action.chat_id, await self._act(action)))
                for reply in replies:
                    if reply.chat_id != self.bot.state.owner_chat:
                        self.stats["bot_refusals"] += 1
                    await self._send(api, reply.chat_id, reply.text)

    async def _send_loop(self, api: BotApi) -> None:
        period = max(0.2, min(5.0, bot.GROUP_S * self.scale / 2))
        while True:
            with trio.move_on_after(period):
                await self._wake_sender.wait()
            self._wake_sender = trio.Event()
            owner = self.bot.state.owner_chat
            if owner is None:
                continue
            now = time.time()
            due = self.outbox.due(now)
            if due:
                await self._send(api, owner, bot.alerts_text(self.ctx.peer_id, due))
            while self.news:
                await self._send(api, owner, self.news.popleft())
            if now - self.bot.state.last_summary >= SUMMARY_EVERY_S and self.bot.state.last_summary:
                self.bot.state.last_summary = now
                if await self._send(api, owner, self.summary_text(now)):
                    self.stats["summaries_sent"] += 1
                await trio.to_thread.run_sync(self._save_bot)

    async def _send(self, api: BotApi, chat_id: int, text: str) -> bool:
        try:
            with trio.fail_after(SEND_TIMEOUT_S):
                await api.call("sendMessage", chat_id=chat_id, text=bot.clip(text),
                               disable_web_page_preview=True)
        except (BotApiError, trio.TooSlowError) as exc:
            self._bot_failed(exc)
            return False
        self.stats["bot_messages_sent"] += 1
        return True

    def _bot_failed(self, exc: BaseException) -> None:
        self.stats["bot_api_errors"] += 1
        text = str(exc) if isinstance(exc, BotApiError) else "no answer in time"
        if text != self.bot_error:
            log.warning("telegram bot: %s (retrying)", text)
        self.bot_error = text

    async def _act(self, action: bot.Action) -> str:
        kind = action.kind
        if kind in ("drain", "resume"):
            if self.jobs is None:
                return "This node runs no jobs service."
            self.jobs.set_draining(kind == "drain")
            if kind == "resume":
                self.jobs.set_paused(False)
            log.info("telegram: the owner's chat asked to %s", kind)
            return ("Draining: running jobs finish, no new job is accepted." if kind == "drain"
                    else "Resumed: accepting jobs again.")
        if kind == "status":
            return bot.status_text(self.summary())
        if kind == "jobs":
            return bot.jobs_text(self.jobs.status() if self.jobs is not None else None)
        if kind == "credits":
            return bot.credits_text(self.credits.status() if self.credits is not None else None)
        if kind == "peers":
            return bot.peers_text(sorted(self.ctx.host.connected_peers()))
        if kind == "streak":
            streak = self.streak
            return bot.streak_text(streak, history.milestones(self.history, streak=streak["current"]))
        if kind == "alerts":
            return bot.active_text([a.to_json() for a in self.book.active()])
        return bot.HELP

    # ------------------------------------------------------------------ for the API and the bot
    @property
    def streak(self) -> dict[str, int]:
        """The contribution streak, recomputed at most once a minute (about 10 ms over a full
        history, and /api/status is polled by the page)."""
        now = time.time()
        if self._streak is None or now - self._streak[0] >= 60.0:
            self._streak = (now, history.streaks(self.history, now))
        return self._streak[1]

    def summary(self) -> dict[str, Any]:
        jobs = self.jobs.status() if self.jobs is not None else None
        return {"peer_id": self.ctx.peer_id, "version": __version__,
                "uptime_s": time.time() - self.started_at, "peers": len(self.ctx.host.connected_peers()),
                "known_peers": len(self.ctx.book) if self.ctx.book is not None else 0,
                "jobs": jobs, "alerts": [a.to_json() for a in self.book.active()]}

    def summary_text(self, now: float) -> str:
        latest = self.history.latest()
        return bot.summary_text(self.ctx.peer_id, self.history.change(now - 86400),
                                history.streaks(self.history, now), latest.stored if latest else 0.0,
                                len(self.book.active()))

    def new_pairing_code(self) -> dict[str, Any]:
        """A fresh one-time code for ``/start CODE`` (admin only: whoever uses it owns the bot)."""
        if not self.token:
            raise LookupError("no telegram_token is configured: set it in config.toml, then restart")
        code, expires = self.bot.new_code(time.time())
        log.info("telegram: a pairing code was made (valid %d min)", bot.CODE_TTL_S // 60)
        return {"code": code, "expires_at": expires, "bot": self.bot_name,
                "command": f"/start {code}", "paired": self.bot.paired}

    def telegram_status(self) -> dict[str, Any]:
        code = self.bot.code(time.time())
        return {"configured": bool(self.token), "paired": self.bot.paired, "bot": self.bot_name,
                "code_waiting": code is not None, "code_expires_at": code[1] if code else None,
                "error": self.bot_error, "last_summary": self.bot.state.last_summary or None}

    def status(self) -> dict[str, Any]:
        return {"alerts": [a.to_json() for a in self.book.active()], "telegram": self.telegram_status(),
                "streak": dict(self.streak),
                "history_points": len(self.history.minutes) + len(self.history.hours),
                "alert_scale": self.scale, "stats": dict(self.stats)}

    # ------------------------------------------------------------------ files
    def _check_secret_file(self) -> None:
        """Warn when the token sits in a config.toml that other users can read."""
        sources = getattr(self.ctx.config, "sources", {})
        if not self.token or sources.get("telegram_token") != "file":
            return
        path = self.ctx.data_dir / "config.toml"
        try:
            if path.stat().st_mode & 0o077:
                log.warning("%s holds the Telegram bot's token and other users can read it: "
                            "run 'chmod 600 %s'", path, path)
        except OSError:
            pass

    def _load(self) -> None:
        path = self.dir / HISTORY_FILE
        try:
            if path.stat().st_size > MAX_HISTORY_BYTES:
                raise ValueError("larger than a full history")
            self.history = history.History.from_json(json.loads(path.read_bytes()))
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            log.warning("starting a new history: %s is unreadable (%s)", path, exc)
        path = self.dir / BOT_FILE
        try:
            self.bot = bot.BotCore(bot.BotState.from_json(json.loads(path.read_bytes()[:65536])))
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            log.warning("the telegram bot is not paired: %s is unreadable (%s)", path, exc)

    def _save_history(self) -> None:
        self._saved_at = time.time()
        try:
            write_atomic(self.dir / HISTORY_FILE, json.dumps(self.history.to_json(),
                                                             separators=(",", ":")).encode())
        except OSError as exc:
            log.warning("could not save the history: %s", exc)

    def _save_bot(self) -> None:
        self.bot.dirty = False
        try:
            write_atomic(self.dir / BOT_FILE, json.dumps(self.bot.state.to_json()).encode(), mode=0o600)
        except OSError as exc:
            log.warning("could not save the telegram bot's state: %s", exc)


def history_path(data_dir: Path) -> Path:
    return data_dir / DIR / HISTORY_FILE
