"""The manifest: everything needed to find, check and rebuild a file; its hash is the file id.

Byte layout (version 2): one msgpack map, keys in exactly this order, every
integer in msgpack's shortest form (what ``msgpack.packb`` writes)::

    "v"      uint  format version, 2
    "size"   uint  file size in bytes, < 2**63
    "k"      uint  shares needed per segment, 1 <= k <= n
    "n"      uint  shares per segment, n <= 256
    "seg"    uint  segment size in bytes, 1 .. 16 MiB
    "segs"   uint  segment count, must equal ceil(size / seg)
    "hashes" bin   segs * n * 32 bytes: BLAKE3 of share (s, i) at offset (s*n + i)*32

The share hashes are a flat list, not a Merkle tree: a reader needs every hash
anyway to fetch the whole file, a flat list needs no proofs on the wire or on
disk, and at 4-of-10 with 4 MiB segments it costs 80 KiB per GiB of file.
The cap (``MAX_SHARE_HASHES``) bounds a manifest at about 8 MiB.

Decoding is strict: size bounds before parsing, msgpack limits while parsing,
exact key set, exact types (a bool is not an int), ranges, consistency, and a
canonical re-encode that must reproduce the input byte for byte, so a file
has exactly one manifest encoding and therefore exactly one file id.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

from poolai.storage import erasure, integrity
from poolai.storage.errors import ManifestError

VERSION = 2  # 1 was the same layout with sha256 ids; its files are not readable here
MAX_SHARE_HASHES = 1 << 18  # segs * n; 8 MiB of hashes
MAX_FILE_SIZE = (1 << 63) - 1
MAX_MANIFEST_SIZE = MAX_SHARE_HASHES * integrity.HASH_SIZE + 256
_KEYS = ("v", "size", "k", "n", "seg", "segs", "hashes")


@dataclass(frozen=True, slots=True)
class Manifest:
    """A decoded, validated manifest. Build one with :func:`make_manifest` or :func:`decode`."""

    size: int
    k: int
    n: int
    segment_size: int
    segment_count: int
    share_hashes: bytes
    version: int = VERSION

    @property
    def params(self) -> erasure.ErasureParams:
        """The erasure parameters this file was encoded with."""
        return erasure.ErasureParams(self.k, self.n, self.segment_size)

    def encode(self) -> bytes:
        """The canonical bytes of this manifest (what is stored and hashed)."""
        return msgpack.packb(
            {
                "v": self.version,
                "size": self.size,
                "k": self.k,
                "n": self.n,
                "seg": self.segment_size,
                "segs": self.segment_count,
                "hashes": self.share_hashes,
            },
            use_bin_type=True,
        )

    def file_id(self) -> bytes:
        """BLAKE3 of :meth:`encode` (32 raw bytes). Computed on each call: keep the result."""
        return integrity.file_id(self.encode())

    def share_id(self, seg: int, index: int) -> bytes:
        """The expected id (BLAKE3) of share ``index`` of segment ``seg``."""
        if not (0 <= seg < self.segment_count and 0 <= index < self.n):
            raise IndexError(f"share ({seg}, {index}) out of range")
        at = (seg * self.n + index) * integrity.HASH_SIZE
        return self.share_hashes[at : at + integrity.HASH_SIZE]

    def segment_share_ids(self, seg: int) -> tuple[bytes, ...]:
        """The n expected share ids of segment ``seg``, by share index."""
        return tuple(self.share_id(seg, i) for i in range(self.n))

    def segment_span(self, seg: int) -> tuple[int, int]:
        """``(offset, length)`` of segment ``seg`` in the file."""
        return erasure.segment_span(self.size, self.segment_size, seg)


def make_manifest(size: int, params: erasure.ErasureParams, share_hashes: bytes) -> Manifest:
    """Build a manifest for a ``size``-byte file from its concatenated share hashes.

    Raises ManifestError if the hash list does not fit the layout or the file
    is too large for one manifest (use a larger segment size).
    """
    manifest = Manifest(
        size=size,
        k=params.k,
        n=params.n,
        segment_size=params.segment_size,
        segment_count=erasure.segment_count(size, params.segment_size),
        share_hashes=bytes(share_hashes),
    )
    _validate(manifest)
    return manifest


def decode(data: bytes) -> Manifest:
    """Parse and validate manifest bytes received from anywhere.

    Raises ManifestError on any defect: oversize, not msgpack, wrong version,
    missing/unknown/mistyped keys, out-of-range or inconsistent values, or a
    non-canonical encoding.
    """
    if type(data) is not bytes:
        raise TypeError("manifest must be bytes")
    if len(data) > MAX_MANIFEST_SIZE:
        raise ManifestError(f"manifest of {len(data)} bytes exceeds {MAX_MANIFEST_SIZE}")
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_str_len=16,
            max_bin_len=MAX_SHARE_HASHES * integrity.HASH_SIZE,
            max_array_len=0,
            max_map_len=16,  # room to name unknown keys in the error; still bounded
            max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ManifestError(f"manifest is not valid msgpack: {exc}") from None
    if type(obj) is not dict:
        raise ManifestError("manifest must be a msgpack map")
    version = obj.get("v")
    if type(version) is not int:
        raise ManifestError("manifest has no integer version 'v'")
    if version == 1:
        raise ManifestError("manifest version 1 (sha256 share ids) is from an older release")
    if version != VERSION:
        raise ManifestError(f"unsupported manifest version {version}")
    if set(obj) != set(_KEYS):
        unknown = sorted(set(obj) - set(_KEYS))
        missing = sorted(set(_KEYS) - set(obj))
        raise ManifestError(f"manifest keys wrong: unknown {unknown}, missing {missing}")
    for key in _KEYS[:-1]:
        if type(obj[key]) is not int:
            raise ManifestError(f"manifest field {key!r} must be an int")
    if type(obj["hashes"]) is not bytes:
        raise ManifestError("manifest field 'hashes' must be bin")
    manifest = Manifest(
        size=obj["size"],
        k=obj["k"],
        n=obj["n"],
        segment_size=obj["seg"],
        segment_count=obj["segs"],
        share_hashes=obj["hashes"],
        version=version,
    )
    _validate(manifest)
    if manifest.encode() != data:
        raise ManifestError("manifest encoding is not canonical")
    return manifest


def _validate(m: Manifest) -> None:
    if not 0 <= m.size <= MAX_FILE_SIZE:
        raise ManifestError(f"file size {m.size} out of range")
    if not 1 <= m.k <= m.n <= erasure.MAX_SHARES:
        raise ManifestError(f"bad k={m.k} n={m.n}")
    if not 1 <= m.segment_size <= erasure.MAX_SEGMENT_SIZE:
        raise ManifestError(f"segment size {m.segment_size} out of range")
    if m.segment_count != erasure.segment_count(m.size, m.segment_size):
        raise ManifestError(f"segment count {m.segment_count} does not match size")
    if m.segment_count * m.n > MAX_SHARE_HASHES:
        raise ManifestError(
            f"{m.segment_count * m.n} shares exceed {MAX_SHARE_HASHES} per manifest; "
            "use a larger segment size"
        )
    if len(m.share_hashes) != m.segment_count * m.n * integrity.HASH_SIZE:
        raise ManifestError("share hash list length does not match segs * n")
