"""The files a node looks after: those it put into the mesh and those its owner pinned.

One directory, two files per file id (hex)::

    <id>.manifest   the manifest bytes (verified against the id when loaded)
    <id>.json       {"pinned": bool, "lease_expiry": unix seconds, "added": unix seconds,
                     "name": what the file is to its owner (optional, "" when absent)}

Each file is written through :func:`poolai.mesh.durable.write_atomic`, so a crash
leaves either the old or the new version. Entries whose manifest does not
hash to their name are skipped with a warning when loading.

The quota set at run time (:func:`save_quota`) lives beside the directory in
``quota.json``: ``{"v": 1, "quota": bytes, "configured": bytes}``, where
``configured`` is the ``storage_quota`` it overrode; :func:`load_quota`
honours it only while that configured value is unchanged. ``audits.msgpack`` holds
the audits not yet claimed for (:mod:`poolai.node.files.audits`), saved after
each upkeep pass.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from poolai.mesh.durable import write_atomic
from poolai.node.files.audits import AuditLedger
from poolai.storage import integrity
from poolai.storage import manifest as manifest_mod
from poolai.storage.errors import ManifestError
from poolai.storage.manifest import Manifest

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class FileEntry:
    """One looked-after file."""

    file_id: bytes
    manifest: Manifest
    pinned: bool
    lease_expiry: int
    added: int
    name: str = ""  # what it is to the owner ("inputs.safetensors", "output of job ..."); may be ""


MAX_NAME = 120


class FileRegistry:
    """The looked-after files in ``path``. Blocking: async callers use a worker thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: dict[bytes, FileEntry] = {}

    def load(self) -> int:
        """Read every entry from disk; returns how many loaded."""
        self.path.mkdir(parents=True, exist_ok=True)
        for meta_path in sorted(self.path.glob("*.json")):
            try:
                file_id = integrity.from_hex(meta_path.stem)
                blob = (self.path / f"{meta_path.stem}.manifest").read_bytes()
                if integrity.file_id(blob) != file_id:
                    raise ManifestError("manifest does not hash to its file id")
                meta = json.loads(meta_path.read_text())
                entry = FileEntry(file_id, manifest_mod.decode(blob), bool(meta["pinned"]),
                                  int(meta["lease_expiry"]), int(meta["added"]),
                                  str(meta.get("name", ""))[:MAX_NAME])
            except (OSError, ValueError, KeyError, TypeError, ManifestError) as exc:
                log.warning("skipping unreadable file entry %s: %s", meta_path.name, exc)
                continue
            self._entries[file_id] = entry
        return len(self._entries)

    def get(self, file_id: bytes) -> FileEntry | None:
        return self._entries.get(file_id)

    def entries(self) -> list[FileEntry]:
        return list(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, entry: FileEntry) -> None:
        """Add or replace an entry (manifest first, so a listed entry always has one)."""
        name = integrity.to_hex(entry.file_id)
        if entry.file_id not in self._entries:
            write_atomic(self.path / f"{name}.manifest", entry.manifest.encode())
        meta = {"pinned": entry.pinned, "lease_expiry": entry.lease_expiry, "added": entry.added,
                "name": entry.name[:MAX_NAME]}
        write_atomic(self.path / f"{name}.json", json.dumps(meta).encode())
        self._entries[entry.file_id] = entry

    def remove(self, file_id: bytes) -> None:
        name = integrity.to_hex(file_id)
        for suffix in (".json", ".manifest"):  # listing file first: no entry without a manifest
            try:
                (self.path / f"{name}{suffix}").unlink()
            except FileNotFoundError:
                pass
        self._entries.pop(file_id, None)


AUDITS_FILE = "audits.msgpack"


def save_audit_ledger(path: Path, ledger: AuditLedger) -> None:
    """Keep the audits not yet claimed for (atomically): a restart must not lose an hour."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, ledger.to_bytes())


def load_audit_ledger(path: Path, me: bytes) -> AuditLedger:
    """The saved ledger; an empty one when there is none or it cannot be read (logged)."""
    try:
        return AuditLedger.from_bytes(me, path.read_bytes())
    except FileNotFoundError:
        return AuditLedger(me)
    except (OSError, ValueError) as exc:
        log.warning("storage: %s unreadable, audits start afresh: %s", path.name, exc)
        return AuditLedger(me)


QUOTA_FILE = "quota.json"


def save_quota(path: Path, quota: int, configured: int) -> None:
    """Record a quota set at run time over the ``configured`` one (atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps({"v": 1, "quota": quota, "configured": configured}).encode())


def load_quota(path: Path, configured: int, ceiling: int) -> int:
    """The saved quota while ``configured`` is what it overrode (at most ``ceiling``), else
    ``configured``. A missing or unreadable record means ``configured``."""
    try:
        saved = json.loads(path.read_text())
        quota, base = saved["quota"], saved["configured"]
    except FileNotFoundError:
        return configured
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return configured
    if base != configured or not isinstance(quota, int) or isinstance(quota, bool) or quota < 1 << 20:
        return configured
    return min(quota, ceiling)
