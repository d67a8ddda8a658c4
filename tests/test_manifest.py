"""Manifest: canonical encoding, file id, strict decoding of hostile bytes; integrity helpers."""

from __future__ import annotations

import hashlib

import msgpack
import pytest

from poolai.storage import integrity, manifest
from poolai.storage.erasure import ErasureParams
from poolai.storage.errors import ManifestError

PARAMS = ErasureParams(k=2, n=3, segment_size=10)


def sample(size: int = 25) -> manifest.Manifest:
    count = -(-size // 10)
    hashes = b"".join(hashlib.sha256(bytes([i])).digest() for i in range(count * 3))
    return manifest.make_manifest(size, PARAMS, hashes)


def fields(m: manifest.Manifest) -> dict:
    return msgpack.unpackb(m.encode())


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def test_round_trip_and_file_id_is_the_hash_of_the_bytes():
    m = sample()
    data = m.encode()
    assert manifest.decode(data) == m
    assert m.file_id() == integrity.file_id(data)
    assert len(m.file_id()) == 32
    assert fields(m)["v"] == 2


def test_encoding_is_deterministic_and_ordered():
    assert sample().encode() == sample().encode()
    assert list(fields(sample())) == ["v", "size", "k", "n", "seg", "segs", "hashes"]


def test_share_ids_index_the_flat_hash_list():
    m = sample()
    assert m.segment_count == 3
    assert m.share_id(1, 2) == hashlib.sha256(bytes([5])).digest()
    assert m.segment_share_ids(2) == tuple(hashlib.sha256(bytes([i])).digest() for i in (6, 7, 8))
    with pytest.raises(IndexError):
        m.share_id(3, 0)
    with pytest.raises(IndexError):
        m.share_id(0, 3)


def test_empty_file_has_no_shares():
    m = manifest.make_manifest(0, PARAMS, b"")
    assert m.segment_count == 0
    assert manifest.decode(m.encode()) == m


def test_make_manifest_refuses_wrong_hash_count():
    with pytest.raises(ManifestError):
        manifest.make_manifest(25, PARAMS, b"\x00" * 32)


def test_make_manifest_refuses_too_many_shares():
    tiny = ErasureParams(k=1, n=1, segment_size=1)
    size = manifest.MAX_SHARE_HASHES + 1
    with pytest.raises(ManifestError, match="larger segment size"):
        manifest.make_manifest(size, tiny, b"\x00" * 32 * size)


def mutate(**changes) -> bytes:
    obj = fields(sample())
    for key, value in changes.items():
        if value is _DELETE:
            del obj[key]
        else:
            obj[key] = value
    return pack(obj)


_DELETE = object()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not valid msgpack"),
        (b"\xc1", "not valid msgpack"),
        (pack([1, 2, 3]), "not valid msgpack"),  # arrays are not allowed at all
        (pack("manifest"), "must be a msgpack map"),
        (pack({1: 2}), "not valid msgpack"),  # strict_map_key
        (mutate(v=3), "unsupported manifest version 3"),
        (mutate(v=1), r"version 1 \(sha256 share ids\) is from an older release"),
        (mutate(v=True), "no integer version"),
        (mutate(v=_DELETE), "no integer version"),
        (mutate(name="x.bin"), r"unknown \['name'\]"),
        (mutate(k=_DELETE), r"missing \['k'\]"),
        (mutate(k=True), "'k' must be an int"),
        (mutate(size=-1), "size -1 out of range"),
        (mutate(k=4), "bad k=4 n=3"),
        (mutate(n=300), "bad k=2 n=300"),
        (mutate(seg=0), "segment size 0"),
        (mutate(segs=4), "segment count 4 does not match"),
        (mutate(hashes=b"\x00" * 31), "hash list length"),
        (mutate(hashes="text"), "'hashes' must be bin"),
        (sample().encode() + b"\x00", "not valid msgpack"),  # trailing bytes
        (sample().encode()[:-1], "not valid msgpack"),  # truncated
    ],
)
def test_decode_rejects_with_a_clear_error(data, message):
    with pytest.raises(ManifestError, match=message):
        manifest.decode(data)


def test_decode_rejects_reordered_keys():
    obj = fields(sample())
    reordered = dict(reversed(list(obj.items())))
    with pytest.raises(ManifestError, match="not canonical"):
        manifest.decode(pack(reordered))


def test_decode_rejects_non_minimal_integer():
    data = sample().encode()
    # "k" is a positive fixint (0x02); re-spell it as uint8 (0xcc 0x02): same value, other bytes.
    at = data.index(b"\xa1k\x02") + 2
    longer = data[:at] + b"\xcc\x02" + data[at + 1 :]
    assert msgpack.unpackb(longer) == msgpack.unpackb(data)
    with pytest.raises(ManifestError, match="not canonical"):
        manifest.decode(longer)


def test_decode_rejects_oversize_before_parsing():
    with pytest.raises(ManifestError, match="exceeds"):
        manifest.decode(b"\x00" * (manifest.MAX_MANIFEST_SIZE + 1))


def test_decode_requires_bytes():
    with pytest.raises(TypeError):
        manifest.decode(bytearray(sample().encode()))


def test_ids_are_blake3_and_audits_its_keyed_mode():
    # The published BLAKE3 test vectors for the empty input (plain and keyed).
    assert integrity.share_id(b"").hex() == (
        "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262")
    assert integrity.file_id(b"") == integrity.share_id(b"")
    assert integrity.audit_digest(b"whats the Elvish word for friend", b"").hex() == (
        "92b2b75604ed3c761f9d6f62392c8a9227ad0ea3f09573e783f1498a4ed60d26")
    data = bytearray(b"share bytes")
    assert integrity.share_id(memoryview(data)) == integrity.share_id(bytes(data))
    assert integrity.audit_digest(bytes(32), data) != integrity.share_id(data)


def test_integrity_ids_and_audit_digest():
    data = b"share bytes"
    sid = integrity.share_id(data)
    assert integrity.matches(sid, data)
    assert not integrity.matches(sid, b"share bytez")
    nonce = b"n" * integrity.AUDIT_NONCE_SIZE
    assert integrity.audit_digest(nonce, data) != integrity.audit_digest(b"m" * 32, data)
    with pytest.raises(ValueError):
        integrity.audit_digest(b"short", data)
    assert integrity.from_hex(integrity.to_hex(sid)) == sid
    with pytest.raises(ValueError):
        integrity.from_hex("abc")
    with pytest.raises(ValueError):
        integrity.from_hex("zz" * 32)
