"""The share server: serves one node's :class:`ShareStore` on ``/poolai/store/2.0.0``.

It knows no transport: it serves any trio half-closeable stream, so tests
drive it over memory streams too. A stream carries one exchange or several
in a row (a client keeps streams open to a holder it fetches from often);
it ends when the client half-closes, after ``idle_timeout`` without a next
request, or at the first refusal or fault. It checks a ``store.put`` header (size,
ids, the peer's grant, quota) before reading the body, charges every share to
the peer that stored it (:mod:`poolai.storage.grants`), caps leases, bounds concurrent transfers and their
announced bytes (answering ``busy`` when full), reads and writes under
deadlines, and runs every LMDB call that may wait for the disk off the event
loop (a fetch of a share that is all in the page cache is copied out on
it). The same checks
serve this node's own requests (``*_local``), which skip the network.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import trio

from poolai.mesh import wire
from poolai.mesh.errors import MeshError, PeerUnreachable, ProtocolError, TruncatedFrame
from poolai.mesh.rpc import ByteStream
from poolai.mesh.short_ids import short_hex, short_id
from poolai.storage import grants, integrity
from poolai.storage.errors import (
    GrantExceeded,
    QuotaExceeded,
    ShareCorrupted,
    ShareHashMismatch,
    ShareNotFound,
    StoreWriteFailed,
)
from poolai.storage.protocol import (
    CONTROL_FRAME,
    MAX_AUDIT_LENGTH,
    MAX_SHARE_SIZE,
    REQUESTS,
    AuditRequest,
    CheckedReply,
    CheckRequest,
    DataReply,
    FetchRequest,
    HasRequest,
    HeldReply,
    ProofReply,
    PutRequest,
    Reader,
    RenewedReply,
    ShareNotHeld,
    ShareRefused,
    StoredReply,
    abort,
    check_ids,
    close,
    pack_bits,
    send_frame,
    send_frame_and_body,
)
from poolai.storage.store import ShareStore

log = logging.getLogger(__name__)

Offload = Callable[..., Awaitable[Any]]


@dataclasses.dataclass(frozen=True, slots=True)
class ServerConfig:
    """Limits of one node's share server. Raises ValueError on nonsense."""

    max_requests: int = 64  # streams served at once, all kinds
    max_transfers: int = 32  # store/fetch bodies in flight
    max_transfer_bytes: int = 128 << 20  # their announced sizes together (memory bound)
    header_timeout: float = 10.0
    idle_timeout: float = 20.0  # a kept-open stream with no next request is closed after this
    body_timeout: float = 60.0  # to receive one share body
    reply_timeout: float = 60.0  # to send one reply (with its bytes)
    max_lease_s: int = grants.MAX_LEASE_S  # longest lease granted to a peer, from now

    def __post_init__(self) -> None:
        if min(self.max_requests, self.max_transfers, self.max_transfer_bytes) < 1:
            raise ValueError("limits must be positive")
        if self.max_transfer_bytes < MAX_SHARE_SIZE:
            raise ValueError("max_transfer_bytes must fit one largest share")


@dataclasses.dataclass(frozen=True, slots=True)
class ServerStatistics:
    """Counters since start (a snapshot)."""

    requests: int
    busy: int
    bad_requests: int
    timeouts: int
    stored: int
    fetched: int
    quota_refusals: int
    grant_refusals: int  # puts refused because the peer is over its grant
    disk_refusals: int  # puts refused because the disk failed the write (full)
    hash_refusals: int
    corrupt: int
    bytes_in: int
    bytes_out: int
    idle_closed: int  # kept-open streams closed after idle_timeout without a next request
    transfers: int  # store/fetch bodies in flight now


class ShareServer:
    """Serves one :class:`ShareStore` to peers, and to this node itself (``*_local``).

    ``offload`` runs blocking store calls (default ``trio.to_thread.run_sync``);
    ``clock`` gives unix seconds for capping leases and evicting expired shares.
    A share a peer stores is charged to that peer (``peer``, its id as text); one
    this node stores for itself (``peer=None``) to nobody. What each peer may keep
    is the store's ``grant_policy``.
    """

    def __init__(
        self,
        store: ShareStore,
        *,
        config: ServerConfig = ServerConfig(),
        offload: Offload = trio.to_thread.run_sync,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.config = config
        self._offload = offload
        self._clock = clock
        self._requests = trio.CapacityLimiter(config.max_requests)
        self._transfers = 0
        self._transfer_bytes = 0
        self._n = {f.name: 0 for f in dataclasses.fields(ServerStatistics) if f.name != "transfers"}

    def statistics(self) -> ServerStatistics:
        return ServerStatistics(**self._n, transfers=self._transfers)

    # ------------------------------------------------------------------ operations
    async def put_local(self, share_id: bytes, data: bytes, file_id: bytes, lease: int,
                        peer: str | None = None) -> bool:
        """Store a share in this node's store for ``peer`` (None: this node); raises
        ShareRefused (quota, grant, disk, hash)."""
        check_ids([share_id, file_id])
        if not 0 < len(data) <= MAX_SHARE_SIZE:
            raise ShareRefused("bad_request", "too_large", f"share of {len(data)} bytes")
        now = int(self._clock())
        lease = min(lease, now + self.config.max_lease_s)
        put = functools.partial(self.store.put, file_id=file_id, lease_expiry=lease, owner=peer, now=now)
        try:
            with self._refusals():
                new = await self._offload(put, share_id, data)
        except ShareHashMismatch as exc:
            self._n["hash_refusals"] += 1
            raise ShareRefused("bad_request", "hash", str(exc)) from None
        self._n["stored"] += 1
        return new

    async def admit_local(self, share_id: bytes, size: int, peer: str | None = None) -> None:
        """Refuse a share before its bytes arrive if ``peer`` (None: this node) is over its
        grant or the share cannot fit the quota. Raises ShareRefused (grant, quota)."""
        admit = functools.partial(self.store.admit, owner=peer, now=int(self._clock()))
        with self._refusals():
            await self._offload(admit, share_id, size)

    @contextlib.contextmanager
    def _refusals(self) -> Iterator[None]:
        try:
            yield
        except QuotaExceeded as exc:
            self._n["quota_refusals"] += 1
            raise ShareRefused("refused", "quota", str(exc)) from None
        except GrantExceeded as exc:
            self._n["grant_refusals"] += 1
            raise ShareRefused("refused", "grant", str(exc)) from None
        except StoreWriteFailed as exc:
            self._n["disk_refusals"] += 1
            raise ShareRefused("refused", "disk", str(exc)) from None

    async def fetch_local(
        self, share_id: bytes, offset: int = 0, length: int = 0, *, verify: bool = False
    ) -> tuple[int, bytes]:
        """(whole share size, bytes of the range); length 0 = to the end. Raises ShareRefused.

        Served as stored unless ``verify``: every reader hashes what it gets against its
        manifest and reports a mismatch (``check_local``), so hashing here too would only
        double the work of every read. The upkeep scrub and audits still hash on their own.
        A share whose pages are all in the page cache is copied out right here; only a
        read that may wait for the disk goes to a worker thread.
        """
        check_ids([share_id])
        try:
            if not verify:
                got = self.store.read(share_id, offset, length or None, verify=False, cached_only=True)
                if got is not None:
                    return got
            read = functools.partial(self.store.read, verify=verify)
            got = await self._offload(read, share_id, offset, length or None)
            assert got is not None
            return got
        except ShareNotFound:
            raise ShareNotHeld(f"no share {short_hex(share_id)}") from None
        except ShareCorrupted as exc:
            self._n["corrupt"] += 1
            raise ShareRefused("not_found", "corrupt", str(exc)) from None
        except ValueError as exc:
            raise ShareRefused("bad_request", "range", str(exc)) from None

    async def check_local(self, share_id: bytes) -> bool:
        """Hash a held share again after a reader found it wrong; True if it is whole.

        A rotted copy is deleted and counted (``corrupt``); False also when not held."""
        check_ids([share_id])
        try:
            whole = await self._offload(self.store.check, share_id)
        except ShareNotFound:
            return False
        if not whole:
            self._n["corrupt"] += 1
        return whole

    async def has_local(self, ids: Sequence[bytes]) -> list[bool]:
        check_ids(ids)
        return await self._offload(self.store.has, list(ids))

    async def audit_local(self, share_id: bytes, offset: int, length: int, nonce: bytes) -> bytes:
        if len(nonce) != integrity.AUDIT_NONCE_SIZE:
            raise ShareRefused("bad_request", "schema", "nonce must be 32 bytes")
        if not 0 < length <= MAX_AUDIT_LENGTH:
            raise ShareRefused("bad_request", "range", f"audit length must be 1..{MAX_AUDIT_LENGTH}")
        _, data = await self.fetch_local(share_id, offset, length, verify=True)
        return await self._offload(integrity.audit_digest, nonce, data)

    async def renew_local(self, ids: Sequence[bytes], lease: int) -> list[bool]:
        check_ids(ids)
        lease = min(lease, int(self._clock()) + self.config.max_lease_s)
        return await self._offload(self._renew, list(ids), lease)

    def _renew(self, ids: list[bytes], lease: int) -> list[bool]:
        out = []
        for share_id in ids:
            try:
                self.store.renew(share_id, lease)
                out.append(True)
            except ShareNotFound:
                out.append(False)
        return out

    # ------------------------------------------------------------------ network side
    async def handle(self, stream: ByteStream, peer: str = "?") -> None:
        """Serve one inbound stream: one exchange or several in a row, until the client
        half-closes or stays idle for ``idle_timeout``. Never raises for anything the peer
        does; a refusal or fault ends the stream.

        The first request takes a request slot before its header is read (a flood of
        streams is refused at once); later ones wait for their header without one, so an
        idle kept-open stream holds no slot.
        """
        reader = Reader(stream)
        request: Any = None
        while True:
            try:
                if request is not None:  # a later request: it is here, now it needs a slot
                    request = await self._next_request(reader, first=False)
                    if request is None:
                        break
                self._n["requests"] += 1
                try:
                    self._requests.acquire_on_behalf_of_nowait(stream)
                except trio.WouldBlock:
                    self._n["busy"] += 1
                    raise ShareRefused("busy", "busy", "too many concurrent requests") from None
                try:
                    if request is None:
                        request = await self._next_request(reader, first=True)
                    await self._dispatch(stream, reader, request, peer)
                finally:
                    self._requests.release_on_behalf_of(stream)
            except ShareRefused as fault:
                await self._refuse(stream, fault)
                return
            except (MeshError, trio.TooSlowError) as exc:
                if isinstance(exc, trio.TooSlowError):
                    self._n["timeouts"] += 1
                log.info("store: dropped stream from %s: %r", short_id(peer), exc)
                await abort(stream)
                return
        await close(stream)

    async def _refuse(self, stream: ByteStream, fault: ShareRefused) -> None:
        if fault.code == "bad_request":
            self._n["bad_requests"] += 1
        with trio.move_on_after(2):
            try:
                await send_frame(stream, fault.to_wire())
            except MeshError:
                pass
        await close(stream)

    async def _next_request(self, reader: Reader, *, first: bool) -> Any:
        """The next request on the stream; None when the client is done with it."""
        try:
            if first:
                with trio.fail_after(self.config.header_timeout):
                    body = await reader.frame(CONTROL_FRAME)
                if body is None:
                    raise PeerUnreachable("stream closed before a request arrived")
            else:  # between requests: a clean end, or a quiet client, closes the stream
                body = None
                with trio.move_on_after(self.config.idle_timeout) as idle:
                    body = await reader.frame(CONTROL_FRAME)
                if idle.cancelled_caught:
                    self._n["idle_closed"] += 1
                if body is None:
                    return None
            return wire.decode(body, *REQUESTS)
        except ProtocolError as exc:
            raise ShareRefused("bad_request", "malformed", str(exc)) from None

    async def _dispatch(self, stream: ByteStream, reader: Reader, request: Any, peer: str) -> None:
        if isinstance(request, FetchRequest):
            await self._serve_fetch(stream, request)
            return
        if isinstance(request, PutRequest):
            reply: Any = await self._serve_put(reader, request, peer)
        elif isinstance(request, HasRequest):
            reply = HeldReply(held=pack_bits(await self.has_local(request.ids)))
        elif isinstance(request, CheckRequest):
            reply = CheckedReply(whole=await self.check_local(request.id))
        elif isinstance(request, AuditRequest):
            check_ids([request.id])
            digest = await self.audit_local(request.id, request.offset, request.length, request.nonce)
            reply = ProofReply(digest=digest)
        else:
            reply = RenewedReply(renewed=pack_bits(await self.renew_local(request.ids, request.lease)))
        with trio.fail_after(self.config.reply_timeout):
            await send_frame(stream, reply)

    def _reserve(self, size: int) -> None:
        cfg = self.config
        if self._transfers >= cfg.max_transfers or self._transfer_bytes + size > cfg.max_transfer_bytes:
            self._n["busy"] += 1
            raise ShareRefused("busy", "busy", "too many transfers in flight")
        self._transfers += 1
        self._transfer_bytes += size

    def _release(self, size: int) -> None:
        self._transfers -= 1
        self._transfer_bytes -= size

    async def _serve_put(self, reader: Reader, request: PutRequest, peer: str) -> StoredReply:
        check_ids([request.id, request.file])
        self._reserve(request.size)
        try:
            await self.admit_local(request.id, request.size, peer)
            try:
                with trio.fail_after(self.config.body_timeout):
                    data = await reader.exactly(request.size)
            except TruncatedFrame as exc:
                raise ShareRefused("bad_request", "truncated", str(exc)) from None
            self._n["bytes_in"] += len(data)
            new = await self.put_local(request.id, data, request.file, request.lease, peer)
        finally:
            self._release(request.size)
        return StoredReply(new=new)

    async def _serve_fetch(self, stream: ByteStream, request: FetchRequest) -> None:
        check_ids([request.id])
        budget = request.length or MAX_SHARE_SIZE
        self._reserve(budget)  # held until the bytes are sent: they sit in memory till then
        try:
            size, data = await self.fetch_local(request.id, request.offset, request.length)
            with trio.fail_after(self.config.reply_timeout):
                await send_frame_and_body(stream, DataReply(size=size, length=len(data)), data)
        finally:
            self._release(budget)
        self._n["fetched"] += 1
        self._n["bytes_out"] += len(data)
