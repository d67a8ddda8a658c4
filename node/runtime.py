"""The files a running node keeps in its data directory for the tools on this machine.

``node.json`` (:data:`RUNTIME_FILE`) is written once the node is up: its pid, peer id,
listen addresses, the local API's URL and Unix socket. The CLI, the test launcher and
the scripts read it (:func:`read_runtime_file`) instead of scraping the node's output.
``node.lock`` is held (flock) for as long as the node runs, so a second node refuses
to start on the same directory (:func:`lock_data_dir`).
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

from poolai.node.config import ConfigError

RUNTIME_FILE = "node.json"
LOCK_FILE = "node.lock"  # flock()ed by the node running in the directory
API_SOCKET = "api.sock"  # the local API's Unix socket, for the CLI (see poolai.node.web.server)


def lock_data_dir(data_dir: Path) -> int:
    """Hold ``data_dir`` for this node (an open descriptor; closing it, or the process
    ending in any way, lets go). ConfigError when another node holds it: two nodes on one
    directory would share an identity, stores and the API socket."""
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        info = read_runtime_file(data_dir) or {}
        raise ConfigError(f"another node is running in {data_dir} (pid {info.get('pid', '?')})") from None
    return fd


def read_runtime_file(data_dir: Path) -> dict[str, Any] | None:
    """What a running node in ``data_dir`` published about itself, or None."""
    try:
        info = json.loads((data_dir / RUNTIME_FILE).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None
