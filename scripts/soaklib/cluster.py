"""The soak's node processes and the chaos done to them: crashes, hangs, restarts, a full disk.

:class:`Cluster` starts the mesh (fixed loopback ports, so a restarted node keeps its
address), knows each node's state (up, paused, killed, starting, down) and changes it only
through :meth:`Cluster.set_state`, which bumps the node's generation: a probe that saw a
node up and then no answer can tell a hang from a stop that came meanwhile.
:class:`Tally` counts operations and failures for the report.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from poolai.node.auth import auth_headers
from poolai.node.launcher import NodeProcess, NodeStartError, wait_until

DISK_MIB = 96  # the tmpfs of the holder whose disk fills
DISK_LEFT = 64 << 10  # what the ballast leaves free
ACTIONS = ("kill", "pause", "restart")
ACTION_WEIGHTS = (4, 3, 2)
DOWN_SECONDS = (3.0, 20.0)


class Tally:
    """Operations and failures by kind, and progress lines on stderr."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ops: Counter[str] = Counter()
        self.failures: dict[str, Counter[str]] = defaultdict(Counter)
        self.t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def count(self, kind: str) -> None:
        with self.lock:
            self.ops[kind] += 1

    def fail(self, kind: str, reason: str) -> None:
        with self.lock:
            self.failures[kind][reason[:120]] += 1

    def say(self, message: str) -> None:
        print(f"[{self.now():7.1f}s] {message}", file=sys.stderr, flush=True)

    def report(self) -> dict[str, Any]:
        with self.lock:
            return {"operations": dict(sorted(self.ops.items())),
                    "failures": {kind: {"count": sum(c.values()), "reasons": dict(c.most_common(8))}
                                 for kind, c in sorted(self.failures.items())}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gpu_inventory(gib: int) -> dict[str, Any]:
    return {"gpus": [{"name": f"sim-{gib}G", "memory_total": f"{gib}GiB", "compute_capability": "8.6"}]}


def answer_time(url: str, path: str, deadline: float) -> tuple[float, str | None]:
    """Seconds until ``url + path`` answered (over plain http.client: an httpx client's
    set-up alone can take a loaded core past a second), and what went wrong, if anything."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    start = time.monotonic()
    try:
        connection = http.client.HTTPConnection(host, int(port), timeout=deadline)
        try:
            connection.request("GET", path)
            reply = connection.getresponse()
            reply.read()
            error = None if reply.status == 200 else f"status {reply.status}"
        finally:
            connection.close()
    except (OSError, http.client.HTTPException) as exc:
        error = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
    return time.monotonic() - start, error


def reason_of(exc: BaseException) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.ConnectError):
        return "connect error"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "connection closed mid-response"
    return type(exc).__name__


def reply_reason(reply: httpx.Response) -> str:
    try:
        error = reply.json().get("error")
    except ValueError:
        return f"{reply.status_code}"
    if isinstance(error, dict):
        error = f"{error.get('code')}: {error.get('message', '')}"
    return f"{reply.status_code} {str(error)[:90]}"


class Member:
    """One node of the soak and what the chaos has done to it."""

    def __init__(self, index: int, process: NodeProcess, inventory: Path | None) -> None:
        self.index = index
        self.name = f"n{index}"
        self.process = process
        self.inventory = inventory
        self.state = "down"
        self.generation = 0
        self.disk_full = False


class Cluster:
    """The soak's nodes in ``root``; ``stop`` ends every disturbance early (the end of the
    chaos), after which the disturbed nodes come back."""

    def __init__(self, root: Path, env: Mapping[str, str], tally: Tally, stop: threading.Event) -> None:
        self.root = root
        self.env = dict(env)
        self.tally = tally
        self.stop = stop
        self.lock = threading.Lock()
        self.members: list[Member] = []
        self.disk: Path | None = None  # the mount point of the holder whose disk fills
        self.tmpfs = False
        self.client = httpx.Client(timeout=60, limits=httpx.Limits(max_connections=64))

    # -- state ------------------------------------------------------------------------------

    def set_state(self, m: Member, state: str) -> None:
        with self.lock:
            m.state = state
            m.generation += 1

    def snapshot(self, m: Member) -> tuple[str, int]:
        with self.lock:
            return m.state, m.generation

    def pick(self, rng: random.Random, allowed: Callable[[Member], bool] = lambda m: True) -> Member | None:
        """A random node that is up (and ``allowed``), or None."""
        with self.lock:
            up = [m for m in self.members if m.state == "up" and allowed(m)]
        return rng.choice(up) if up else None

    def down(self) -> int:
        with self.lock:
            return sum(m.state != "up" for m in self.members)

    def http(self, m: Member, method: str, path: str, timeout: float = 60, **kw: Any) -> httpx.Response:
        """A request to ``m``'s API over TCP, with its admin token."""
        return self.client.request(method, m.process.api + path, headers=auth_headers(m.process.data_dir),
                                   timeout=timeout, **kw)

    # -- the mesh ---------------------------------------------------------------------------

    def start(self, count: int) -> None:
        """Start ``count`` nodes bootstrapping from the first and wait for a full mesh.
        Every third node from the second has a simulated GPU; the third node's data
        directory is the disk that fills."""
        disk_index = 2 if count > 3 else count - 1
        for i in range(count):
            data_dir = self.root / f"n{i}"
            if i == disk_index:
                self.disk = self.mount_disk(self.root / f"n{i}-disk")
                data_dir = self.disk / "data"
            inventory = None
            env = dict(self.env)
            if i % 3 == 1:
                inventory = self.root / f"n{i}-inventory.json"
                inventory.write_text(json.dumps(gpu_inventory(24)))
                env["POOLAI_INVENTORY_FILE"] = str(inventory)
            extra = ("--bootstrap", self.members[0].process.addr) if self.members else ()
            process = NodeProcess(data_dir, *extra, env=env, listen=f"/ip4/127.0.0.1/tcp/{free_port()}",
                                  log_file=self.root / f"n{i}.log")
            if i == 0:
                process.start(timeout=120)
            self.members.append(Member(i, process, inventory))
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda m: m.process.start(timeout=180), self.members[1:]))
        for m in self.members:
            self.set_state(m, "up")
        self.wait_whole(f"{count} nodes fully connected")
        anchor = self.members[0].process
        gpus = {m.process.peer_id for m in self.members if m.inventory is not None}
        wait_until(lambda: gpus <= {e["peer_id"] for e in anchor.get("/api/capacity")["entries"]}, 120,
                   "the simulated GPU nodes' adverts at the submitter", interval=1.0)

    def wait_whole(self, what: str) -> None:
        want = len(self.members) - 1
        wait_until(lambda: all(len(m.process.connected()) >= want for m in self.members), 180, what,
                   interval=1.0)

    def mount_disk(self, path: Path) -> Path:
        path.mkdir(parents=True)
        if os.geteuid() == 0:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MIB}m", "tmpfs", str(path)],
                                  capture_output=True, text=True)
            self.tmpfs = done.returncode == 0
            if not self.tmpfs:
                self.tally.say(f"no tmpfs ({done.stderr.strip()}); the disk fills by quota instead")
        return path

    def unmount(self) -> None:
        if self.tmpfs and self.disk is not None:
            subprocess.run(["umount", "-l", str(self.disk)], check=False)

    # -- chaos --------------------------------------------------------------------------------

    def chaos_step(self, rng: random.Random, max_down: int) -> None:
        """Maybe disturb one node, in a thread of its own, if fewer than ``max_down`` are."""
        if self.down() >= max_down:
            return
        action = rng.choices(ACTIONS, ACTION_WEIGHTS)[0]
        if action == "pause":
            victim = self.pick(rng)
        else:  # the submitter keeps its jobs in memory; a full disk holds no new node.json
            victim = self.pick(rng, lambda m: m.index != 0 and not m.disk_full)
        if victim is None:
            return
        self.tally.count(action)
        threading.Thread(target=self.disturb, args=(victim, action, rng.uniform(*DOWN_SECONDS)),
                         daemon=True).start()

    def disturb(self, m: Member, action: str, seconds: float) -> None:
        process = m.process
        if action == "pause":
            self.set_state(m, "paused")
            process.pause()
            self.stop.wait(seconds)
            process.resume()
            self.set_state(m, "up")
            return
        self.set_state(m, "killed")
        if action == "kill":
            process.kill()
            self.stop.wait(seconds)
        else:
            process.stop()
        self.set_state(m, "starting")
        for attempt in range(3):
            try:
                process.start(timeout=120)
                self.set_state(m, "up")
                return
            except NodeStartError as exc:
                self.tally.fail("restart", f"attempt {attempt + 1}: {str(exc).splitlines()[0]}")
        self.set_state(m, "down")

    def disk_member(self) -> Member:
        return next(m for m in self.members if m.process.data_dir.parent == self.disk)

    def fill_disk(self) -> None:
        """Fill the disk holder's tmpfs to its last :data:`DISK_LEFT` bytes (without a
        tmpfs: set its quota to what it holds)."""
        m = self.disk_member()
        self.tally.count("disk_fill")
        m.disk_full = True
        if not self.tmpfs:
            used = self.http(m, "GET", "/api/storage", timeout=10).json()["used_bytes"]
            self.http(m, "POST", "/api/admin/storage/quota", json={"quota": max(used, 1)}, timeout=10)
            return
        assert self.disk is not None
        left = max(0, shutil.disk_usage(self.disk).free - DISK_LEFT)
        with open(self.disk / "ballast", "wb") as f:
            try:
                while left > 0:
                    f.write(b"\0" * min(left, 1 << 20))
                    left -= min(left, 1 << 20)
                f.flush()
            except OSError:  # the node wrote meanwhile: the disk is full all the same
                pass
        self.tally.say(f"{m.name}'s disk filled: {shutil.disk_usage(self.disk).free} bytes free")

    def empty_disk(self, quota: str) -> None:
        """Free the disk again (or give the holder ``quota`` back)."""
        m = self.disk_member()
        if self.tmpfs:
            assert self.disk is not None
            (self.disk / "ballast").unlink(missing_ok=True)
        else:
            self.http(m, "POST", "/api/admin/storage/quota", json={"quota": quota}, timeout=10)
        m.disk_full = False

    def heal(self) -> None:
        """Once :attr:`stop` is set: wait for the disturbed nodes to come back, start any
        that could not, and wait for the mesh to be whole again."""
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and any(
                self.snapshot(m)[0] in ("paused", "killed", "starting") for m in self.members):
            time.sleep(0.5)
        for m in self.members:
            if m.state == "down" or not m.process.alive:
                try:
                    m.process.start(timeout=120)
                    self.set_state(m, "up")
                except NodeStartError as exc:
                    self.tally.fail("restart", f"after the chaos: {str(exc).splitlines()[0]}")
        try:
            self.wait_whole("the mesh whole again")
        except AssertionError as exc:
            self.tally.fail("heal", str(exc))
