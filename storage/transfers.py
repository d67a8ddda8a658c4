"""Share exchanges with many peers at once, with one limiter, deadlines and fault containment.

The transport contract (:class:`ShareTransport`), what a holder is told
(:class:`ShareMeta`) and the knobs of put/get/repair (:class:`RaidConfig`)
live here with :class:`Transfers`, the per-operation engine that
:mod:`poolai.storage.raid` drives: ``store``/``place`` (fall back along the
placement walk), ``probe`` (batched ``has``) and ``gather``/``fetch_segment``
(first k verified shares, hedged). Peers' faults (``PeerError``, timeouts,
wrong bytes) are contained and logged here; nothing in this module raises
for them.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from poolai.mesh.short_ids import short_hex, short_peer
from poolai.storage import integrity, placement
from poolai.storage.errors import PeerError, ShareMissing
from poolai.storage.loop_load import LoopLoad
from poolai.storage.manifest import Manifest
from poolai.storage.placement import PeerId, Ring

log = logging.getLogger(__name__)

Offload = Callable[..., Awaitable[Any]]
"""Runs blocking ``fn(*args)`` off the event loop: ``trio.to_thread.run_sync`` or a wrapper
bound to a node-wide CPU limiter."""

MAX_HAS_IDS = 1024  # ids per ``has`` request
PRIMARY_EDGE = 1  # see fetch_segment: a primary is asked unless its holder is 2 fetches busier
INLINE_HASH_MAX = 2 << 20
"""A fetched share up to this size is hashed on the event loop, a larger one in a thread.
BLAKE3 takes ~0.1 ms per MiB here, and a hand-off to a thread costs the process ~0.065 ms
of CPU besides the hash itself: for default (1 MiB) shares the thread costs more than it
saves, and 0.2 ms is a short enough stall for the loop."""


@dataclass(frozen=True, slots=True)
class ShareMeta:
    """What a holder is told about a share it stores: its file, and how long to keep it."""

    file_id: bytes
    lease_expiry: int  # unix seconds; after this an unpinned share may be collected


class ShareTransport(Protocol):
    """Share exchanges with one remote peer; every peer fault is raised as ``PeerError``.

    Callers put their own deadline around each call; implementations add none.
    """

    async def store(self, peer: PeerId, share_id: bytes, data: bytes, meta: ShareMeta) -> None:
        """Ask ``peer`` to keep ``data`` under ``share_id`` until ``meta.lease_expiry``."""
        ...

    async def fetch(self, peer: PeerId, share_id: bytes) -> bytes:
        """The bytes ``peer`` holds under ``share_id``; unverified (callers check the hash)."""
        ...

    async def has(self, peer: PeerId, share_ids: Sequence[bytes]) -> Sequence[bool]:
        """For each of at most ``MAX_HAS_IDS`` ids, whether ``peer`` holds it."""
        ...

    def report_corrupt(self, peer: PeerId, share_id: bytes) -> None:
        """Tell ``peer`` that what it sent for ``share_id`` fails its hash, so it checks its
        copy and drops a rotten one. Returns at once; the check runs on its own."""
        ...

    async def audit(
        self, peer: PeerId, share_id: bytes, offset: int, length: int, nonce: bytes
    ) -> bytes:
        """``peer``'s ``integrity.audit_digest(nonce, share[offset:offset+length])``."""
        ...


@dataclass(frozen=True, slots=True)
class RaidConfig:
    """Concurrency, deadlines and redundancy goals of put/get/repair.

    Memory held is about ``segments_in_flight`` x segment size x n/k.
    ``happy``: shares of every segment a put must place (default k + (n-k)//2).
    Raises ValueError on nonsensical values.
    """

    max_transfers: int = 16  # share exchanges in flight, all peers together
    segments_in_flight: int = 4
    peer_timeout: float = 30.0  # one exchange with one peer
    hedge_delay: float = 2.0  # silence after which a get asks one more holder
    extra_fetches: int = 2  # holders asked beyond k at the start of a segment
    max_attempts: int = 3  # holders tried per share: the holder, then fallbacks
    happy: int | None = None
    manifest_copies: int = 5
    manifest_happy: int = 2

    def __post_init__(self) -> None:
        if min(self.max_transfers, self.segments_in_flight, self.max_attempts) < 1:
            raise ValueError("max_transfers, segments_in_flight, max_attempts must be >= 1")
        if self.peer_timeout <= 0 or self.hedge_delay <= 0 or self.extra_fetches < 0:
            raise ValueError("timeouts must be positive and extra_fetches >= 0")
        if not 1 <= self.manifest_happy <= self.manifest_copies:
            raise ValueError("need 1 <= manifest_happy <= manifest_copies")

    def happy_for(self, k: int, n: int) -> int:
        """Shares per segment a put must place for these parameters."""
        goal = self.happy if self.happy is not None else k + (n - k) // 2
        return max(k, min(n, goal))


DEFAULT_CONFIG = RaidConfig()


class Transfers:
    """One operation's transfer limiter, deadlines and fault containment (see the module doc)."""

    def __init__(
        self, transport: ShareTransport, config: RaidConfig, offload: Offload,
        loop_load: LoopLoad | None = None,
    ) -> None:
        self.transport = transport
        self.config = config
        self.offload = offload
        self.loop_load = loop_load  # None: the load rule always applies (see fetch_segment)
        self.limiter = trio.CapacityLimiter(config.max_transfers)
        self.busy: collections.Counter[PeerId] = collections.Counter()  # fetches waiting or running
        self._present: tuple[Ring, Ring] | None = None  # (ring, ring.present()) of the last segment
        # Where shares were found when peers are absent and a share's holder on the ring
        # differs from its holder on the present peers (see fetch_segment).
        self.found_at_ring_holder = 0
        self.found_at_present_holder = 0
        self.faults: collections.Counter[PeerId] = collections.Counter()  # failed exchanges per peer

    def _fault(self, peer: PeerId, what: str, exc: BaseException) -> None:
        """Log a peer's failed exchange: the first of each peer in this operation at INFO, the
        rest at DEBUG (a peer that went away fails every share a repair sends it)."""
        self.faults[peer] += 1
        first = self.faults[peer] == 1
        log.log(logging.INFO if first else logging.DEBUG, "%s on %s failed: %r%s", what, peer_tag(peer), exc,
                "; more failures with this peer in this operation are logged at debug" if first else "")

    def present(self, ring: Ring) -> Ring:
        """``ring.present()``, computed once per ring this operation reads from."""
        if self._present is None or self._present[0] is not ring:
            self._present = (ring, ring.present())
        return self._present[1]

    async def _matches(self, share_id: bytes, data: bytes) -> bool:
        if len(data) <= INLINE_HASH_MAX:
            return integrity.matches(share_id, data)
        return bool(await self.offload(integrity.matches, share_id, data))

    async def store(self, peer: PeerId, share_id: bytes, data: bytes, meta: ShareMeta) -> bool:
        try:
            async with self.limiter:
                with trio.fail_after(self.config.peer_timeout):
                    await self.transport.store(peer, share_id, data, meta)
        except (PeerError, trio.TooSlowError) as exc:
            self._fault(peer, f"store {short(share_id)}", exc)
            return False
        return True

    async def place(
        self, candidates: Iterator[PeerId], taken: set[PeerId], share_id: bytes, data: bytes,
        meta: ShareMeta,
    ) -> bool:
        """Store on the first candidate that accepts; True if one did.

        The first candidate (the holder) is always tried; later ones are
        skipped when ``taken`` by another share of the segment.
        """
        tried = 0
        for peer in candidates:
            if tried >= self.config.max_attempts:
                break
            if tried and peer in taken:
                continue
            taken.add(peer)  # claim before awaiting so concurrent fallbacks pick other peers
            tried += 1
            if await self.store(peer, share_id, data, meta):
                return True
        return False

    async def probe(self, asks: dict[PeerId, list[tuple[object, bytes]]]) -> set[object]:
        """Ask each peer which of its (key, share id) pairs it holds; return the held keys."""
        held: set[object] = set()

        async def ask(peer: PeerId, batch: list[tuple[object, bytes]]) -> None:
            try:
                async with self.limiter:
                    with trio.fail_after(self.config.peer_timeout):
                        answer = await self.transport.has(peer, [sid for _, sid in batch])
            except (PeerError, trio.TooSlowError) as exc:
                self._fault(peer, "has", exc)
                return
            if len(answer) != len(batch):
                log.warning("has on %s answered %d of %d", peer_tag(peer), len(answer), len(batch))
                return
            held.update(key for (key, _), yes in zip(batch, answer, strict=True) if yes is True)

        async with trio.open_nursery() as nursery:
            for peer, items in asks.items():
                for at in range(0, len(items), MAX_HAS_IDS):
                    nursery.start_soon(ask, peer, items[at : at + MAX_HAS_IDS])
        return held

    async def gather(
        self, attempts: list[tuple[int, PeerId, bytes]], need: int, initial: int,
        sources: dict[int, PeerId] | None = None,
    ) -> dict[int, bytes] | None:
        """Fetch until ``need`` distinct keys have a verified answer; None if attempts run out.

        ``attempts`` are (key, peer, expected share id), best first; ``initial``
        start at once, each failure starts the next, and so does each
        ``hedge_delay`` without an answer. Those still running are cancelled.
        ``sources`` receives the peer each verified answer came from.
        """
        valid: dict[int, bytes] = {}
        running: dict[int, int] = {}
        pending = list(attempts)
        send, recv = trio.open_memory_channel[tuple[int, PeerId, bytes | None]](max(1, len(attempts)))

        async def fetch(key: int, peer: PeerId, share_id: bytes) -> None:
            data: bytes | None = None
            self.busy[peer] += 1
            try:
                async with self.limiter:
                    with trio.fail_after(self.config.peer_timeout):
                        data = await self.transport.fetch(peer, share_id)
            except ShareMissing:
                # A walk asks peers down the ring until one has the share: a miss is expected
                # (a repair meets dozens), and the caller reports what it could not find.
                log.debug("fetch %s: %s has no copy", short(share_id), peer_tag(peer))
            except (PeerError, trio.TooSlowError) as exc:
                self._fault(peer, f"fetch {short(share_id)}", exc)
            finally:
                self.busy[peer] -= 1
            if data is not None and not await self._matches(share_id, data):
                log.warning("peer %s sent a corrupt %s", peer_tag(peer), short(share_id))
                self.transport.report_corrupt(peer, share_id)  # holders serve unhashed bytes
                data = None
            send.send_nowait((key, peer, data))

        def launch(nursery: trio.Nursery) -> bool:
            useful = [a for a in pending if a[0] not in valid]
            if not useful:
                return False
            choice = next((a for a in useful if not running.get(a[0])), useful[0])
            pending.remove(choice)
            running[choice[0]] = running.get(choice[0], 0) + 1
            nursery.start_soon(fetch, *choice)
            return True

        async with trio.open_nursery() as nursery:
            for _ in range(initial):
                launch(nursery)
            while len(valid) < need:
                if not any(running.values()) and not launch(nursery):
                    break
                with trio.move_on_after(self.config.hedge_delay) as hedge:
                    key, peer, data = await recv.receive()
                if hedge.cancelled_caught:
                    launch(nursery)  # the holders asked are slow: ask one more
                    continue
                running[key] -= 1
                if data is None:
                    launch(nursery)
                else:
                    if key not in valid:
                        valid[key] = data
                        if sources is not None:
                            sources[key] = peer
            nursery.cancel_scope.cancel()
        return valid if len(valid) >= need else None

    async def fetch_segment(
        self, ring: Ring, file_id: bytes, m: Manifest, seg: int,
        prefer: frozenset[int] = frozenset(),
    ) -> dict[int, bytes] | None:
        """k verified shares of a segment by index, or None; ``prefer`` indices are asked first,
        then the shares whose holders are least busy with this operation (primaries on a par).

        With absent peers on ``ring`` the operation learns which ring the file was put on
        from where shares are found (where a share's holder on ``ring`` differs from its
        holder on the present peers). Each share's holder on ``ring`` is asked first, unless
        more shares were found at their present holder (a file put, or repaired, since those
        peers left). While more were found at their holder on ``ring`` (a file put before),
        shares whose holder there is absent are asked last: they probably left with it."""
        if not ring.peers:
            return None
        put_on_ring = self.found_at_ring_holder > self.found_at_present_holder
        depth = m.n + 3  # see placement: covers the successor rule's skips, a fallback, a join
        found = placement.segment_walks(
            ring, file_id, seg, m.n, depth, present=self.present(ring),
            present_first=self.found_at_present_holder > self.found_at_ring_holder,
        )
        holders, current, walks = found.holders, found.current, found.walks
        # Primaries need no decoding, so they come first, unless a primary's holder is serving
        # more than PRIMARY_EDGE more of this operation's fetches than a parity share's holder:
        # then that parity share is asked instead. Placement gives some holders more primaries
        # than others; without this, the busiest holder's uplink paced the whole read
        # (docs/storage.md, "burst over capped uplinks"). Not while this thread is the limit
        # of the read: then a rebuild costs more than a busy holder (see loop_load).
        edge = 1 << 20 if self.loop_load is not None and self.loop_load.busy() else PRIMARY_EDGE

        def load(i: int) -> int:
            return self.busy[walks[i][0]] + (0 if i < m.k else edge) if walks[i] else 1 << 30

        def left(i: int) -> bool:
            return put_on_ring and holders[i] in ring.absent

        order = sorted(range(m.n), key=lambda i: (i not in prefer, left(i), load(i), i))
        attempts = [
            (i, walks[i][rank], m.share_id(seg, i))
            for rank in range(depth)
            for i in order
            if rank < len(walks[i])
        ]
        sources: dict[int, PeerId] = {}
        got = await self.gather(attempts, m.k, m.k + self.config.extra_fetches, sources)
        if current is not None:
            for i, peer in sources.items():
                if holders[i] != current[i]:
                    self.found_at_ring_holder += peer == holders[i]
                    self.found_at_present_holder += peer == current[i]
        return got


short = short_hex  # a share or file id in logs (poolai.mesh.short_ids)
peer_tag = short_peer  # a peer in logs, as its base58 id ends

