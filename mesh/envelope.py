"""Signed envelopes: bytes signed in a role by a key that is bound to a peer id.

Capacity adverts (:mod:`poolai.mesh.adverts`) and credit receipts
(:mod:`poolai.node.credits.receipts`) travel the same way: a ``body`` (the msgpack
of one message, exactly as its signer encoded it) next to one or more
(public key, signature) pairs, one per signing :class:`Role`. What a role signs is
``role.domain + body``: the domain string names the message kind and the signer's
part in it (``b"poolai/capacity/advert/1\\x00"``, ``b"poolai/credits/receipt/payer/1\\x00"``),
so a signature given for one purpose can never be replayed as another. The bytes are
signed, not a re-encoding of decoded fields, so a verifier never reproduces the
signer's encoder, and a body need not be parsed before its signature holds.

A key speaks for a peer only if it is the key the peer id is derived from
(:func:`peer_id_from_public_key`: libp2p's identity multihash of the protobuf-framed
Ed25519 key); a message that names its author must name the signing key's peer.

Everything here is pure. Failures raise :class:`SealRejected` with a ``reason`` of
:data:`REASONS`; each envelope maps them onto its own rejection reasons.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from poolai.mesh import base58
from poolai.mesh.errors import Rejected

KEY_LEN = 32  # a raw Ed25519 public key
SIG_LEN = 64  # an Ed25519 signature
REASONS = ("bad_key", "bad_signature", "key_mismatch")

# libp2p's protobuf PublicKey{Type: Ed25519, Data: <32 bytes>} header, and the
# identity-multihash header (code 0x00, length 36) a peer id wraps it in.
_ED25519_PROTO_PREFIX = b"\x08\x01\x12\x20"
_IDENTITY_MULTIHASH_PREFIX = b"\x00\x24"


class SealRejected(Rejected, reasons=REASONS):
    """A signature in an envelope does not hold; ``reason`` is one of :data:`REASONS`."""


def peer_id_from_public_key(public_key: bytes) -> str:
    """The libp2p peer id (base58) of a raw 32-byte Ed25519 public key."""
    if len(public_key) != KEY_LEN:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return base58.encode(_IDENTITY_MULTIHASH_PREFIX + _ED25519_PROTO_PREFIX + public_key)


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A node's Ed25519 key as envelopes need it: ``sign(bytes) -> 64-byte signature``."""

    peer_id: str
    public_key: bytes
    sign: Callable[[bytes], bytes] = field(repr=False)


@dataclass(frozen=True, slots=True)
class Role:
    """One way of signing a body: ``domain`` is prepended to the body before signing."""

    name: str  # for messages: "advert", "earner", "payer"
    domain: bytes

    def sign(self, body: bytes, key: SigningKey) -> bytes:
        """``key``'s signature of ``body`` in this role; ValueError if the key is not its peer's."""
        if key.peer_id != peer_id_from_public_key(key.public_key):
            raise ValueError(f"{self.name} key does not belong to its peer id")
        return key.sign(self.domain + body)

    def verify(self, body: bytes, public_key: bytes, signature: bytes,
               peer_id: str | None = None) -> None:
        """Check one signature of ``body``, and with ``peer_id`` that the key is that peer's.

        Checks run cheapest first: lengths, the key's peer id, then Ed25519.
        Raises :class:`SealRejected`.
        """
        if len(public_key) != KEY_LEN:
            raise SealRejected("bad_key", f"{self.name} public key of {len(public_key)} bytes")
        if len(signature) != SIG_LEN:
            raise SealRejected("bad_signature", f"{self.name} signature of {len(signature)} bytes")
        if peer_id is not None and peer_id_from_public_key(public_key) != peer_id:
            raise SealRejected("key_mismatch", f"{self.name} key is not {peer_id}'s")
        # Imported here: building and printing adverts (scripts/gpu_inventory.py on a
        # bare GPU host) needs no cryptography, only verifying does.
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            Ed25519PublicKey.from_public_bytes(public_key).verify(signature, self.domain + body)
        except InvalidSignature:
            raise SealRejected("bad_signature", f"{self.name} signature does not match") from None
        except ValueError as exc:
            raise SealRejected("bad_key", str(exc)) from None
