"""The companion's part of the local API: alerts, history, the Telegram bot's pairing.

``GET /api/alerts``: the alerts raised now (worst first), the latest raised and cleared
events, and every rule with its severity, delays and fix. ``GET /api/history``: the
history's points (``?span=day``, by the minute, the default; or ``90d``, by the hour) as
columns, the page's charts as SVG polylines, the contribution streak and milestones.
``GET /api/telegram``: whether a bot is configured and paired (never the token, never the
code). ``POST /api/admin/telegram/pair``: a fresh one-time pairing code (admin only).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from poolai.node.companion import history

if TYPE_CHECKING:
    from poolai.node.companion.service import CompanionService

SPANS = ("day", "90d")


def routes(service: CompanionService) -> list[Route]:
    async def get_alerts(request: Request) -> JSONResponse:
        """The node's alerts now, the latest alert events, and the rules."""
        return JSONResponse({
            "alerts": [a.to_json() for a in service.book.active()],
            "recent": list(service.recent),
            "rules": [{"key": r.key, "severity": r.severity, "title": r.title, "fix": r.fix,
                       "raise_after_s": r.raise_after * service.scale,
                       "clear_after_s": r.clear_after * service.scale} for r in service.book.rules],
        })

    async def get_history(request: Request) -> JSONResponse:
        """The node's history (``?span=day|90d``), its charts, streak and milestones."""
        span = request.query_params.get("span", "day")
        if span not in SPANS:
            return JSONResponse({"error": f"span is one of {', '.join(SPANS)}"}, 400)
        h = service.history
        points = list(h.minutes) if span == "day" else h.hourly()  # a copy: the thread reads only it
        doc = await trio.to_thread.run_sync(lambda: {  # ~25 ms for a full day: not on the node's loop
            "span": span, "step_s": history.MINUTE if span == "day" else history.HOUR,
            "points": history.columns(points), "charts": history.charts(points)})
        streak = service.streak
        marks = history.milestones(h, streak=streak["current"])
        return JSONResponse({**doc, "streak": streak, "milestones": marks},
                            headers={"Cache-Control": "no-store"})

    async def get_telegram(request: Request) -> JSONResponse:
        """Whether a Telegram bot is configured and paired."""
        return JSONResponse(service.telegram_status())

    async def pair(request: Request) -> JSONResponse:
        """A one-time code: send ``/start CODE`` to the bot from the chat that should own it."""
        try:
            return JSONResponse(service.new_pairing_code())
        except LookupError as exc:
            return JSONResponse({"error": str(exc)}, 409)

    return [
        Route("/api/alerts", get_alerts),
        Route("/api/history", get_history),
        Route("/api/telegram", get_telegram),
        Route("/api/admin/telegram/pair", pair, methods=["POST"]),
    ]
