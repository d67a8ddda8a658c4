"""The storage layer's error tree.

Three families, kept apart on purpose:

* ``ManifestError`` and ``PeerError``: something *outside* us is wrong (bytes
  that are not a valid manifest, a peer that failed, refused, timed out or
  sent a share whose hash does not match). Contain it and route around it.
* ``StoreError`` subclasses: the local share store said no (quota, missing
  share, a value that rotted on disk). The share protocol server turns these
  into error replies.
* ``NotEnoughShares``, ``PutFailed``, ``FileChanged``: a whole put, get or
  repair could not reach its goal; the caller (CLI, node) reports it.

Argument misuse by our own code raises ``ValueError``/``TypeError`` and is
never caught here. Third-party exceptions (lmdb, msgpack) are translated in
exactly one place each: ``store.py`` and ``manifest.py``.
"""

from __future__ import annotations


class StorageError(Exception):
    """Base class of every error the storage layer raises on purpose."""


class ManifestError(StorageError):
    """Bytes that claim to be a manifest are malformed, oversized, non-canonical or inconsistent."""


class PeerError(StorageError):
    """A peer could not serve a share request: unreachable, refused, protocol fault or missing.

    ``ShareTransport`` implementations raise this (and only this) for every
    fault of the remote side, so that ``raid`` can try another holder; a
    transport that raises anything else is reporting a bug and crashes the
    operation.
    """


class ShareMissing(PeerError):
    """A peer answered that it holds no share under the id asked for. A read or a repair
    walks past peers that never held the share (or hold it no longer), so this is an
    ordinary answer there, not a fault of the peer."""


class StoreError(StorageError):
    """The local share store refused or failed an operation."""


class QuotaExceeded(StoreError):
    """Storing the share would take the store over its byte quota; nothing was written."""


class GrantExceeded(StoreError):
    """The peer storing the share is over what this holder grants it (``storage.grants``);
    nothing was written."""


class StoreWriteFailed(StoreError):
    """The disk under the share store failed a write (full, or an I/O error); nothing
    was written. LMDB reports a full disk at commit, often as EIO rather than ENOSPC."""


class ShareNotFound(StoreError, KeyError):
    """The store holds no share under this id."""


class ShareCorrupted(StoreError):
    """A stored value no longer hashes to its id; it has been deleted and counted."""


class ShareHashMismatch(StoreError):
    """A share offered for storage does not hash to the id it was offered under."""


class NotEnoughShares(StorageError):
    """Fewer than k valid shares of a segment (or no valid manifest copy) could be fetched."""


class PutFailed(StorageError):
    """A put could not place enough shares (or manifest copies) to meet its redundancy goal."""


class FileChanged(StorageError):
    """The file being uploaded changed between hashing and sending."""
