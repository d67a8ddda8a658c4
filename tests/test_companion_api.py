"""The companion on a real in-process node: /api/alerts, /api/history, /api/telegram, pairing
behind the admin token, /metrics and the page's alerts; the token never shown."""

from __future__ import annotations

import httpx
import pytest
import trio
from fake_telegram import FakeBotApi
from polling import poll_until

from poolai.node import config as config_mod
from poolai.node.cli import main as cli
from poolai.node.node import open_node
from poolai.node.web import metrics, view

pytestmark = pytest.mark.timeout(60)
TOKEN = "123456789:" + "Z" * 35


def node_config(data_dir, url: str):
    return config_mod.load(data_dir, {"listen": ["/ip4/127.0.0.1/tcp/0"], "api_port": 0},
                           environ={"POOLAI_TELEGRAM_TOKEN": TOKEN, "POOLAI_TELEGRAM_API_URL": url,
                                    "POOLAI_ALERT_SCALE": "0.01"})


async def test_alerts_history_and_pairing_through_the_api(tmp_path):
    with FakeBotApi(TOKEN) as fake, trio.fail_after(50):
        async with open_node(node_config(tmp_path / "n", fake.url)) as node, httpx.AsyncClient(
                base_url=node.api_url, timeout=20) as client:
            companion = node.companion
            assert companion is not None
            # it knows no peer from the start: "alone" after 120 s x 0.01 (info, not unreachable)
            await poll_until(lambda: [a.key for a in companion.book.active()] == ["alone"])
            doc = (await client.get("/api/alerts")).json()
            alert = doc["alerts"][0]
            assert alert["severity"] == "info" and "--bootstrap" in alert["fix"] and alert["since"] > 0
            assert {r["key"] for r in doc["rules"]} >= {"unreachable", "gpu_hot", "clock_skew", "new_release"}
            assert doc["recent"][-1]["kind"] == "raised"

            history = (await client.get("/api/history")).json()
            assert history["span"] == "day" and len(history["points"]["t"]) >= 1
            assert [c["field"] for c in history["charts"]] == ["peers", "stored", "served", "jobs", "earned"]
            assert (await client.get("/api/history?span=year")).status_code == 400

            assert (await client.post("/api/admin/telegram/pair")).status_code == 401
            r = await client.post("/api/admin/telegram/pair",
                                  headers={"Authorization": f"Bearer {node.admin_token}"})
            code = r.json()["code"]
            telegram = (await client.get("/api/telegram")).json()
            assert telegram["configured"] and telegram["code_waiting"]
            status = (await client.get("/api/status")).text
            assert code not in status and code not in (await client.get("/api/telegram")).text
            for path in ("/api/status", "/api/page", "/metrics", "/api/log?limit=500", "/api/alerts"):
                assert TOKEN not in (await client.get(path)).text, path

            text = (await client.get("/metrics")).text
            assert 'poolai_alert{alert="alone",severity="info"} 1' in text
            assert 'poolai_alerts_active{severity="critical"} 0' in text
            assert 'poolai_alerts_active{severity="info"} 1' in text
            assert "poolai_telegram_paired 0" in text
            page = (await client.get("/api/page")).json()
            shown = [a for a in page["alerts"] if a["text"].startswith("Node alone (since ")]
            assert [a["level"] for a in shown] == ["info"]
            assert not any("No peer connected" in a["text"] for a in page["alerts"])  # not twice


def test_config_show_never_prints_the_token(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("POOLAI_TELEGRAM_TOKEN", TOKEN)
    assert cli.main(["--data-dir", str(tmp_path), "config", "show"]) == 0
    out = capsys.readouterr().out
    assert TOKEN not in out and "telegram_token" in out and "(set)" in out
    monkeypatch.setenv("POOLAI_TELEGRAM_TOKEN", "not-a-token-" + TOKEN)
    with pytest.raises(config_mod.ConfigError) as info:
        config_mod.load(tmp_path)
    assert TOKEN not in str(info.value)


def test_metrics_and_page_alerts_from_a_status_with_companion_alerts():
    alert = {"key": "gpu_hot", "severity": "warning", "title": "GPU hot", "detail": "GPU 0 at 90 °C",
             "fix": "Clean the fans.", "since": 0.0}
    status = {"peers": [{"peer_id": "p"}], "companion": {"alerts": [alert], "streak": {"current": 4},
                                                         "telegram": {"configured": True, "paired": True}}}
    text = metrics.render(metrics.collect(status))
    assert 'poolai_alert{alert="gpu_hot",severity="warning"} 1' in text
    assert "poolai_contribution_streak_days 4" in text and "poolai_telegram_paired 1" in text
    [shown] = view.alerts(status, [])
    assert shown == {"level": "warning",
                     "text": "GPU hot (since 1970-01-01 00:00 UTC): GPU 0 at 90 °C. Fix: Clean the fans."}
