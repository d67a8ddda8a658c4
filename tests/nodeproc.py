"""Run real ``poolai node run`` processes for multi-node tests, and wait on their state.

Waiting is done by polling a condition against the node's local API with a
deadline, never by sleeping a fixed time and hoping.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

POOLAI = Path(sys.executable).with_name("poolai")


def poolai_cmd(*args: str) -> list[str]:
    if POOLAI.exists():
        return [str(POOLAI), *args]
    return [sys.executable, "-m", "poolai.node.cli.main", *args]


class NodeProcess:
    """One node process; its stdout is read on a thread so it never blocks the node."""

    def __init__(self, data_dir: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.extra = extra
        self.env = {**os.environ, "POOLAI_LOG_LEVEL": "info", **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self.peer_id = ""
        self.addr = ""
        self.api = ""

    def start(self, timeout: float = 30.0) -> NodeProcess:
        args = poolai_cmd(
            "--data-dir", str(self.data_dir), "node", "run",
            "--listen", "/ip4/127.0.0.1/tcp/0", "--api-port", "0", *self.extra,
        )
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env
        )
        threading.Thread(target=self._pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not (self.peer_id and self.addr and self.api):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.proc.poll() is not None:
                raise AssertionError(f"node did not start:\n{self.log()}")
            try:
                line = self.lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if line.startswith("peer id: "):
                self.peer_id = line.split(": ", 1)[1]
            elif line.startswith("listening: ") and not self.addr:
                self.addr = line.split(": ", 1)[1]
            elif line.startswith("api: "):
                self.api = line.split(": ", 1)[1]
        return self

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.output.append(line)
            self.lines.put(line)

    def log(self) -> str:
        return "\n".join(self.output[-60:])

    def get(self, path: str, timeout: float = 5.0) -> Any:
        response = httpx.get(self.api + path, timeout=timeout)
        response.raise_for_status()
        return response.json()

    def status(self) -> dict[str, Any]:
        return self.get("/api/status")

    def connected(self) -> set[str]:
        return {p["peer_id"] for p in self.status()["peers"]}

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> tuple[int, float]:
        """Send ``sig`` and wait; returns (exit code, seconds taken)."""
        assert self.proc is not None
        start = time.monotonic()
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"node did not exit within {timeout} s:\n{self.log()}") from None
        return code, time.monotonic() - start

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def wait_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (httpx.HTTPError, OSError, KeyError, json.JSONDecodeError) as exc:
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last error: {last_error})")


def stop_all(nodes: list[NodeProcess]) -> None:
    for node in nodes:
        if node.alive:
            node.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    for node in nodes:
        if node.proc is not None:
            try:
                node.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                node.kill()
