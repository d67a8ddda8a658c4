"""The Telegram bot: its pure rules (pairing, who may command it, grouped pushes), its Bot
API client against a local fake server speaking real HTTP, and the companion service
driving both in one trio process (the node-process version is in test_companion_live.py)."""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio
from fake_telegram import FakeBotApi
from polling import poll_until

from poolai.node.companion import bot
from poolai.node.companion.bot import Action, BotCore, BotState, Outbox
from poolai.node.companion.botapi import REDACTED, BotApi, BotApiError, Redactor
from poolai.node.companion.rules import Alert, Event

TOKEN = "123456789:" + "A" * 35
OWNER, STRANGER = 1001, 2002


def msg(chat: int, text: str, update_id: int = 1, chat_type: str = "private") -> dict:
    return {"update_id": update_id, "message": {"message_id": update_id, "text": text,
                                                "chat": {"id": chat, "type": chat_type}}}


def paired_core() -> BotCore:
    core = BotCore()
    code, _ = core.new_code(0.0, rng=random.Random(1))
    core.handle(msg(OWNER, f"/start {code}"), 1.0)
    return core


# ----------------------------------------------------------------------------- pairing and commands


def test_the_first_chat_with_the_code_becomes_the_owner_and_the_code_is_spent():
    core = BotCore()
    code, expires = core.new_code(100.0, rng=random.Random(1))
    assert len(code) == bot.CODE_LENGTH and expires == 100.0 + bot.CODE_TTL_S
    replies, actions = core.handle(msg(OWNER, f"/start {code.lower()}", 7), 101.0)
    assert core.state.owner_chat == OWNER and core.dirty and core.state.offset == 8
    assert replies[0].chat_id == OWNER and replies[0].text.startswith("Paired") and actions == []
    replies, _ = core.handle(msg(STRANGER, f"/start {code}", 8), 102.0)  # spent
    assert core.state.owner_chat == OWNER and "not valid" in replies[0].text


def test_wrong_expired_and_group_codes_pair_nothing():
    core = BotCore()
    code, _ = core.new_code(0.0)
    assert "not valid" in core.handle(msg(STRANGER, "/start WRONGCODE"), 1.0)[0][0].text
    assert "group" in core.handle(msg(STRANGER, f"/start {code}", 2, "group"), 2.0)[0][0].text
    assert core.handle(msg(OWNER, f"/start {code}", 3), bot.CODE_TTL_S + 1)[0][0].text.startswith("That code")
    assert core.state.owner_chat is None


def test_only_the_owner_commands_and_strangers_are_told_once_a_minute():
    core = paired_core()
    assert core.handle(msg(OWNER, "/status@poolai_test_bot", 2), 5.0) == ([], [Action("status", OWNER)])
    assert core.handle(msg(OWNER, "/drain", 3), 5.0) == ([], [Action("drain", OWNER)])
    replies, actions = core.handle(msg(STRANGER, "/drain", 4), 5.0)
    assert actions == [] and replies[0].chat_id == STRANGER and "owner's chat only" in replies[0].text
    assert core.handle(msg(STRANGER, "/status", 5), 30.0) == ([], [])  # told already
    assert core.handle(msg(STRANGER, "/resume", 6), 70.0)[0][0].chat_id == STRANGER
    assert core.handle(msg(OWNER, "hello", 7), 70.0)[0][0].text.startswith("Unknown command")
    for junk in (None, {}, {"update_id": "x"}, {"message": {"chat": {"id": True}, "text": "/drain"}},
                 {"message": {"chat": {"id": OWNER}, "text": None}}):
        assert core.handle(junk, 80.0) == ([], [])


def test_strangers_together_get_a_bounded_number_of_replies():
    core = paired_core()
    told = sum(len(core.handle(msg(10_000 + i, "/status", 10 + i), 5.0)[0]) for i in range(100))
    assert told == bot.STRANGER_REPLIES_PER_MIN
    assert len(core.handle(msg(99_999, "/status", 500), 5.0 + bot.STRANGER_REPLY_S)[0]) == 1


def test_summary_and_streak_texts():
    text = bot.summary_text("12D3KooWnode", {"jobs": 7, "served": 3 << 30, "earned": 1.25},
                            {"current": 4}, 5 << 30, alerts=1)
    assert "jobs run: 7" in text and "served: 3.0 GiB" in text and "stored: 5.0 GiB" in text
    assert "credits earned: 1.250" in text and "streak: 4 day(s)" in text
    marks = {"reached": [{"kind": "jobs", "label": "jobs run", "goal": 10}],
             "next": [{"kind": "served", "label": "bytes served", "goal": 1 << 30, "progress": 0.5}]}
    streak = bot.streak_text({"current": 2, "best": 5, "days": 9}, marks)
    assert "2 day(s) in a row (best 5" in streak and "10 jobs run" in streak
    assert "next: 1.0 GiB bytes served (50%)" in streak


def test_a_new_code_moves_the_bot_to_the_chat_that_uses_it():
    core = paired_core()
    code, _ = core.new_code(10.0)
    core.handle(msg(3003, f"/start {code}", 9), 11.0)
    assert core.state.owner_chat == 3003


def test_bot_state_round_trips_and_refuses_junk():
    state = BotState(owner_chat=OWNER, offset=17, last_summary=5.0)
    assert BotState.from_json(state.to_json()) == state
    for bad in ({"version": 2}, {"version": 1, "owner_chat": "x", "offset": 0, "last_summary": 0},
                {"version": 1, "owner_chat": None, "offset": -1, "last_summary": 0}):
        with pytest.raises(ValueError):
            BotState.from_json(bad)


# ----------------------------------------------------------------------------- pushing alerts


def event(kind: str, key: str, at: float, severity: str = "warning") -> Event:
    return Event(kind, Alert(key, severity, key.title(), "detail", "fix it", since=at), at)


def test_outbox_groups_events_and_limits_the_rate():
    box = Outbox(group_s=10.0, burst=2, refill_s=300.0)
    box.add([event("raised", "a", 0.0)], 0.0)
    assert box.due(5.0) == []  # waiting for others to join
    box.add([event("raised", "b", 6.0, "critical")], 6.0)
    assert [e.alert.key for e in box.due(10.0)] == ["b", "a"]  # critical first, one message
    box.add([event("cleared", "a", 20.0)], 20.0)
    assert [e.kind for e in box.due(30.0)] == ["cleared"]
    box.add([event("raised", "c", 40.0)], 40.0)
    assert box.due(50.0) == [] and box.held_back == 1  # the bucket is empty
    assert [e.alert.key for e in box.due(50.0 + 300.0)] == ["c"]


def test_outbox_drops_a_flap_the_owner_never_heard_of():
    box = Outbox(group_s=10.0)
    box.add([event("raised", "a", 0.0)], 0.0)
    box.add([event("cleared", "a", 4.0)], 4.0)
    assert box.due(11.0) == [] and box.sent == 0


def test_texts_fit_a_telegram_message():
    alerts = [Alert(f"k{i}", "warning", "T", "d" * 500, "f", 0.0).to_json() for i in range(20)]
    assert len(bot.active_text(alerts)) <= bot.MAX_TEXT
    text = bot.alerts_text("12D3KooWnode", [event("raised", "unreachable", 0.0, "critical")])
    assert "Unreachable (since 00:00 UTC): detail. Fix: fix it" in text


# ----------------------------------------------------------------------------- the HTTP client


async def test_bot_api_calls_the_fake_server_over_http():
    with FakeBotApi(TOKEN) as fake, trio.fail_after(20):
        async with BotApi(fake.url, TOKEN) as api:
            me = await api.call("getMe")
            assert me["username"] == "poolai_test_bot"
            fake.send_user(OWNER, "/status")
            updates = await api.call("getUpdates", offset=0, timeout=5)
            assert updates[0]["message"]["text"] == "/status"
            with pytest.raises(BotApiError, match="sendMessage: HTTP 400") as info:
                await api.call("sendMessage", chat_id=OWNER, text="")
            assert TOKEN not in str(info.value)
        async with BotApi(fake.url, "999:" + "B" * 35) as wrong:
            with pytest.raises(BotApiError, match="getMe: HTTP 401: Unauthorized"):
                await wrong.call("getMe")
        async with BotApi("http://127.0.0.1:9", TOKEN) as nowhere:
            with pytest.raises(BotApiError) as info:
                await nowhere.call("getMe")
            assert TOKEN not in str(info.value) and "127.0.0.1:9" not in str(info.value)


def test_redactor_rewrites_messages_arguments_and_tracebacks():
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Keep()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(Redactor(TOKEN))
    logger = logging.getLogger("test.redactor")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("url %s", f"https://api.telegram.org/bot{TOKEN}/getMe")
        try:
            raise RuntimeError(f"boom {TOKEN}")
        except RuntimeError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    assert all(TOKEN not in r for r in records) and REDACTED in records[0] and REDACTED in records[1]


# ----------------------------------------------------------------------------- the service, in-process


class FakeJobs:
    def __init__(self) -> None:
        self.draining = self.paused = False
        self.jobs: dict = {}
        self.executor = SimpleNamespace(recent_results=[], stats={"finished": 0})

    def set_draining(self, on: bool) -> None:
        self.draining = on

    def set_paused(self, on: bool) -> None:
        self.paused = on

    def status(self) -> dict:
        return {"running": 0, "queue_length": 0, "slots": 1, "draining": self.draining,
                "paused": self.paused, "submitted_by_state": {}}


def companion(tmp_path: Path, url: str, peers: set[str], jobs: FakeJobs):
    from poolai.node.companion.service import CompanionService

    config = SimpleNamespace(telegram_token=TOKEN, telegram_api_url=url, alert_scale=0.01)
    host = SimpleNamespace(peer_id="12D3KooWself", connected_peers=lambda: set(peers))
    book = ["12D3KooWpeer"]  # the peer book: it knows one peer
    ctx = SimpleNamespace(config=config, data_dir=tmp_path, host=host, book=book, peer_id="12D3KooWself")
    return CompanionService(ctx, jobs=jobs)  # type: ignore[arg-type]


async def test_service_pairs_pushes_an_alert_answers_the_owner_and_refuses_strangers(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    # httpx logs each request's URL, token included, at INFO; a node's log set-up (run by
    # earlier tests in this process) quiets it, so turn it up here to prove the redaction.
    caplog.set_level(logging.INFO, logger="httpx")
    peers = {"12D3KooWpeer"}
    jobs = FakeJobs()
    with FakeBotApi(TOKEN) as fake, trio.fail_after(60):
        service = companion(tmp_path, fake.url, peers, jobs)
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            code = service.new_pairing_code()["code"]
            fake.send_user(OWNER, f"/start {code}")
            await trio.to_thread.run_sync(fake.wait_message, OWNER, "Paired")
            assert (tmp_path / "companion" / "telegram.json").stat().st_mode & 0o777 == 0o600

            peers.clear()  # the only peer goes away: "unreachable" after 120 s x 0.01
            alert = await trio.to_thread.run_sync(fake.wait_message, OWNER, "Node unreachable")
            assert "Fix:" in alert["text"]

            fake.send_user(OWNER, "/status")
            status = await trio.to_thread.run_sync(fake.wait_message, OWNER, "peers: 0 connected, 1 known")
            assert "Node unreachable" in status["text"]

            fake.send_user(STRANGER, "/drain")
            refusal = await trio.to_thread.run_sync(fake.wait_message, STRANGER, "owner's chat only")
            assert refusal and jobs.draining is False
            fake.send_user(OWNER, "/drain")
            await trio.to_thread.run_sync(fake.wait_message, OWNER, "Draining")
            assert jobs.draining is True

            peers.add("12D3KooWpeer")
            await trio.to_thread.run_sync(fake.wait_message, OWNER, "cleared: Node unreachable")

            jobs.executor.stats["finished"] = 1  # the first job run here: a milestone
            await trio.to_thread.run_sync(fake.wait_message, OWNER, "Milestone: 1 jobs run")
            service.bot.state.last_summary = time.time() - 86401  # a day since the last summary
            summary = await trio.to_thread.run_sync(fake.wait_message, OWNER, "Daily summary")
            assert "jobs run: 1" in summary["text"]
            assert service.status()["telegram"]["paired"] is True
            nursery.cancel_scope.cancel()
    assert fake.bad_token_calls == 0
    assert "HTTP Request: POST" in caplog.text  # httpx logged its requests ...
    assert TOKEN not in caplog.text  # ... without the token
    assert (tmp_path / "companion" / "history.json").exists()


async def test_service_without_a_token_runs_no_bot_and_keeps_its_history(tmp_path):
    service = companion(tmp_path, "http://127.0.0.1:9", {"p"}, FakeJobs())
    service.token = ""
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        await poll_until(lambda: service.history.latest() is not None)
        with pytest.raises(LookupError):
            service.new_pairing_code()
        assert service.status()["telegram"]["configured"] is False
        nursery.cancel_scope.cancel()
    saved = service.history.latest()
    again = companion(tmp_path, "http://127.0.0.1:9", {"p"}, FakeJobs())  # the node restarted
    again.token = ""
    async with trio.open_nursery() as nursery:
        await nursery.start(again.run)
        assert again.history.minutes[0] == saved  # kept across the restart
        nursery.cancel_scope.cancel()
