"""Content addresses: share ids, file ids and audit digests.

Everything here is sha256 and pure. The raw 32-byte digest is the id used in
code, on disk and on the wire; hex is only for people (logs, CLI, URLs).

* share id = sha256(share bytes). A share is its own address, so any holder,
  reader or repairer can check a share against the manifest's list without
  trusting whoever sent it.
* file id = sha256(manifest bytes). The manifest lists every share id, so the
  file id transitively authenticates every byte of the file.
* audit digest = sha256(tag || nonce || share[offset:offset+length]): a holder
  proves it still has a range of a share without shipping it.
"""

from __future__ import annotations

import hashlib

HASH_SIZE = 32
AUDIT_NONCE_SIZE = 32
_AUDIT_TAG = b"poolai-audit-v1\x00"

Buffer = bytes | bytearray | memoryview


def share_id(data: Buffer) -> bytes:
    """Return the content address of a share: its sha256 digest (32 bytes)."""
    return hashlib.sha256(data).digest()


def file_id(manifest_bytes: Buffer) -> bytes:
    """Return the id of a file: the sha256 of its encoded manifest (32 bytes)."""
    return hashlib.sha256(manifest_bytes).digest()


def matches(expected_id: bytes, data: Buffer) -> bool:
    """True when ``data`` hashes to ``expected_id``."""
    return hashlib.sha256(data).digest() == expected_id


def audit_digest(nonce: bytes, data: Buffer) -> bytes:
    """Digest that proves possession of ``data`` (a share range) for a challenger's ``nonce``.

    Raises ValueError when the nonce is not ``AUDIT_NONCE_SIZE`` bytes: a short
    nonce would let a holder precompute answers.
    """
    if len(nonce) != AUDIT_NONCE_SIZE:
        raise ValueError(f"audit nonce must be {AUDIT_NONCE_SIZE} bytes, got {len(nonce)}")
    h = hashlib.sha256(_AUDIT_TAG)
    h.update(nonce)
    h.update(data)
    return h.digest()


def check_id(value: object, what: str = "id") -> bytes:
    """Return ``value`` if it is a 32-byte ``bytes`` id, else raise TypeError/ValueError."""
    if type(value) is not bytes:
        raise TypeError(f"{what} must be bytes, got {type(value).__name__}")
    if len(value) != HASH_SIZE:
        raise ValueError(f"{what} must be {HASH_SIZE} bytes, got {len(value)}")
    return value


def to_hex(ident: bytes) -> str:
    """Hex spelling of an id, for logs and the CLI."""
    return ident.hex()


def from_hex(text: str) -> bytes:
    """Parse a hex id typed by a person; raises ValueError if it is not 64 hex digits."""
    try:
        raw = bytes.fromhex(text.strip())
    except ValueError:
        raise ValueError(f"not a hex id: {text!r}") from None
    return check_id(raw)
