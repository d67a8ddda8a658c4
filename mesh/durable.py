"""Durable, atomic replacement of a small file: the one way PoolAI writes state to disk.

A reader sees either the old content or the new, never a mix, and once
:func:`write_atomic` returns the new content survives power loss:

1. write to a temporary file with a unique name in the same directory (same
   file system, so the rename is atomic; unique, so two writers of one path
   never truncate or rename each other's temporary file),
2. fsync the file, 3. rename it over the target, 4. fsync the directory so the
   rename itself is on disk.

On any failure the temporary file is removed and the target is untouched.
Two concurrent writers of one path both succeed; the last rename wins.

Lives in mesh, the lowest layer, so the node identity can use it too.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

TEMP_SUFFIX = ".tmp"


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600, overwrite: bool = True) -> None:
    """Make ``path`` hold exactly ``data`` (file permissions ``mode``), atomically and durably.

    With ``overwrite=False`` the file is only created: FileExistsError when ``path``
    already exists (the first of several concurrent creators wins). Raises OSError
    from the file system; ``path``'s directory must exist.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}{TEMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have narrowed the mode os.open applied
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # FileExistsError when another writer got there first
            os.unlink(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Flush ``directory``'s entries (a rename or a new name in it) to disk."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
