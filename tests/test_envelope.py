"""The signed envelope both adverts and receipts use: roles, domain separation, key binding."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from poolai.mesh.adverts import AdvertRejected
from poolai.mesh.envelope import Role, SealRejected, SigningKey, peer_id_from_public_key
from poolai.mesh.errors import ProtocolError

A = Role("a", b"poolai/test/a/1\x00")
B = Role("b", b"poolai/test/b/1\x00")


def key(seed: int) -> SigningKey:
    private = Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
    public = private.public_key().public_bytes_raw()
    return SigningKey(peer_id_from_public_key(public), public, private.sign)


def reason(role: Role, body: bytes, public_key: bytes, signature: bytes, peer: str | None) -> str:
    with pytest.raises(SealRejected) as info:
        role.verify(body, public_key, signature, peer)
    return info.value.reason


def test_a_signature_holds_for_its_role_body_and_peer_only():
    signer, other = key(1), key(2)
    sig = A.sign(b"body", signer)
    A.verify(b"body", signer.public_key, sig, signer.peer_id)
    A.verify(b"body", signer.public_key, sig)  # binding checked later by the caller
    assert reason(B, b"body", signer.public_key, sig, None) == "bad_signature"  # domain separation
    assert reason(A, b"bodY", signer.public_key, sig, None) == "bad_signature"
    assert reason(A, b"body", signer.public_key, sig, other.peer_id) == "key_mismatch"
    assert reason(A, b"body", signer.public_key[:31], sig, None) == "bad_key"
    assert reason(A, b"body", signer.public_key, sig[:63], None) == "bad_signature"


def test_a_key_signs_only_for_its_own_peer_id():
    signer, other = key(1), key(2)
    with pytest.raises(ValueError, match="does not belong"):
        A.sign(b"body", SigningKey(other.peer_id, signer.public_key, signer.sign))


def test_each_rejection_carries_a_reason_of_its_own_kind():
    err = SealRejected("key_mismatch", "not the signer's key")
    assert isinstance(err, ProtocolError)
    assert (err.reason, err.detail) == ("key_mismatch", "not the signer's key")
    assert str(err) == "key_mismatch: not the signer's key"
    assert "stale" in AdvertRejected.reasons and "stale" not in SealRejected.reasons
    with pytest.raises(AssertionError):
        SealRejected("stale", "an advert's reason, not an envelope's")
