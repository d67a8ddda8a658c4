"""The read side of burst RAID: manifests, and a file's segments in order.

``fetch_manifest`` gets a manifest from its replica holders and checks it
against the file id. ``stream_file`` hands a file's verified segments to a
caller's sink in order, holding at most ``segments_in_flight`` of them;
``get_file`` is the same with a file writer as the sink (and resumes from a
verified prefix). Per segment: ask k holders (primaries first, unless a
primary's holder is busier with this read than a parity holder: see
``Transfers.fetch_segment``), one more at once per failure or wrong share
(which is reported to its holder) and one more per ``hedge_delay`` of
silence, keep the first k shares whose hash matches the manifest, decode.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from poolai.storage import erasure, placement, segment_io
from poolai.storage import manifest as manifest_mod
from poolai.storage.errors import NotEnoughShares
from poolai.storage.loop_load import LoopLoad
from poolai.storage.manifest import Manifest
from poolai.storage.placement import PeerId, Ring
from poolai.storage.transfers import DEFAULT_CONFIG, Offload, RaidConfig, ShareTransport, Transfers, short

LOOP_LOAD = LoopLoad()
"""How busy this process's event loop is; reads take fewer parity shares while it is the
limit (``Transfers.fetch_segment``)."""

Progress = Callable[[int, int], None]
"""``(bytes_done, bytes_total)`` of the file, called on the trio thread (for a progress bar)."""


@dataclass(slots=True)
class ReadTally:
    """What a read did, for its caller's records: segments handed over, and how many of
    them zfec rebuilt from parity shares (the rest were sliced from their primaries)."""

    segments: int = 0
    decoded: int = 0


Sink = Callable[[int, list[bytes]], Awaitable[None]]
"""Takes a file's verified segments in order, as ``(offset in the file, blocks)``: the
blocks of one segment, which concatenate to it (see ``erasure.segment_blocks``)."""


async def fetch_manifest(
    file_id: bytes,
    transport: ShareTransport,
    ring: Ring,
    *,
    config: RaidConfig = DEFAULT_CONFIG,
    offload: Offload = trio.to_thread.run_sync,
) -> Manifest:
    """Fetch a file's manifest from its replica holders and verify it against ``file_id``.

    Raises NotEnoughShares if no holder returns bytes hashing to ``file_id``,
    ManifestError if those bytes are not a valid manifest.
    """
    session = Transfers(transport, config, offload)
    attempts: list[tuple[int, PeerId, bytes]] = []
    walks = placement.manifest_walks(ring, file_id, config.manifest_copies, config.manifest_copies + 3)
    if walks:
        seen: set[PeerId] = set()
        for rank in range(max(map(len, walks))):
            for j, walk in enumerate(walks):
                if rank < len(walk) and walk[rank] not in seen:
                    seen.add(walk[rank])
                    attempts.append((j, walk[rank], file_id))
    got = await session.gather(attempts, 1, 1 + config.extra_fetches)
    if not got:
        raise NotEnoughShares(f"no holder returned manifest {short(file_id)}")
    return manifest_mod.decode(next(iter(got.values())))


async def stream_file(
    file_id: bytes,
    transport: ShareTransport,
    ring: Ring,
    sink: Sink,
    *,
    config: RaidConfig = DEFAULT_CONFIG,
    manifest: Manifest | None = None,
    progress: Progress | None = None,
    offload: Offload = trio.to_thread.run_sync,
    first_segment: int = 0,
    tally: ReadTally | None = None,
) -> Manifest:
    """Hand a file's verified segments to ``sink`` in order, from ``first_segment`` on; return
    its manifest. ``tally``, if given, counts the segments handed over and decoded.

    Nothing touches the disk: at most ``segments_in_flight`` segments are held
    while ``sink`` takes them. Raises NotEnoughShares when a segment has fewer
    than k valid shares reachable (after the segments before it were handed
    over), ValueError if ``manifest`` is not ``file_id``'s, and whatever
    ``sink`` raises.
    """
    m, session = await _reading(file_id, transport, ring, config, manifest, offload, first_segment)
    await _deliver(session, ring, file_id, m, first_segment, sink, progress, tally)
    return m


async def get_file(
    file_id: bytes,
    out_path: str | os.PathLike[str],
    transport: ShareTransport,
    ring: Ring,
    *,
    config: RaidConfig = DEFAULT_CONFIG,
    manifest: Manifest | None = None,
    resume: bool = True,
    progress: Progress | None = None,
    offload: Offload = trio.to_thread.run_sync,
    first_segment: int = 0,
    tally: ReadTally | None = None,
) -> Manifest:
    """Download a file into ``out_path``; return its manifest.

    With ``resume`` an existing ``out_path`` is verified segment by segment
    and only the rest is fetched. ``first_segment`` > 0 skips the segments
    before it (the caller has them); ``tally`` as for :func:`stream_file`.
    Every share is hash-checked before use, so the output never holds
    unverified bytes. Raises NotEnoughShares when a segment has fewer than k
    valid shares reachable (the verified prefix stays for a later resume),
    ValueError if ``manifest`` is not ``file_id``'s, OSError for the output.
    """
    m, session = await _reading(file_id, transport, ring, config, manifest, offload, first_segment)
    fd, start = await offload(segment_io.open_output, out_path, m, resume, first_segment)

    async def write(offset: int, blocks: list[bytes]) -> None:
        await offload(segment_io.write_blocks, fd, blocks, offset)

    try:
        await _deliver(session, ring, file_id, m, start, write, progress, tally)
    except BaseException:
        os.close(fd)
        raise
    await offload(segment_io.finish, fd)
    return m


async def _reading(
    file_id: bytes, transport: ShareTransport, ring: Ring, config: RaidConfig,
    manifest: Manifest | None, offload: Offload, first_segment: int,
) -> tuple[Manifest, Transfers]:
    """The checked manifest and a transfer session for reading ``file_id``."""
    m = manifest or await fetch_manifest(file_id, transport, ring, config=config, offload=offload)
    if m.file_id() != file_id:
        raise ValueError("manifest does not belong to file_id")
    if not 0 <= first_segment <= m.segment_count:
        raise ValueError(f"first_segment {first_segment} is outside 0..{m.segment_count}")
    return m, Transfers(transport, config, offload, LOOP_LOAD)


async def _deliver(
    session: Transfers, ring: Ring, file_id: bytes, m: Manifest, start: int, sink: Sink,
    progress: Progress | None, tally: ReadTally | None,
) -> None:
    """Fetch segments ``start``.. with ``segments_in_flight`` at once; hand each to ``sink`` in
    order. Raises (outside the nursery) NotEnoughShares or what ``sink`` raised."""
    window = trio.Semaphore(session.config.segments_in_flight)
    ready = [trio.Event() for _ in range(start, m.segment_count)]
    decoded: dict[int, list[bytes]] = {}
    failure: list[BaseException] = []
    done = min(m.size, start * m.segment_size)

    async def fetch(seg: int, nursery: trio.Nursery) -> None:
        shares = await session.fetch_segment(ring, file_id, m, seg)
        if shares is None:
            failure.append(NotEnoughShares(f"segment {seg}: fewer than {m.k} valid shares"))
            nursery.cancel_scope.cancel()
            return
        length = m.segment_span(seg)[1]
        if erasure.primaries_only(shares, m.k):  # slicing only: not worth a thread hand-off
            decoded[seg] = erasure.segment_blocks(shares, length, m.k, m.n)
        else:
            decoded[seg] = await session.offload(erasure.segment_blocks, shares, length, m.k, m.n)
            if tally is not None:
                tally.decoded += 1
        ready[seg - start].set()

    async def launch(nursery: trio.Nursery) -> None:
        for seg in range(start, m.segment_count):
            await window.acquire()
            nursery.start_soon(fetch, seg, nursery)

    if progress:
        progress(done, m.size)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(launch, nursery)
        for seg in range(start, m.segment_count):
            await ready[seg - start].wait()
            blocks = decoded.pop(seg)
            try:
                await sink(seg * m.segment_size, blocks)
            except Exception as exc:  # raised below, not as an ExceptionGroup
                failure.append(exc)
                nursery.cancel_scope.cancel()
                break
            window.release()
            if tally is not None:
                tally.segments += 1
            done += sum(map(len, blocks))
            if progress:
                progress(done, m.size)
    if failure:
        raise failure[0]
