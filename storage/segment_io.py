"""The blocking file work of put, get and repair (run through ``offload``, off the event loop).

Reading and encoding a segment of the input (checked against the manifest
when re-read), rebuilding a segment's shares, and the download output:
opened with its verified prefix kept (shares 0..k-1 are the segment's own
blocks, so hashing them checks a segment without re-encoding), written at
offsets, fsynced at the end.
"""

from __future__ import annotations

import os

from poolai.storage import erasure, integrity
from poolai.storage.errors import FileChanged
from poolai.storage.manifest import Manifest


def read_exact(fd: int, length: int, offset: int) -> bytes:
    parts = []
    while length:
        chunk = os.pread(fd, length, offset)
        if not chunk:
            raise FileChanged("file is shorter than when it was measured")
        parts.append(chunk)
        length, offset = length - len(chunk), offset + len(chunk)
    return b"".join(parts)


def encode_at(fd: int, size: int, params: erasure.ErasureParams, seg: int) -> list[bytes]:
    offset, length = erasure.segment_span(size, params.segment_size, seg)
    return erasure.encode_segment(read_exact(fd, length, offset), params.k, params.n)


def segment_hashes(fd: int, size: int, params: erasure.ErasureParams, seg: int) -> bytes:
    return b"".join(integrity.share_id(s) for s in encode_at(fd, size, params, seg))


def encode_checked(fd: int, m: Manifest, seg: int) -> list[bytes] | None:
    try:
        shares = encode_at(fd, m.size, m.params, seg)
    except FileChanged:
        return None
    ok = all(integrity.share_id(s) == m.share_id(seg, i) for i, s in enumerate(shares))
    return shares if ok else None


def rebuild(m: Manifest, seg: int, shares: dict[int, bytes]) -> list[bytes]:
    segment = erasure.decode_segment(shares, m.segment_span(seg)[1], m.k, m.n)
    rebuilt = erasure.encode_segment(segment, m.k, m.n)
    # Verified inputs always re-encode to the manifest's shares: a mismatch is our bug.
    if any(integrity.share_id(s) != m.share_id(seg, i) for i, s in enumerate(rebuilt)):
        raise RuntimeError(f"segment {seg} rebuilt to shares that differ from the manifest")
    return rebuilt


def open_output(
    path: str | os.PathLike[str], m: Manifest, resume: bool, first: int = 0
) -> tuple[int, int]:
    """Open the output; return (fd, first segment to fetch) after checking partial content."""
    fd = os.open(os.fspath(path), os.O_RDWR | os.O_CREAT, 0o644)
    start = first
    if resume:
        existing = os.fstat(fd).st_size
        for seg in range(first, m.segment_count):
            offset, length = m.segment_span(seg)
            if offset + length > existing:
                break
            # Shares 0..k-1 are the segment's own blocks: hashing them checks the segment.
            blocks = erasure.split_blocks(os.pread(fd, length, offset), m.k)
            if any(integrity.share_id(b) != m.share_id(seg, i) for i, b in enumerate(blocks)):
                break
            start = seg + 1
    os.ftruncate(fd, m.size if start == m.segment_count else start * m.segment_size)
    return fd, start


def write_at(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def write_blocks(fd: int, blocks: list[bytes], offset: int) -> None:
    """Write ``blocks`` one after the other from ``offset`` (a segment, unjoined)."""
    for block in blocks:
        write_at(fd, block, offset)
        offset += len(block)


def finish(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
