"""A small Telegram Bot API client for trio, and the log filter that keeps the token secret.

Why httpx under trio rather than python-telegram-bot or aiogram: both run on asyncio, so
they would need a thread or a process of their own with a second event loop and a queue
to the node's trio loop; the bot needs four methods (``getUpdates``, ``sendMessage``,
``getMe``, ``deleteWebhook``) over plain HTTPS, and httpx is already a dependency of the
node (the CLI's local API client) that runs natively on trio (through anyio). So the bot is
one more task in the node's nursery, cancelled with it.

Methods are called as the Bot API documents: ``POST {api_url}/bot{token}/{method}`` with a
JSON body; the answer is ``{"ok": true, "result": ...}`` or ``{"ok": false, "description"}``.
The URL holds the token, so no URL is ever logged or put in an exception message here:
errors name the method only. httpx itself logs each request's URL at INFO;
:class:`Redactor` (installed by the service on every handler of the root logger while the
bot runs) rewrites any record that contains the token before it is written anywhere.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import trio

MAX_RESPONSE = 1 << 20  # bytes of one Bot API answer (100 updates of 4 KB text fit well)
REDACTED = "<telegram-token>"


class BotApiError(Exception):
    """A Bot API call failed: network, HTTP status, or an answer that is not ``ok``."""


class BotApi:
    """``await api.call(method, **params)`` returns the ``result`` of the answer.

    The caller bounds every call (``trio.fail_after``); ``read_timeout`` only sets httpx's
    own limit (a long poll needs more than its ``timeout`` parameter)."""

    def __init__(self, api_url: str, token: str, *, read_timeout: float = 60.0) -> None:
        self._base = f"{api_url.rstrip('/')}/bot{token}/"
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=read_timeout),
                                         follow_redirects=False, trust_env=False)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> BotApi:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def call(self, method: str, **params: Any) -> Any:
        try:
            async with self._client.stream("POST", self._base + method, json=params) as response:
                body = b""
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_RESPONSE:
                        raise BotApiError(f"{method}: answer larger than {MAX_RESPONSE} bytes")
                status = response.status_code
        except httpx.HTTPError as exc:
            raise BotApiError(f"{method}: {type(exc).__name__}") from None
        try:
            answer = json.loads(body)
        except ValueError:
            raise BotApiError(f"{method}: HTTP {status}, not JSON") from None
        if not isinstance(answer, dict) or answer.get("ok") is not True:
            description = answer.get("description") if isinstance(answer, dict) else None
            raise BotApiError(f"{method}: HTTP {status}: {str(description)[:200]}")
        return answer.get("result")


class Redactor(logging.Filter):
    """Replaces ``secret`` in a record's message, arguments and exception text."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secret:
            return True
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        if self.secret in message:
            record.msg, record.args = message.replace(self.secret, REDACTED), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text and self.secret in record.exc_text:
            record.exc_text = record.exc_text.replace(self.secret, REDACTED)
        return True


async def wait_for_updates(api: BotApi, offset: int, poll_s: float) -> list[Any]:
    """One long poll: the updates from ``offset`` on (at most 100), within ``poll_s`` + 15 s."""
    with trio.fail_after(poll_s + 15.0):
        result = await api.call("getUpdates", offset=offset, timeout=int(poll_s), limit=100,
                                allowed_updates=["message"])
    if not isinstance(result, list):
        raise BotApiError("getUpdates: the result is not a list")
    return result
