"""Start ``poolai node run`` processes for tests and scripts, and know when they are up.

A node is up when ``node.json`` in its data directory names this process's pid: the
node writes it once its host, every service and the local API run (see
:mod:`poolai.node.runtime`), and a node killed earlier in the same directory leaves one
with its own, dead pid behind. Peer id, listen addresses and the API's URL and socket
come from that file, not from the node's printed lines.

The node's stdout and stderr go to a log file beside its data directory
(``<data_dir>.log``, appended to on a restart); :attr:`NodeProcess.output` holds the
lines of the current run, and every error here quotes their tail.

This module never imports torch: a test or script that starts nodes stays light.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import httpx

from poolai.node.auth import read_token
from poolai.node.runtime import read_runtime_file

LOOPBACK = "/ip4/127.0.0.1/tcp/0"
POLL_S = 0.05


class NodeStartError(RuntimeError):
    """The node exited, or did not publish its ``node.json``, before the deadline."""


class Stopped(NamedTuple):
    """How a stopped node ended: its exit code (``-9`` when it had to be killed) and the
    seconds from the signal to its exit."""

    code: int
    seconds: float


def poolai_command(*args: str) -> list[str]:
    """The command line of ``poolai args...`` for this interpreter's installation."""
    exe = Path(sys.executable).with_name("poolai")
    if exe.exists():
        return [str(exe), *args]
    return [sys.executable, "-m", "poolai.node.cli.main", *args]


class NodeProcess:
    """One ``poolai --data-dir DATA_DIR node run`` process.

    ``flags`` go after ``node run`` (the node listens on ``listen``, loopback port 0 by
    default, with ``--api-port 0``); ``env`` is added to this process's environment.
    ``program`` replaces ``poolai`` (another build's command, a command wrapped in
    ``ip netns exec ...``, a patched node); it must exec the node, not fork it, since
    readiness is recognised by pid. The node runs in a session of its own, so a
    terminal's Ctrl-C reaches only the caller, which stops its nodes itself.
    """

    def __init__(self, data_dir: Path, *flags: str, env: dict[str, str] | None = None,
                 program: Sequence[str] | None = None, listen: str = LOOPBACK,
                 log_file: Path | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.flags = flags
        self.env = dict(env or {})
        self.program = list(program) if program is not None else poolai_command()
        self.listen = listen
        self.log_file = log_file or self.data_dir.with_name(self.data_dir.name + ".log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}  # the node.json of the last run that came up
        self._log_from = 0

    # -- life cycle ---------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> NodeProcess:
        """Launch the node and wait until it is up; NodeStartError (the node killed)
        when it exits or is not up within ``timeout`` seconds."""
        self.launch()
        return self.wait_ready(timeout)

    def launch(self) -> NodeProcess:
        """Start the process without waiting (start many, then :meth:`wait_ready` each)."""
        if self.alive:
            raise RuntimeError(f"the node in {self.data_dir} is already running")
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            self._log_from = log.tell()
            self.proc = subprocess.Popen(
                [*self.program, "--data-dir", str(self.data_dir), "node", "run",
                 "--listen", self.listen, "--api-port", "0", *self.flags],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, **self.env}, start_new_session=True)
        self.info = {}
        return self

    def wait_ready(self, timeout: float = 60.0) -> NodeProcess:
        """Wait until this run's ``node.json`` is there (see :meth:`start`)."""
        proc = self._running_proc()
        deadline = time.monotonic() + timeout
        while True:
            info = read_runtime_file(self.data_dir)
            if info is not None and info.get("pid") == proc.pid:
                self.info = info
                return self
            if proc.poll() is not None:
                raise NodeStartError(f"the node in {self.data_dir} exited with code {proc.returncode} "
                                     f"before it was up; its output ends:\n{self.log()}")
            if time.monotonic() > deadline:
                self.kill()
                raise NodeStartError(f"the node in {self.data_dir} was not up after {timeout:g} s "
                                     f"(killed); its output ends:\n{self.log()}")
            time.sleep(POLL_S)

    def restart(self, timeout: float = 60.0) -> NodeProcess:
        """Stop the node if it runs, then start it again on the same data directory."""
        if self.alive:
            self.stop()
        return self.start(timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> Stopped:
        """Send ``sig`` (SIGTERM or SIGINT stop a node cleanly) and wait for the exit;
        SIGKILL after ``timeout`` seconds, which then shows as code -9."""
        proc = self._running_proc()
        start = time.monotonic()
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return Stopped(proc.returncode, time.monotonic() - start)

    def kill(self) -> None:
        """SIGKILL the node and reap it: a crash, with no clean-up of its data directory."""
        proc = self._running_proc()
        if proc.poll() is None:
            proc.kill()
        proc.wait()

    def pause(self) -> None:
        """SIGSTOP: the node stays connected but answers nothing until :meth:`resume`."""
        self._running_proc().send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        self._running_proc().send_signal(signal.SIGCONT)

    def _running_proc(self) -> subprocess.Popen[bytes]:
        if self.proc is None:
            raise RuntimeError(f"the node in {self.data_dir} was never started")
        return self.proc

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        return self._running_proc().pid

    @property
    def returncode(self) -> int | None:
        """The exit code once the process has ended, else None."""
        return self._running_proc().poll()

    # -- what the node published ----------------------------------------------------------

    def _field(self, key: str) -> Any:
        if key not in self.info:
            raise RuntimeError(f"the node in {self.data_dir} has not come up (no {key} yet)")
        return self.info[key]

    @property
    def peer_id(self) -> str:
        return self._field("peer_id")

    @property
    def addrs(self) -> list[str]:
        """Listen multiaddrs, each ending in ``/p2p/<peer id>``."""
        return list(self._field("addrs"))

    @property
    def addr(self) -> str:
        """The first listen multiaddr: what another node bootstraps from."""
        return self.addrs[0]

    @property
    def api(self) -> str:
        """The local API's base URL, ``http://127.0.0.1:PORT``."""
        return self._field("api")

    @property
    def status_url(self) -> str:
        """The status page's URL with the admin token (as ``poolai node url`` prints it),
        or without one where the token cannot be read."""
        token = read_token(self.data_dir)
        return f"{self.api}/#token={token}" if token else f"{self.api}/"

    @property
    def api_socket(self) -> str | None:
        return self.info.get("api_socket")

    # -- output -----------------------------------------------------------------------------

    @property
    def output(self) -> list[str]:
        """The lines this run has written to stdout and stderr so far."""
        try:
            with self.log_file.open("rb") as log:
                log.seek(self._log_from)
                data = log.read()
        except OSError:
            return []
        return data.decode(errors="replace").splitlines()

    def log(self, lines: int = 60) -> str:
        """The last ``lines`` lines of :attr:`output`, for error messages."""
        return "\n".join(self.output[-lines:])

    # -- the local API ----------------------------------------------------------------------

    def get(self, path: str, timeout: float = 5.0) -> Any:
        """GET ``path`` from the node's API (no admin token); the decoded JSON."""
        response = httpx.get(self.api + path, timeout=timeout)
        response.raise_for_status()
        return response.json()

    def status(self) -> dict[str, Any]:
        return self.get("/api/status")

    def connected(self) -> set[str]:
        """Peer ids the node has a connection to."""
        return {p["peer_id"] for p in self.status()["peers"]}


def stop_all(nodes: Iterable[NodeProcess], timeout: float = 10.0) -> None:
    """SIGTERM every running node at once, then wait for each; SIGKILL what is left after
    ``timeout`` seconds. For clean-up: never raises for a node that was never started."""
    started = [n for n in nodes if n.proc is not None]
    for node in started:
        if node.alive:
            node.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    deadline = time.monotonic() + timeout
    for node in started:
        try:
            node.proc.wait(timeout=max(0.0, deadline - time.monotonic()))  # type: ignore[union-attr]
        except subprocess.TimeoutExpired:
            node.kill()


def wait_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    """Poll ``condition`` until it holds; AssertionError naming ``what`` after ``timeout``
    seconds. A condition that raises an HTTP, OS or decoding error counts as not yet."""
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
