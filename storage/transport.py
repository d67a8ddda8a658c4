"""The client side of ``/poolai/store/2.0.0``: a :class:`~poolai.storage.raid.ShareTransport` on libp2p.

Peers are named by their raw peer id bytes (the multihash, what placement
hashes onto the ring); they are turned into base58 only to open a stream.
Requests to this node itself skip the network and go to its own
:class:`~poolai.storage.server.ShareServer`, through the same checks.

Every fault of the remote side (unreachable, reset, malformed or short
reply, error reply) is raised as :class:`~poolai.storage.errors.PeerError`
(error replies as its subclass ``ShareRefused``), as the ShareTransport
contract requires. The caller owns the deadline; ``fallback_timeout`` only
stops an exchange nobody bounded from hanging forever. A stream whose
exchange failed is reset so the holder stops sending at once. Exchanges are
carried by tasks the caller's cancellation cannot reach (see ``_remote``).

Every exchange (store included: it is idempotent) keeps its stream open after it
ends cleanly, and the next exchange with that holder reuses it (see ``_exchange``);
holders not connected are dialled first at the addresses ``addresses``
gives (dialling and kept streams: :mod:`poolai.storage.holder_links`). Holders serve shares without hashing
them; a share that fails the reader's hash check is reported back
(``report_corrupt``) and the holder hashes its copy, dropping a rotten one.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

from poolai.mesh import wire
from poolai.mesh.bounded import Memo
from poolai.mesh.errors import MeshError, ProtocolError
from poolai.mesh.host import Libp2pStream, MeshHost
from poolai.mesh.peer_ids import peer_id_bytes, peer_id_text
from poolai.mesh.short_ids import short_hex, short_id, short_peer
from poolai.storage import integrity
from poolai.storage import protocol as sp
from poolai.storage.errors import PeerError
from poolai.storage.holder_links import HolderLinks
from poolai.storage.placement import PeerId
from poolai.storage.server import ShareServer
from poolai.storage.transfers import MAX_HAS_IDS, ShareMeta

log = logging.getLogger(__name__)

REPORT_TIMEOUT = 30.0  # seconds a holder gets to re-check a share we found corrupt


@dataclasses.dataclass(frozen=True, slots=True)
class TransportStatistics:
    """Outbound counters since start (a snapshot); ``refusals`` counts error replies by reason."""

    requests: int
    failures: int
    bytes_sent: int
    bytes_received: int
    reused_streams: int  # exchanges carried by a stream kept open from an earlier one
    stale_streams: int  # kept streams found closed by their holder (the exchange was retried)
    corrupt_reports: int  # shares that failed our hash check, reported to their holder
    refusals: dict[str, int]


class Libp2pShareTransport:
    """Share exchanges with peers over a :class:`MeshHost`; implements ``ShareTransport``.

    Run :meth:`run` in a nursery to make exchanges immune to their callers'
    cancellation (see :meth:`_remote`); without it they run in the caller's task.
    """

    def __init__(
        self, host: MeshHost, *, local: ShareServer | None = None, fallback_timeout: float = 120.0,
        max_exchanges: int = 128, addresses: Callable[[str], list[str]] | None = None,
        max_idle_per_peer: int = 4, idle_keep: float = 10.0,
        dial_failed: Callable[[str], None] | None = None, redial_after: float = 5.0,
    ) -> None:
        self._host = host
        self._local = local
        self._me = peer_id_bytes(host.peer_id)
        self._timeout = fallback_timeout
        self._names: Memo[PeerId, str] = Memo(lambda peer: peer_id_text(bytes(peer)))
        self._n = {"requests": 0, "failures": 0, "bytes_sent": 0, "bytes_received": 0,
                   "stale_streams": 0, "corrupt_reports": 0}
        self._refusals: dict[str, int] = {}
        self._nursery: trio.Nursery | None = None
        self._slots = trio.Semaphore(max_exchanges)
        self._links = HolderLinks(host, addresses=addresses, dial_failed=dial_failed,
                                  redial_after=redial_after, max_idle_per_peer=max_idle_per_peer,
                                  idle_keep=idle_keep)

    @property
    def me(self) -> PeerId:
        """This node's own peer id bytes."""
        return self._me

    def statistics(self) -> TransportStatistics:
        return TransportStatistics(**{**self._n, "reused_streams": self._links.reused},
                                   refusals=dict(self._refusals))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the tasks that carry exchanges, until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    # ------------------------------------------------------------------ ShareTransport
    async def store(self, peer: PeerId, share_id: bytes, data: bytes, meta: ShareMeta) -> None:
        """Ask ``peer`` to keep ``data``; raises PeerError (sp.ShareRefused for quota, hash, busy ...)."""
        if len(data) > sp.MAX_SHARE_SIZE:
            raise ValueError(f"share of {len(data)} bytes exceeds {sp.MAX_SHARE_SIZE}")
        if self._is_local(peer):
            await self._counted(self._local_store(share_id, data, meta))
            return
        header = sp.PutRequest(id=share_id, file=meta.file_id, lease=meta.lease_expiry, size=len(data))
        # Storing is idempotent (content-addressed; a repeat only extends the lease), so a
        # put's streams are kept and reused like a get's: a stream open and its negotiation
        # cost both sides about as much CPU as receiving and storing a third of a 1 MiB share.
        await self._remote(peer, self._store_io, header, data, keep=True)
        self._n["bytes_sent"] += len(data)

    async def fetch(self, peer: PeerId, share_id: bytes) -> bytes:
        """The whole share ``peer`` holds under ``share_id`` (unverified: callers check the hash)."""
        return await self.fetch_range(peer, share_id, 0, 0)

    async def fetch_range(self, peer: PeerId, share_id: bytes, offset: int, length: int) -> bytes:
        """``length`` bytes of a share from ``offset`` (0 = to the end)."""
        if self._is_local(peer):
            local = self._require_local()
            return (await self._counted(local.fetch_local(share_id, offset, length)))[1]
        request = sp.FetchRequest(id=share_id, offset=offset, length=length)
        data = await self._remote(peer, self._fetch_io, request, keep=True)
        self._n["bytes_received"] += len(data)
        return data

    async def has(self, peer: PeerId, share_ids: Sequence[bytes]) -> list[bool]:
        """For each of at most ``MAX_HAS_IDS`` ids, whether ``peer`` holds it."""
        if len(share_ids) > MAX_HAS_IDS:
            raise ValueError(f"at most {MAX_HAS_IDS} ids per request")
        if not share_ids:
            return []
        if self._is_local(peer):
            return await self._counted(self._require_local().has_local(share_ids))
        reply = await self._remote(peer, self._small_io, sp.HasRequest(ids=list(share_ids)), sp.HeldReply,
                                   keep=True)
        return sp.unpack_bits(reply.held, len(share_ids))

    async def audit(
        self, peer: PeerId, share_id: bytes, offset: int, length: int, nonce: bytes
    ) -> bytes:
        """``peer``'s proof of possession of ``share[offset:offset+length]`` for ``nonce``."""
        if self._is_local(peer):
            local = self._require_local()
            return await self._counted(local.audit_local(share_id, offset, length, nonce))
        request = sp.AuditRequest(id=share_id, offset=offset, length=length, nonce=nonce)
        reply = await self._remote(peer, self._small_io, request, sp.ProofReply, keep=True)
        if len(reply.digest) != integrity.HASH_SIZE:
            raise PeerError("audit digest has the wrong size")
        return reply.digest

    async def check(self, peer: PeerId, share_id: bytes) -> bool:
        """Ask ``peer`` to hash its copy of ``share_id`` again; whether it is whole (a rotten
        copy is deleted by the holder)."""
        if self._is_local(peer):
            return await self._counted(self._require_local().check_local(share_id))
        reply = await self._remote(peer, self._small_io, sp.CheckRequest(id=share_id), sp.CheckedReply,
                                   keep=True)
        return reply.whole

    def report_corrupt(self, peer: PeerId, share_id: bytes) -> None:
        """Have ``peer`` check a share it sent wrong, in the background (see ``check``)."""
        self._n["corrupt_reports"] += 1
        if self._nursery is None:
            log.info("no task to report corrupt %s to %s", short_hex(share_id), short_peer(peer))
            return

        async def report() -> None:
            try:
                with trio.fail_after(REPORT_TIMEOUT):
                    whole = await self.check(peer, share_id)
            except (PeerError, trio.TooSlowError) as exc:
                log.info("reporting corrupt %s failed: %r", short_hex(share_id), exc)
                return
            log.info("holder %s checked %s: %s", short_peer(peer), short_hex(share_id),
                     "whole (it sent something else)" if whole else "rotten or gone")

        self._nursery.start_soon(report)

    async def renew(self, peer: PeerId, share_ids: Sequence[bytes], lease_expiry: int) -> list[bool]:
        """Extend the leases of the listed shares ``peer`` holds; which ones it held."""
        if len(share_ids) > MAX_HAS_IDS:
            raise ValueError(f"at most {MAX_HAS_IDS} ids per request")
        if not share_ids:
            return []
        if self._is_local(peer):
            return await self._counted(self._require_local().renew_local(share_ids, lease_expiry))
        request = sp.RenewRequest(ids=list(share_ids), lease=lease_expiry)
        reply = await self._remote(peer, self._small_io, request, sp.RenewedReply, keep=True)
        return sp.unpack_bits(reply.renewed, len(share_ids))

    # ------------------------------------------------------------------ internals
    def _is_local(self, peer: PeerId) -> bool:
        return peer == self._me and self._local is not None

    def _require_local(self) -> ShareServer:
        assert self._local is not None
        return self._local

    async def _local_store(self, share_id: bytes, data: bytes, meta: ShareMeta) -> None:
        local = self._require_local()
        await local.admit_local(share_id, len(data))
        await local.put_local(share_id, data, meta.file_id, meta.lease_expiry)

    async def _counted(self, op: Any) -> Any:
        self._n["requests"] += 1
        try:
            return await op
        except sp.ShareRefused as exc:
            self._refused(exc)
            raise

    def _refused(self, exc: sp.ShareRefused) -> None:
        self._n["failures"] += 1
        self._refusals[exc.reason] = self._refusals.get(exc.reason, 0) + 1

    def _name(self, peer: PeerId) -> str:
        try:
            return self._names(peer)
        except ValueError as exc:
            raise PeerError(f"not a peer id: {exc}") from None

    async def _remote(
        self, peer: PeerId, io: Callable[..., Awaitable[Any]], *args: Any, keep: bool = False
    ) -> Any:
        """Run one exchange with ``peer`` where the caller's cancellation cannot reach it.

        py-libp2p 0.8 is not cancel-safe: a task cancelled while it writes, or
        while a read of it sends a window update, may have advanced the Noise
        nonce without sending the frame, and the peer then drops the whole
        connection. Callers here cancel routinely (a get cancels the fetches
        it no longer needs), so the exchange runs in a task of :meth:`run`'s
        nursery; a cancelled caller stops waiting at once and the exchange
        finishes or fails on its own (within ``fallback_timeout``).
        """
        name = self._name(peer)
        self._n["requests"] += 1
        if self._nursery is None:
            return await self._exchange(name, io, *args, keep=keep)
        await self._slots.acquire()
        done, abandoned = trio.Event(), trio.Event()
        outcome: dict[str, Any] = {}

        async def carry() -> None:
            try:
                outcome["value"] = await self._exchange(name, io, *args, abandoned=abandoned, keep=keep)
            except Exception as exc:  # handed to the caller, who re-raises it
                outcome["error"] = exc
            finally:
                self._slots.release()
                done.set()

        self._nursery.start_soon(carry)
        try:
            await done.wait()
        except BaseException:
            abandoned.set()  # the exchange stops (and resets its stream) at its next read or write
            raise
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]

    async def _exchange(
        self, name: str, io: Callable[..., Awaitable[Any]], *args: Any,
        abandoned: trio.Event | None = None, keep: bool = False,
    ) -> Any:
        """Run ``io(stream, *args, eof=...)`` on a stream to ``name``; faults become PeerError,
        failed streams are reset.

        With ``keep`` the exchange may use a stream kept open from an earlier one and, when
        it ends cleanly, keeps its stream for the next (no half-close after the request).
        A kept stream the holder has meanwhile closed fails before any reply: the exchange
        is then tried once more on a fresh stream (only idempotent requests keep streams).
        """
        stream: Libp2pStream | None = None
        reused = False
        try:
            with trio.fail_after(self._timeout):
                await self._links.dial(name)
                if keep:
                    stream = await self._links.take_idle(name)
                    reused = stream is not None
                if stream is None:
                    stream = await self._host.open_stream(name, sp.PROTOCOL)
                wrapped = stream if abandoned is None else _Abandonable(stream, abandoned)
                result = await io(wrapped, *args, eof=not keep)
        except BaseException as exc:
            if stream is not None:
                await sp.abort(stream)  # the holder stops sending at once
            if reused and isinstance(exc, MeshError | trio.BrokenResourceError) and not (
                isinstance(exc, sp.ShareRefused) or (abandoned is not None and abandoned.is_set())
            ):
                self._n["stale_streams"] += 1
                return await self._exchange(name, io, *args, abandoned=abandoned, keep=False)
            if isinstance(exc, sp.ShareRefused):
                self._refused(exc)
                raise
            if isinstance(exc, MeshError | trio.BrokenResourceError | trio.ClosedResourceError):
                self._n["failures"] += 1
                raise PeerError(f"{sp.PROTOCOL} with {short_id(name)}: {exc}") from None
            if isinstance(exc, trio.TooSlowError):
                self._n["failures"] += 1
                raise PeerError(
                    f"{sp.PROTOCOL} with {short_id(name)} took over {self._timeout:g} s") from None
            raise
        if keep:
            await self._links.keep_idle(name, stream)
        else:
            await sp.close(stream)
        return result

    async def _small_io(self, stream: Libp2pStream, request: Any, reply_type: type, *, eof: bool) -> Any:
        reader = await self._request(stream, request, eof)
        reply = await self._reply(reader, reply_type)
        _check_drained(reader)
        return reply

    async def _fetch_io(self, stream: Libp2pStream, request: sp.FetchRequest, *, eof: bool) -> bytes:
        reader = await self._request(stream, request, eof)
        reply = await self._reply(reader, sp.DataReply)
        length, offset = request.length, request.offset
        if reply.length > reply.size or (length and reply.length != length) or (
            not length and reply.length != reply.size - offset
        ):
            raise PeerError(f"holder announced {reply.length} bytes for a request of {length}")
        data = await reader.exactly(reply.length)
        _check_drained(reader)
        return data

    async def _request(self, stream: Libp2pStream, request: Any, eof: bool = True) -> sp.Reader:
        await sp.send_frame(stream, request)
        if eof:
            await sp.send_eof(stream)
        return sp.Reader(stream)

    async def _reply(self, reader: sp.Reader, reply_type: type) -> Any:
        body = await reader.frame(sp.CONTROL_FRAME)
        if body is None:
            raise ProtocolError("holder closed the stream without replying")
        reply = wire.decode(body, wire.ErrorReply, reply_type)
        if isinstance(reply, wire.ErrorReply):
            raise sp.ShareRefused.from_remote(reply.code, reply.message)
        return reply

    async def _store_io(
        self, stream: Libp2pStream, header: sp.PutRequest, data: bytes, *, eof: bool = True
    ) -> None:
        """Write header and body while reading the reply, which may be an early refusal.

        A refusal or a fault is raised as it came (sp.ShareRefused, MeshError, a trio stream
        error), so that :meth:`_exchange` can tell a kept stream the holder closed meanwhile
        from a holder that said no.
        """
        failed: list[BaseException] = []
        sent = trio.Event()

        async def send() -> None:
            try:
                await sp.send_frame_and_body(stream, header, data)
                if eof:
                    await sp.send_eof(stream)
                sent.set()
            except (MeshError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                failed.append(exc)  # the holder reset us; its reply (if any) says why

        reader = sp.Reader(stream)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            try:
                await self._reply(reader, sp.StoredReply)
            except (sp.ShareRefused, MeshError) as exc:
                failed.insert(0, exc)
                nursery.cancel_scope.cancel()  # writes are shielded: this only stops between chunks
            # After a success the holder has read every byte: the send is finishing, not waiting.
        if failed:
            raise failed[0]
        if not sent.is_set():
            raise ProtocolError("holder acknowledged a share before receiving all of it")
        _check_drained(reader)


def _check_drained(reader: sp.Reader) -> None:
    if reader.pending:  # a kept stream must start the next exchange clean
        raise ProtocolError(f"holder sent {reader.pending} bytes more than its reply")


class _Abandonable:
    """A stream whose next read or write fails once its caller has gone (no cancellation)."""

    def __init__(self, stream: Libp2pStream, abandoned: trio.Event) -> None:
        self._stream = stream
        self._abandoned = abandoned

    def _check(self) -> None:
        if self._abandoned.is_set():
            raise trio.ClosedResourceError("the caller no longer waits for this exchange")

    async def send_all(self, data: bytes) -> None:
        self._check()
        await self._stream.send_all(data)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        self._check()
        return await self._stream.receive_some(max_bytes)

    async def send_eof(self) -> None:
        self._check()
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def reset(self) -> None:
        await self._stream.reset()
