"""A fake Telegram Bot API server on 127.0.0.1 that speaks the real HTTP interface.

``POST /bot<token>/<method>`` with a JSON body (or form fields), answering
``{"ok": true, "result": ...}`` or ``{"ok": false, "error_code", "description"}`` as the
Bot API does. ``getUpdates`` long-polls: it holds the request until an update arrives or
its ``timeout`` passes. Tests play users with :meth:`FakeBotApi.send_user` and read what
the bot sent with :meth:`FakeBotApi.wait_message`. Runs in threads, so both trio tests and
tests of node processes can use it.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_POLL_S = 30.0


class FakeBotApi:
    def __init__(self, token: str, username: str = "poolai_test_bot") -> None:
        self.token = token
        self.username = username
        self.updates: list[dict[str, Any]] = []
        self.messages: list[dict[str, Any]] = []  # what the bot sent: {"chat_id", "text", "at"}
        self.calls: list[str] = []  # methods called, in order
        self.bad_token_calls = 0
        self._next_update = 1
        self._next_message = 1
        self._cond = threading.Condition()
        self._closed = False
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> FakeBotApi:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep the test output quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                kind = self.headers.get("Content-Type", "")
                if "json" in kind:
                    params = json.loads(raw or b"{}")
                else:
                    params = {k: v[0] for k, v in urllib.parse.parse_qs(raw.decode()).items()}
                status, answer = fake.handle(self.path, params)
                body = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST  # noqa: N815 - the Bot API takes GET too

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a long poll the bot gave up on (it was cancelled) is not news

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> FakeBotApi:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ the API
    def handle(self, path: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        parts = path.split("?", 1)[0].strip("/").split("/")
        if len(parts) != 2 or not parts[0].startswith("bot"):
            return 404, {"ok": False, "error_code": 404, "description": "Not Found"}
        token, method = parts[0][3:], parts[1]
        if token != self.token:
            with self._cond:
                self.bad_token_calls += 1
            return 401, {"ok": False, "error_code": 401, "description": "Unauthorized"}
        with self._cond:
            self.calls.append(method)
        if method == "getMe":
            return 200, {"ok": True, "result": {"id": 4242, "is_bot": True, "first_name": "PoolAI",
                                                "username": self.username}}
        if method == "getUpdates":
            return 200, {"ok": True, "result": self._get_updates(params)}
        if method == "sendMessage":
            chat_id, text = params.get("chat_id"), params.get("text")
            if not isinstance(text, str) or not text or len(text) > 4096:
                return 400, {"ok": False, "error_code": 400, "description": "Bad Request: message text"}
            with self._cond:
                message = {"message_id": self._next_message, "chat_id": int(chat_id), "text": text,
                           "at": time.monotonic()}
                self._next_message += 1
                self.messages.append(message)
                self._cond.notify_all()
            return 200, {"ok": True, "result": {"message_id": message["message_id"],
                                                "chat": {"id": int(chat_id)}, "text": text}}
        return 404, {"ok": False, "error_code": 404, "description": "Not Found: method not found"}

    def _get_updates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        offset = int(params.get("offset") or 0)
        limit = int(params.get("limit") or 100)
        deadline = time.monotonic() + min(float(params.get("timeout") or 0), MAX_POLL_S)
        with self._cond:
            self.updates = [u for u in self.updates if u["update_id"] >= offset]  # confirmed ones go
            while not self.updates and not self._closed and time.monotonic() < deadline:
                self._cond.wait(deadline - time.monotonic())
            return self.updates[:limit]

    # ------------------------------------------------------------------ playing users
    def send_user(self, chat_id: int, text: str, chat_type: str = "private") -> int:
        """A user's message to the bot; returns its update id."""
        with self._cond:
            update_id = self._next_update
            self._next_update += 1
            self.updates.append({"update_id": update_id, "message": {
                "message_id": update_id, "date": int(time.time()), "text": text,
                "chat": {"id": chat_id, "type": chat_type},
                "from": {"id": chat_id, "is_bot": False, "first_name": f"user{chat_id}"}}})
            self._cond.notify_all()
        return update_id

    def wait_message(self, chat_id: int, contains: str = "", timeout: float = 30.0,
                     after: int = 0) -> dict[str, Any]:
        """The first message the bot sent ``chat_id`` (numbered above ``after``) containing
        ``contains``; AssertionError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for m in self.messages:
                    if m["chat_id"] == chat_id and m["message_id"] > after and contains in m["text"]:
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    sent = [(m["chat_id"], m["text"][:80]) for m in self.messages]
                    raise AssertionError(f"no message to {chat_id} containing {contains!r} in "
                                         f"{timeout} s; sent: {sent}")
                self._cond.wait(left)

    def last_message_id(self) -> int:
        with self._cond:
            return self._next_message - 1
