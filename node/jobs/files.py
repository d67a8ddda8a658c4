"""Where a job's files live: the storage seam of the jobs service, and a cache in front of it.

Programs, inputs and outputs are files in burst-RAID storage, named by id (64 hex digits,
the hash of the file's manifest). :class:`Files` is all the jobs code needs of storage;
:class:`StorageFiles` adapts the node's storage service to it (its errors become
:class:`FileTransferError` here, and nowhere else), and :class:`CachedFiles` keeps what a
worker fetched so that jobs sharing weights skip the fetch.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import trio

from poolai.mesh.errors import MeshError
from poolai.mesh.short_ids import short_id
from poolai.storage import integrity
from poolai.storage.erasure import DEFAULT_PARAMS
from poolai.storage.errors import StorageError

if TYPE_CHECKING:
    from poolai.node.files.service import StorageService

FILE_ID = re.compile(r"[0-9a-f]{64}")


class FileTransferError(MeshError):
    """A file could not be put into or got from storage (holders unreachable, shares lost)."""


class Files(Protocol):
    """Where programs, inputs and outputs live: burst-RAID storage, by file id (hex)."""

    async def put(self, path: Path, name: str = "") -> str:
        """Store the file at ``path``; return its id. ``name`` says what it is (on the status
        page). Raises FileTransferError or OSError."""
        ...

    async def get(self, file_id: str, path: Path) -> None:
        """Write the file ``file_id`` to ``path``. Raises FileTransferError or OSError."""
        ...


class CachedFiles:
    """A :class:`Files` that keeps what it fetched, by id, up to ``max_bytes`` (least recently used
    first out). A storage id is the hash of the file's manifest, so it names immutable content:
    a cached copy *is* the file. Jobs that share weights then skip the fetch.
    """

    def __init__(self, inner: Files, directory: Path, max_bytes: int = 1 << 30) -> None:
        self.inner = inner
        self.dir = directory
        self.max_bytes = max_bytes
        self.hits = self.misses = 0
        self._order: OrderedDict[str, int] | None = None  # file id -> size, least recent first

    async def put(self, path: Path, name: str = "") -> str:
        return await self.inner.put(path, name)

    async def get(self, file_id: str, path: Path) -> None:
        if FILE_ID.fullmatch(file_id) is None:
            raise FileTransferError(f"not a file id: {file_id[:80]!r}")
        if self._order is None:
            self._order = await trio.to_thread.run_sync(self._scan)
        cached = self.dir / file_id
        if file_id in self._order and await trio.to_thread.run_sync(_link_cached, cached, path):
            self._order.move_to_end(file_id)
            self.hits += 1
            return
        self.misses += 1
        part = self.dir / f"{file_id}.{secrets.token_hex(6)}.part"
        try:
            await self.inner.get(file_id, part)
            size = await trio.to_thread.run_sync(self._keep, file_id, part, path)
        finally:
            await trio.to_thread.run_sync(lambda: part.unlink(missing_ok=True))
        if size is None:
            return
        self._order[file_id] = size
        self._order.move_to_end(file_id)
        evict = []
        while sum(self._order.values()) > self.max_bytes:
            evict.append(self._order.popitem(last=False)[0])
        for oldest in evict:
            await trio.to_thread.run_sync(lambda p=self.dir / oldest: p.unlink(missing_ok=True))

    def _scan(self) -> OrderedDict[str, int]:
        self.dir.mkdir(parents=True, exist_ok=True)
        found = []
        for entry in self.dir.iterdir():
            if entry.name.endswith(".part"):
                entry.unlink(missing_ok=True)  # left by a crash
            elif FILE_ID.fullmatch(entry.name):
                st = entry.stat()
                found.append((st.st_mtime_ns, entry.name, st.st_size))
        return OrderedDict((name, size) for _, name, size in sorted(found))

    def _keep(self, file_id: str, part: Path, path: Path) -> int | None:
        """Move a fetched file into the cache and link it to ``path``; its size, None if too big."""
        size = part.stat().st_size
        if size > self.max_bytes:
            os.replace(part, path)
            return None
        os.chmod(part, 0o444)  # shared by hard links with job directories: nobody writes it
        os.replace(part, self.dir / file_id)
        _link_cached(self.dir / file_id, path)
        return size


def _link_cached(cached: Path, path: Path) -> bool:
    """Give ``path`` the cached file's content (a hard link, else a copy); False if not cached."""
    try:
        os.utime(cached)  # recently used
        try:
            os.link(cached, path)
        except OSError:
            shutil.copyfile(cached, path)
        return True
    except FileNotFoundError:
        return False


class StorageFiles:
    """The node's storage service as :class:`Files` (None: a node that stores nothing,
    whose every transfer fails with FileTransferError)."""

    def __init__(self, storage: StorageService | None) -> None:
        self.storage = storage

    def _storage(self) -> StorageService:
        if self.storage is None:
            raise FileTransferError("this node runs no storage service")
        return self.storage

    async def put(self, path: Path, name: str = "") -> str:
        try:
            outcome = await self._storage().put(path, params=DEFAULT_PARAMS, name=name)
        except StorageError as exc:
            raise FileTransferError(f"storage put failed: {exc}") from None
        return str(integrity.to_hex(outcome.file_id))

    async def get(self, file_id: str, path: Path) -> None:
        try:
            await self._storage().get(integrity.from_hex(file_id), path)
        except StorageError as exc:
            raise FileTransferError(f"storage get of {short_id(file_id)} failed: {exc}") from None
