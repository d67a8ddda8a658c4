"""Build a :class:`~natlib.topology.Topology` in network namespaces, and take it down.

Needs root, ``ip`` (iproute2) and ``iptables`` (Debian's default, nf_tables-backed
``iptables-nft``). Every namespace is named ``natlab-<pid>-<4 hex>-...``: two labs never
share a name, and :func:`remove_stale` can tell a dead lab's namespaces from a live
one's. :func:`open_network` removes every namespace it made (and with them every veth,
bridge and rule) on the way out, also after an error or Ctrl-C; processes still
inside them are killed first, since a namespace with a process in it outlives its name.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence

from natlib.classify import Socket, parse_ss
from natlib.topology import Topology, plan

NAME_ROOT = "natlab-"
_NAME = re.compile(r"^natlab-(\d+)-[0-9a-f]{4}-")


class LabError(RuntimeError):
    """A command that builds or reads the lab failed; the message quotes it."""


def missing_tools() -> str | None:
    """Why this machine cannot build a lab (not root, no ip or iptables), or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and iptables)"
    absent = [tool for tool in ("ip", "iptables", "ss") if shutil.which(tool) is None]
    if absent:
        return f"needs {', '.join(absent)} (apt-get install iproute2 iptables)"
    return None


def new_prefix() -> str:
    """A namespace name prefix no other lab uses."""
    return f"{NAME_ROOT}{os.getpid()}-{secrets.token_hex(2)}-"


def sh(argv: Sequence[str], timeout: float = 30.0) -> str:
    """Run ``argv``; its stdout. LabError with its stderr when it fails."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{' '.join(argv)}: no answer in {timeout:g} s") from exc
    if done.returncode != 0:
        raise LabError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def in_ns(namespace: str) -> list[str]:
    """The prefix that runs a command inside ``namespace`` (it execs, keeping the pid)."""
    return ["ip", "netns", "exec", namespace]


def namespaces() -> list[str]:
    """Every named network namespace on this machine."""
    return [line.split()[0] for line in sh(["ip", "netns", "list"]).splitlines() if line.strip()]


def remove(names: Sequence[str]) -> None:
    """Kill what runs in each namespace, then delete it; never raises for one already gone.
    Ctrl-C and SIGTERM wait until this is done."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        for name in names:
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout
            for pid in pids.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def remove_stale() -> list[str]:
    """Delete the namespaces of labs whose process has died (a SIGKILLed run); their names."""
    stale = []
    for name in namespaces():
        match = _NAME.match(name)
        if match and not _alive(int(match.group(1))):
            stale.append(name)
    remove(stale)
    return stale


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def open_network(topo: Topology, keep: bool = False) -> Iterator[Topology]:
    """Build ``topo``; on leaving, delete every namespace made (unless ``keep``: then they
    stay for debugging, and ``ip netns del`` of each, or the next lab, removes them)."""
    made: list[str] = []
    try:
        for name in topo.namespaces:
            sh(["ip", "netns", "add", name])
            made.append(name)
        for cmd in plan(topo):
            sh(cmd)
        yield topo
    finally:
        if keep:
            print(f"kept {len(made)} namespaces: {' '.join(made)}", file=sys.stderr)
        else:
            remove(list(reversed(made)))


def established(namespace: str) -> list[Socket]:
    """The TCP connections established in ``namespace``."""
    return parse_ss(sh(in_ns(namespace) + ["ss", "-Hnt", "state", "established"]))


_CONNECT = """
import socket, sys
s = socket.socket()
s.settimeout(float(sys.argv[3]))
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
except socket.timeout:
    print("timeout")
except OSError as exc:
    print(type(exc).__name__)
else:
    print("connected")
"""


def tcp_connect(namespace: str, host: str, port: int, timeout: float = 3.0) -> str:
    """Open a plain TCP connection from inside ``namespace``: ``"connected"``,
    ``"timeout"`` (dropped) or the error's name (``ConnectionRefusedError`` ...)."""
    return sh(in_ns(namespace) + [sys.executable, "-c", _CONNECT, host, str(port), str(timeout)],
              timeout=timeout + 30).strip()
