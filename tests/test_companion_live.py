"""The Telegram bot on a real node process, against a local fake Bot API server (real HTTP).

Node A (with the bot, at ``alert_scale`` 0.25: "unreachable" raises after 30 s) joins
through node B, its only peer. Paired through ``poolai telegram pair`` and ``/start CODE``,
the owner's chat gets /status answered; another chat's /drain is refused and changes
nothing; stopping B brings the "Node unreachable" alert to the owner's chat within the
rule's delay (and not before it); the token appears in no log line, even at debug level,
where httpx logs every request's URL.
"""

from __future__ import annotations

import re
import subprocess
import time

import pytest
from fake_telegram import FakeBotApi

from poolai.node.companion.rules import RULES_BY_KEY
from poolai.node.companion.service import SAMPLE_S
from poolai.node.launcher import NodeProcess, poolai_command, stop_all, wait_until

pytestmark = [pytest.mark.live, pytest.mark.timeout(240)]
TOKEN = "987654321:" + "Tk_-" * 9
OWNER, STRANGER = 5550001, 5550002
SCALE = 0.25
FAST = {"POOLAI_OVERLAY_SCALE": "0.05", "POOLAI_CAPACITY_HEARTBEAT": "1", "POOLAI_CAPACITY_EXPIRY": "5"}


def test_paired_bot_alerts_when_the_only_peer_stops_and_obeys_only_its_owner(tmp_path):
    with FakeBotApi(TOKEN) as fake:
        b = NodeProcess(tmp_path / "b", env=FAST).start()
        env = {**FAST, "POOLAI_TELEGRAM_TOKEN": TOKEN, "POOLAI_TELEGRAM_API_URL": fake.url,
               "POOLAI_ALERT_SCALE": str(SCALE)}
        a = NodeProcess(tmp_path / "a", "--bootstrap", b.addr, "--log-level", "debug", env=env)
        nodes = [b, a]
        try:
            a.start()
            wait_until(lambda: a.connected() == {b.peer_id}, 30, "A connected to B")
            wait_until(lambda: "getUpdates" in fake.calls, 30, "the bot polling the fake Bot API")

            out = subprocess.run(poolai_command("--data-dir", str(a.data_dir), "telegram", "pair"),
                                 capture_output=True, text=True, timeout=30, check=True).stdout
            code = re.search(r"pairing code: ([A-Z0-9]+)", out)[1]
            assert f"/start {code}" in out and "@poolai_test_bot" in out
            fake.send_user(OWNER, f"/start {code}")
            fake.wait_message(OWNER, "Paired")

            fake.send_user(OWNER, "/status")
            status = fake.wait_message(OWNER, "peers: 1 connected")
            assert a.peer_id in status["text"]

            fake.send_user(STRANGER, "/drain")
            fake.wait_message(STRANGER, "answers its owner's chat only")
            assert a.status()["jobs"]["draining"] is False

            delay = RULES_BY_KEY["unreachable"].raise_after * SCALE
            before = fake.last_message_id()
            signalled = time.monotonic()  # A cannot miss B before this
            shutdown = b.stop().seconds  # B closes its connections early in its shutdown
            alert = fake.wait_message(OWNER, "Node unreachable", timeout=delay + 30, after=before)
            took = alert["at"] - signalled
            print(f"alert {took:.1f} s after the peer was stopped (rule delay {delay:g} s, "
                  f"its shutdown took {shutdown:.1f} s)")
            slack = SAMPLE_S * SCALE + 10.0  # one sample period, the group window, the send
            assert delay - 0.5 <= took <= delay + shutdown + slack, took
            assert "Fix:" in alert["text"]
            assert a.get("/api/alerts")["alerts"][0]["key"] == "unreachable"
            shown = subprocess.run(poolai_command("--data-dir", str(a.data_dir), "alerts"),
                                   capture_output=True, text=True, timeout=30, check=True).stdout
            assert "CRITICAL Node unreachable" in shown and "fix: Check the network" in shown

            fake.send_user(OWNER, "/drain")
            fake.wait_message(OWNER, "Draining")
            wait_until(lambda: a.status()["jobs"]["draining"] is True, 10, "A draining")
            fake.send_user(OWNER, "/resume")
            fake.wait_message(OWNER, "Resumed")

            assert fake.bad_token_calls == 0
            log_lines = a.output + [e["msg"] for e in a.get("/api/log?limit=500")["entries"]]
            assert any("bot<telegram-token>/getUpdates" in line for line in log_lines)  # httpx, redacted
            assert not [line for line in log_lines if TOKEN in line]
            for path in (a.data_dir / "companion").iterdir():
                assert TOKEN.encode() not in path.read_bytes(), path
            assert (a.data_dir / "companion" / "telegram.json").stat().st_mode & 0o777 == 0o600
        finally:
            stop_all(nodes)
    assert TOKEN not in "\n".join(a.output)  # the shutdown lines too
