"""The storage routes of the local API.

JSON unless said otherwise; every error is ``{"error": {"code": ..., "message": ...}}``.

* ``POST /api/files?k=&n=&segment=&pin=1&progress=1``: the body is the file, streamed to
  ``storage/uploads``; 201 with the file id. With ``progress=1``: 200 and NDJSON lines
  ``{"event": "progress", "phase", "done", "total"}`` ending with ``{"event": "done", ...}``
  or ``{"event": "error", "status", "error": {...}}``.
* ``GET /api/files/{id}``: the bytes (``Content-Length``, ``X-Poolai-File-Id``), streamed
  from memory as segments are verified (nothing is written to disk); a body shorter than
  its length means the download failed. A ``Range: bytes=N-`` header resumes: 206 with
  ``Content-Range: bytes N-(size-1)/size`` and only the segments from the one holding byte N
  are fetched (416 if N >= size; other range forms are ignored and the whole file is sent).
* ``GET /api/files/{id}/check?progress=1``: read the whole file through the mesh, k verified
  shares per segment as a get does, and drop it: ``{file_id, size, segments, k, n, seconds,
  MBps}``, or ``unavailable`` (503) naming the segment that could not be rebuilt. Nothing
  leaves the node, so this is the mesh's read speed alone. With ``progress=1``: NDJSON
  progress lines as for a put, ending with ``done`` (the same fields) or ``error``.
* ``GET /api/files/{id}/stat?verify=1``: each segment's holders and health; ``verify`` also
  fetches k shares per segment and audits the other holders.
* ``POST /api/files/{id}/pin`` and ``.../unpin``: keep the file (renew its leases) / let its
  lease run out.
* ``GET /api/storage``: quota, use, counters, looked-after files and their health.
* ``POST /api/storage/repair``: one upkeep pass now (gc, scrub, repair, audit); its report.

Error codes: ``bad_request`` 400, ``not_found`` 404, ``file_changed`` 409,
``bad_manifest`` 502, ``put_failed``/``unavailable`` 503, ``quota`` 507, ``io_error`` 500.
Long operations run in the storage service's nursery (:class:`Job`), so a
response only follows them; a client that goes away cancels its job.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from poolai.mesh.peer_ids import peer_id_text
from poolai.node.files.catalog import MAX_NAME
from poolai.storage import erasure, integrity
from poolai.storage.errors import (
    FileChanged,
    ManifestError,
    NotEnoughShares,
    PutFailed,
    StorageError,
)

if TYPE_CHECKING:
    from poolai.node.files.service import FileHealth, PutOutcome, StorageService
    from poolai.storage.manifest import Manifest

log = logging.getLogger(__name__)

CHUNK = 1 << 20
_EXPECTED = (StorageError, OSError, ValueError, KeyError)


class ReaderGone(StorageError):
    """The client of a download went away: the get job stops."""


class Job:
    """One long operation, run in the service's nursery and followed by one response."""

    def __init__(self) -> None:
        self.phase = "start"
        self.done = 0
        self.total = 0
        self.result: Any = None
        self.error: Exception | None = None
        self.finished = trio.Event()
        self._scope = trio.CancelScope()

    def progress(self, phase: str, done: int, total: int) -> None:
        self.phase, self.done, self.total = phase, done, total

    async def run(self, op: Callable[[Callable[[str, int, int], None]], Awaitable[Any]]) -> None:
        with self._scope:
            try:
                self.result = await op(self.progress)
            except _EXPECTED as exc:
                self.error = exc
        self.finished.set()

    def cancel(self) -> None:
        self._scope.cancel()


def error_response(exc: BaseException) -> JSONResponse:
    status, code = describe_error(exc)
    return JSONResponse({"error": {"code": code, "message": _message(exc)}}, status)


def describe_error(exc: BaseException) -> tuple[int, str]:
    """(HTTP status, error code) for an operation's failure."""
    from poolai.node.files.service import QuotaRefused

    table: list[tuple[type[BaseException], int, str]] = [
        (QuotaRefused, 507, "quota"), (PutFailed, 503, "put_failed"), (FileChanged, 409, "file_changed"),
        (ManifestError, 502, "bad_manifest"), (NotEnoughShares, 503, "unavailable"),
        (KeyError, 404, "not_found"), (ValueError, 400, "bad_request"), (OSError, 500, "io_error"),
    ]
    for kind, status, code in table:
        if isinstance(exc, kind):
            return status, code
    return 500, "internal"


def _message(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return "this node does not look after that file"
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}"
    return str(exc) or type(exc).__name__


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def _file_id(request: Request) -> bytes:
    return integrity.from_hex(request.path_params["file_id"])


def put_json(outcome: PutOutcome) -> dict[str, Any]:
    m = outcome.manifest
    return {"file_id": integrity.to_hex(outcome.file_id), "size": m.size, "k": m.k, "n": m.n,
            "segment_size": m.segment_size, "segments": m.segment_count,
            "shares_stored": outcome.shares_stored, "shares_present": outcome.shares_present,
            "shares_failed": outcome.shares_failed, "manifest_copies": outcome.manifest_copies,
            "pinned": outcome.pinned, "lease_expiry": outcome.lease_expiry, "spread": outcome.spread}


def health_json(health: FileHealth) -> dict[str, Any]:
    m = health.manifest
    return {
        "file_id": integrity.to_hex(health.file_id), "size": m.size, "k": m.k, "n": m.n,
        "segment_size": m.segment_size, "segments": m.segment_count, "verified": health.verified,
        "checked_at": round(health.checked_at, 3), "counts": health.counts(),
        "spread": health.spread(), "most_on_one_peer": health.most_on_one(),
        "segment_health": [
            {"segment": s.segment, "health": s.health(m.k), "live": s.live, "spread": s.spread,
             "proven": sum(v is True for v in s.verified), "failed": sum(v is False for v in s.verified),
             "holders": [peer_id_text(p) if p is not None else None for p in s.holders],
             "proofs": list(s.verified), "healed": list(s.healed)}
            for s in health.segments
        ],
    }


def routes(service: StorageService) -> list[Route]:
    """The routes above, bound to ``service``."""

    async def receive_body(request: Request, path: Path) -> int:
        fd = await service.offload_io(os.open, path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        size = 0
        try:
            pending = bytearray()
            async for chunk in request.stream():
                pending += chunk
                if len(pending) >= CHUNK:
                    await service.offload_io(_write_all, fd, bytes(pending))
                    size += len(pending)
                    pending.clear()
            await service.offload_io(_write_all, fd, bytes(pending))
            return size + len(pending)
        finally:
            os.close(fd)

    async def post_file(request: Request) -> Response:
        """Put the request body into the mesh (query: k, n, segment, pin, progress, name)."""
        query = request.query_params
        try:
            params = erasure.ErasureParams(
                int(query.get("k", erasure.DEFAULT_K)), int(query.get("n", erasure.DEFAULT_N)),
                int(query.get("segment", erasure.DEFAULT_SEGMENT_SIZE)),
            )
        except (TypeError, ValueError) as exc:
            return error_response(ValueError(f"bad erasure parameters: {exc}"))
        pin = query.get("pin", "") in ("1", "true", "yes")
        name = query.get("name", "")[:MAX_NAME]
        path = service.scratch_path("uploads")
        try:
            await receive_body(request, path)
        except (OSError, ClientDisconnect) as exc:
            _unlink(path)
            return error_response(exc if isinstance(exc, OSError) else ValueError("upload interrupted"))
        job = Job()
        service.spawn(job.run, lambda progress: service.put(path, params=params, pin=pin, progress=progress,
                                                                name=name))
        if query.get("progress", "") in ("1", "true", "yes"):
            return StreamingResponse(_events(job, put_json, lambda: _unlink(path)),
                                     media_type="application/x-ndjson")
        try:
            await job.finished.wait()
        finally:
            job.cancel()
            _unlink(path)
        if job.error is not None:
            return error_response(job.error)
        return JSONResponse(put_json(job.result), 201)

    async def opened(request: Request) -> tuple[bytes, Manifest] | Response:
        """The path's file id and its manifest, or the error response to send instead."""
        try:
            file_id = _file_id(request)
            return file_id, await service.open_manifest(file_id)
        except NotEnoughShares as exc:
            return JSONResponse({"error": {"code": "not_found", "message": str(exc)}}, 404)
        except _EXPECTED as exc:
            return error_response(exc)

    async def get_file(request: Request) -> Response:
        """The file's bytes, fetched from its holders and verified as they stream out."""
        found = await opened(request)
        if isinstance(found, Response):
            return found
        file_id, m = found
        offset = _range_start(request.headers.get("range", ""))
        if offset and offset >= m.size:
            return JSONResponse({"error": {"code": "bad_range", "message": f"the file has {m.size} bytes"}},
                                416, headers={"Content-Range": f"bytes */{m.size}"})
        job = Job()
        send, receive = trio.open_memory_channel[list[bytes]](0)

        async def sink(at: int, blocks: list[bytes]) -> None:
            if at < offset:  # the first segment of a resumed download starts early
                blocks = _skip(blocks, offset - at)
            try:
                await send.send(blocks)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise ReaderGone("the client went away") from None

        async def op(progress: Callable[[str, int, int], None]) -> Any:
            async with send:
                return await service.stream(file_id, sink, manifest=m, progress=progress,
                                            from_offset=offset)

        service.spawn(job.run, op)
        headers = {"Content-Length": str(m.size - offset), "X-Poolai-File-Id": integrity.to_hex(file_id)}
        status = 200
        if offset:
            headers["Content-Range"] = f"bytes {offset}-{m.size - 1}/{m.size}"
            status = 206
        return StreamingResponse(_relay(job, receive, m.size - offset), status_code=status,
                                 headers=headers, media_type="application/octet-stream")

    async def check(request: Request) -> Response:
        """Read the file through the mesh as a get does, and drop the bytes."""
        found = await opened(request)
        if isinstance(found, Response):
            return found
        file_id, m = found

        async def drop(offset: int, blocks: list[bytes]) -> None:
            """Verified and decoded is all a check needs."""

        async def op(progress: Callable[[str, int, int], None]) -> dict[str, Any]:
            start = time.perf_counter()
            await service.stream(file_id, drop, manifest=m, progress=progress)
            seconds = time.perf_counter() - start
            return {"file_id": integrity.to_hex(file_id), "size": m.size, "segments": m.segment_count,
                    "k": m.k, "n": m.n, "seconds": round(seconds, 4),
                    "MBps": round(m.size / max(seconds, 1e-9) / 1e6, 1)}

        job = Job()
        service.spawn(job.run, op)
        if request.query_params.get("progress", "") in ("1", "true", "yes"):
            return StreamingResponse(_events(job, dict), media_type="application/x-ndjson")
        try:
            await job.finished.wait()
        finally:
            job.cancel()
        if job.error is not None:
            return error_response(job.error)
        return JSONResponse(job.result)

    async def stat(request: Request) -> Response:
        """Each segment's holders and health (query: verify=1 makes every holder prove it)."""
        try:
            health = await service.stat(_file_id(request),
                                        verify=request.query_params.get("verify", "") in ("1", "true"))
        except NotEnoughShares as exc:
            return JSONResponse({"error": {"code": "not_found", "message": str(exc)}}, 404)
        except _EXPECTED as exc:
            return error_response(exc)
        return JSONResponse(health_json(health))

    async def pin(request: Request) -> Response:
        """Keep the file: this node renews its leases and repairs it."""
        return await pin_or_unpin(request, service.pin)

    async def unpin(request: Request) -> Response:
        """Stop renewing the file's leases; it is collected when they end."""
        return await pin_or_unpin(request, service.unpin)

    async def pin_or_unpin(request: Request, op: Callable[[bytes], Awaitable[Any]]) -> Response:
        try:
            entry = await op(_file_id(request))
        except NotEnoughShares as exc:
            return JSONResponse({"error": {"code": "not_found", "message": str(exc)}}, 404)
        except _EXPECTED as exc:
            return error_response(exc)
        return JSONResponse({"file_id": integrity.to_hex(entry.file_id), "pinned": entry.pinned,
                             "lease_expiry": entry.lease_expiry})

    async def storage(request: Request) -> Response:
        """Quota, use, counters, and the files this node looks after with their health."""
        await service.refresh_statistics()
        files = []
        for entry in service.files.entries():
            health = service.health.get(entry.file_id)
            files.append({"file_id": integrity.to_hex(entry.file_id), "size": entry.manifest.size,
                          "k": entry.manifest.k, "n": entry.manifest.n, "pinned": entry.pinned,
                          "lease_expiry": entry.lease_expiry, "added": entry.added, "name": entry.name,
                          "health": health.counts() if health else None,
                          "spread": health.spread() if health else None,
                          "checked_at": round(health.checked_at, 3) if health else None})
        return JSONResponse({**service.status(), "files_placed": files})

    async def repair(request: Request) -> Response:
        """Run one upkeep pass now (gc, scrub, repair, audit) and return its report."""
        import dataclasses

        report = await service.upkeep()
        return JSONResponse(dataclasses.asdict(report))

    return [
        Route("/api/files", post_file, methods=["POST"]),
        Route("/api/files/{file_id}", get_file, methods=["GET"]),
        Route("/api/files/{file_id}/check", check, methods=["GET"]),
        Route("/api/files/{file_id}/stat", stat, methods=["GET"]),
        Route("/api/files/{file_id}/pin", pin, methods=["POST"]),
        Route("/api/files/{file_id}/unpin", unpin, methods=["POST"]),
        Route("/api/storage", storage, methods=["GET"]),
        Route("/api/storage/repair", repair, methods=["POST"]),
    ]


async def _events(
    job: Job, result_json: Callable[[Any], dict[str, Any]], cleanup: Callable[[], None] | None = None,
) -> AsyncIterator[bytes]:
    """NDJSON for a job followed with ``progress=1``: a progress line every 0.5 s, then
    ``done`` with ``result_json(job.result)`` or ``error``. Leaving cancels the job."""
    try:
        while not job.finished.is_set():
            with trio.move_on_after(0.5):
                await job.finished.wait()
            if not job.finished.is_set():
                yield _line({"event": "progress", "phase": job.phase, "done": job.done, "total": job.total})
        if job.error is not None:
            status, code = describe_error(job.error)
            yield _line({"event": "error", "status": status,
                         "error": {"code": code, "message": _message(job.error)}})
        else:
            yield _line({"event": "done", **result_json(job.result)})
    finally:
        job.cancel()
        if cleanup is not None:
            cleanup()


def _skip(blocks: list[bytes], count: int) -> list[bytes]:
    """``blocks`` without their first ``count`` bytes."""
    out = []
    for block in blocks:
        if count >= len(block):
            count -= len(block)
        else:
            out.append(block[count:] if count else block)
            count = 0
    return out


def _range_start(header: str) -> int:
    """N of ``bytes=N-`` (the one form a resuming client sends); 0 for anything else."""
    unit, _, spec = header.strip().partition("=")
    first, dash, last = spec.strip().partition("-")
    if unit.strip().lower() != "bytes" or not dash or last.strip() or not first.strip().isdigit():
        return 0
    return int(first)


async def _relay(
    job: Job, receive: trio.MemoryReceiveChannel[list[bytes]], length: int
) -> AsyncIterator[bytes]:
    """The verified segments a get job hands over, block by block as they come; a client
    that goes away cancels the job."""
    sent = 0
    try:
        async with receive:
            async for blocks in receive:
                for block in blocks:
                    sent += len(block)
                    yield block
        if sent < length:
            await job.finished.wait()
            log.warning("download stopped at %d of %d bytes: %s", sent, length, job.error)
    finally:
        job.cancel()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
