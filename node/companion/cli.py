"""``poolai telegram`` and ``poolai alerts``: the owner's companion from the command line.

    poolai telegram pair      a one-time code; send /start CODE to the bot to pair your chat
    poolai telegram status    whether a bot is configured and paired
    poolai alerts [--json]    the node's alerts now, with what to do about each
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import httpx

from poolai.node import config as config_mod
from poolai.node.cli.errors import CliError
from poolai.node.cli.local_api import fetch_local, find_node


def register(sub: Any) -> None:
    """Add the ``telegram`` and ``alerts`` commands to the ``poolai`` subparsers."""
    tg = sub.add_parser("telegram", help="pair the node's Telegram bot with your chat")
    tg_sub = tg.add_subparsers(dest="telegram_command", metavar="ACTION")
    tg_sub.required = True
    pair = tg_sub.add_parser("pair", help="print a one-time code to send to the bot as /start CODE")
    pair.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the node")
    pair.set_defaults(func=run_pair)
    status = tg_sub.add_parser("status", help="whether a bot is configured and paired")
    status.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the node")
    status.set_defaults(func=run_status)
    alerts = sub.add_parser("alerts", help="the node's alerts now, and what to do about each")
    alerts.add_argument("--json", action="store_true", help="print the raw JSON")
    alerts.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the node")
    alerts.set_defaults(func=run_alerts)


def run_pair(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.data_dir, {})
    node = find_node(cfg.data_dir)
    try:
        with node.client(args.timeout, headers=node.headers) as client:
            response = client.post(node.base + "/api/admin/telegram/pair", json={})
    except httpx.HTTPError as exc:
        raise CliError(f"the node at {node.api} did not answer: {exc}") from None
    doc = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
    if response.status_code != 200:
        raise CliError(f"the node refused: {doc.get('error') or response.status_code}")
    bot = f"@{doc['bot']}" if doc.get("bot") else "your node's bot"
    minutes = max(1, round((doc["expires_at"] - time.time()) / 60))
    print(f"pairing code: {doc['code']}")
    print(f"send this to {bot} from the chat that should get the alerts (valid {minutes} min, once):")
    print(f"  /start {doc['code']}")
    if doc.get("paired"):
        print("(the bot is paired already; the chat that uses this code replaces that chat)")
    return 0


def run_status(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.data_dir, {})
    doc = fetch_local(cfg.data_dir, "/api/telegram", args.timeout)
    if not doc.get("configured"):
        print("no bot: set telegram_token in config.toml (from @BotFather), then restart the node")
    else:
        name = f"@{doc['bot']}" if doc.get("bot") else "bot (not reached yet)"
        print(f"{name}: {'paired with a chat' if doc.get('paired') else 'not paired (poolai telegram pair)'}")
        if doc.get("error"):
            print(f"last error: {doc['error']}")
    return 0


def run_alerts(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.data_dir, {})
    doc = fetch_local(cfg.data_dir, "/api/alerts", args.timeout)
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    if not doc["alerts"]:
        print("no alerts: all quiet")
    for a in doc["alerts"]:
        since = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(a["since"]))
        print(f"{a['severity'].upper():<8} {a['title']} (since {since}): {a['detail']}")
        print(f"         fix: {a['fix']}")
    return 0
