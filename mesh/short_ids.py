"""The one short form of an id for people: logs, CLI tables and the status page.

Peer ids, file ids, share ids and receipt ids are shown in full where someone
copies them (``poolai put`` prints the file id, ``poolai node id`` the peer id)
and as their last :data:`SHORT_LEN` characters everywhere else, so the same
peer reads the same in a log line, ``poolai stat`` and the page. The tail, not
the head: every Ed25519 peer id starts "12D3KooW". Pure; no libp2p.
"""

from __future__ import annotations

from poolai.mesh import base58

SHORT_LEN = 8


def short_id(ident: str) -> str:
    """The last :data:`SHORT_LEN` characters of ``ident`` (base58 peer id, hex file id ...)."""
    return ident[-SHORT_LEN:]


def short_hex(raw: bytes) -> str:
    """:func:`short_id` of raw id bytes shown as hex (file, share, receipt and claim ids)."""
    return short_id(raw.hex())


def short_peer(raw: bytes) -> str:
    """:func:`short_id` of raw peer id bytes, as their base58 text (what people see) ends.
    Bytes that are no peer id multihash (tests' fakes) are shown by their hex."""
    if len(raw) >= 3 and raw[0] in (0x00, 0x12) and raw[1] == len(raw) - 2:
        return short_id(base58.encode(raw))
    return short_hex(raw)


__all__ = ["SHORT_LEN", "short_hex", "short_id", "short_peer"]
