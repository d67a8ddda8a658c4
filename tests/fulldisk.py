"""A small disk that fills: a tmpfs mounted for one test, so a write meets a real ENOSPC
(or LMDB's EIO on a full tmpfs), as a volunteer's full disk would give it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def small_disk(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (mount's notation: "1m") at ``where``/disk, unmounted after the
    block; skips the test where none can be mounted (not Linux, not root)."""
    if sys.platform != "linux":
        pytest.skip("needs Linux tmpfs")
    disk = where / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
