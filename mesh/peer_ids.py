"""Peer ids as text (base58, what people and the API see) and as raw multihash bytes
(what the wire carries and the overlay hashes onto the ring)."""

from __future__ import annotations

from libp2p.peer.id import ID

__all__ = ["peer_id_bytes", "peer_id_text"]


def peer_id_bytes(peer_id: str) -> bytes:
    """The raw multihash bytes of a base58 peer id (what the overlay hashes onto the ring)."""
    try:
        return ID.from_base58(peer_id).to_bytes()
    except Exception as exc:
        raise ValueError(f"not a valid peer id {peer_id!r}: {exc}") from None


def peer_id_text(raw: bytes) -> str:
    """The base58 form of raw peer id bytes; ValueError for bytes that are no multihash."""
    # identity (0x00) multihash for Ed25519 keys, sha2-256 (0x12, 32 bytes) for larger keys
    if len(raw) < 3 or raw[0] not in (0x00, 0x12) or raw[1] != len(raw) - 2:
        raise ValueError("not a peer id multihash")
    return ID(raw).to_base58()
