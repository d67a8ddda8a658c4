"""Erasure layout: a file becomes segments, a segment becomes n shares of which any k rebuild it.

Pure code over zfec: no I/O, no trio, no clock. Callers run the heavy calls
(``encode_segment``, ``decode_segment``) in a worker thread; zfec releases
the GIL while it multiplies.

Layout of a file of ``size`` bytes under ``ErasureParams(k, n, segment_size)``::

    segment s   = bytes [s*segment_size, min(size, (s+1)*segment_size))
    count       = ceil(size / segment_size)        (0 for an empty file)
    a segment of L bytes is cut into k blocks of B = ceil(L / k) bytes;
    the last block is zero-padded, padlen = k*B - L (0 <= padlen < k)
    zfec turns the k blocks into n shares of B bytes each;
    shares 0..k-1 are the blocks themselves (the code is systematic)

``padlen`` is never stored: it is fixed by (size, k, segment_size), which the
manifest carries and authenticates, so a stored copy could only disagree.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import zfec

KiB = 1 << 10
MiB = 1 << 20

MAX_SHARES = 256  # zfec works in GF(2^8): at most 256 distinct shares
MAX_SEGMENT_SIZE = 16 * MiB

DEFAULT_K = 4
DEFAULT_N = 10
DEFAULT_SEGMENT_SIZE = 4 * MiB  # 1 MiB shares at k=4


@dataclass(frozen=True, slots=True)
class ErasureParams:
    """Per-file coding parameters: any ``k`` of ``n`` shares rebuild a segment.

    Defaults (4-of-10, 4 MiB segments) are argued in docs/storage.md: 2.5x
    expansion, six holders of a segment may vanish before repair, 1 MiB shares.
    Raises TypeError/ValueError on out-of-range values.
    """

    k: int = DEFAULT_K
    n: int = DEFAULT_N
    segment_size: int = DEFAULT_SEGMENT_SIZE

    def __post_init__(self) -> None:
        for name in ("k", "n", "segment_size"):
            if type(getattr(self, name)) is not int:
                raise TypeError(f"{name} must be an int")
        if not 1 <= self.k <= self.n <= MAX_SHARES:
            raise ValueError(f"need 1 <= k <= n <= {MAX_SHARES}, got k={self.k} n={self.n}")
        if not 1 <= self.segment_size <= MAX_SEGMENT_SIZE:
            raise ValueError(f"segment_size must be in [1, {MAX_SEGMENT_SIZE}]")

    @property
    def expansion(self) -> float:
        """Stored bytes per file byte (n / k), ignoring padding."""
        return self.n / self.k


DEFAULT_PARAMS = ErasureParams()


def segment_count(size: int, segment_size: int) -> int:
    """Number of segments of a ``size``-byte file (0 for an empty file)."""
    if size < 0:
        raise ValueError("size must be >= 0")
    return -(-size // segment_size)


def segment_span(size: int, segment_size: int, seg: int) -> tuple[int, int]:
    """Return ``(offset, length)`` of segment ``seg``; raises IndexError past the end."""
    if not 0 <= seg < segment_count(size, segment_size):
        raise IndexError(f"segment {seg} out of range")
    offset = seg * segment_size
    return offset, min(segment_size, size - offset)


def block_size(length: int, k: int) -> int:
    """Size of each share of a ``length``-byte segment."""
    return -(-length // k)


def padlen(length: int, k: int) -> int:
    """Zero bytes zfec appends to a ``length``-byte segment so it splits into k equal blocks."""
    return block_size(length, k) * k - length


@functools.lru_cache(maxsize=32)
def _encoder(k: int, n: int) -> zfec.Encoder:
    return zfec.Encoder(k, n)


@functools.lru_cache(maxsize=32)
def _decoder(k: int, n: int) -> zfec.Decoder:
    return zfec.Decoder(k, n)


def split_blocks(segment: bytes, k: int) -> list[bytes]:
    """Cut a segment into its k primary blocks, zero-padding the last one.

    Block i is also share i, so hashing these verifies a segment without a
    full encode (used to resume a download into a partial file).
    """
    if not segment:
        raise ValueError("a segment is never empty")
    size = block_size(len(segment), k)
    blocks = [segment[i * size : (i + 1) * size] for i in range(k)]
    pad = padlen(len(segment), k)
    if pad:
        # Only the tail blocks can be short; with tiny segments several may be.
        blocks = [b + b"\x00" * (size - len(b)) for b in blocks]
    return blocks


def encode_segment(segment: bytes, k: int, n: int) -> list[bytes]:
    """Encode one segment into n shares of ``block_size(len(segment), k)`` bytes each.

    CPU-heavy for large segments: call it from a worker thread.
    """
    blocks = split_blocks(segment, k)
    return [bytes(share) for share in _encoder(k, n).encode(blocks)]


def decode_segment(shares: Mapping[int, bytes], length: int, k: int, n: int) -> bytes:
    """Rebuild a ``length``-byte segment from at least k shares keyed by share index.

    ``b"".join(segment_blocks(...))``; raises like :func:`segment_blocks`.
    """
    return b"".join(segment_blocks(shares, length, k, n))


def primaries_only(indices: Iterable[int], k: int) -> bool:
    """True when the k lowest of ``indices`` are the primaries 0..k-1: then
    :func:`segment_blocks` only slices (no zfec, cheap enough for an event loop)."""
    return sorted(indices)[:k] == list(range(k))


def segment_blocks(shares: Mapping[int, bytes], length: int, k: int, n: int) -> list[bytes]:
    """A ``length``-byte segment as its data blocks, rebuilt from at least k shares by index.

    The blocks concatenate to the segment (padding dropped), so a reader can
    pass them on without joining them. Uses the k lowest indices given:
    primaries are the blocks themselves, no decoding. The caller must have
    verified every share's hash against the manifest first: zfec cannot
    tell a wrong share from a right one.
    Raises ValueError when fewer than k shares are given or sizes disagree.
    """
    if len(shares) < k:
        raise ValueError(f"need {k} shares to decode, got {len(shares)}")
    size = block_size(length, k)
    indices = sorted(shares)[:k]
    for i in indices:
        if not 0 <= i < n:
            raise ValueError(f"share index {i} out of range for n={n}")
        if len(shares[i]) != size:
            raise ValueError(f"share {i} has {len(shares[i])} bytes, expected {size}")
    if primaries_only(indices, k):
        blocks = [shares[i] for i in indices]
    else:
        blocks = [bytes(b) for b in _decoder(k, n).decode([shares[i] for i in indices], indices)]
    out: list[bytes] = []
    left = length
    for block in blocks:
        if left <= 0:
            break
        out.append(block if len(block) <= left else block[:left])
        left -= len(out[-1])
    return out
