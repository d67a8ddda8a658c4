"""The jobs service's local API routes.

Reading is open to local clients; everything that acts (upload, submit, cancel,
download an output) sits under ``/api/admin/`` and needs the admin token.

    POST /api/admin/jobs/files?name=N   body: the file      → {name, sha256, size, file_id}
    POST /api/admin/jobs                {job, files}        → the job's status (201)
    POST /api/admin/jobs/{id}/cancel                        → {job_id, cancelled}
    GET  /api/admin/jobs/{id}/output                        → the output file (safetensors)
    GET  /api/jobs                                          → {jobs: [status...]}
    GET  /api/jobs/{id}                                     → status
    GET  /api/jobs/{id}/wait?timeout=S                      → status, once done or after S
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from poolai.mesh.errors import MeshError
from poolai.node.jobs.files import FileTransferError
from poolai.node.jobs.spec import MAX_FILE_BYTES, InvalidJob, JobStatus

if TYPE_CHECKING:
    from poolai.node.jobs.service import JobService

log = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_SUBMIT_BYTES = 256 * 1024
MAX_WAIT_S = 60.0
CHUNK = 1 << 20


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status)


def routes(service: JobService) -> list[Route]:
    jobs_dir = service.dir

    def find(request: Request) -> Any:
        return service.jobs.get(request.path_params["job_id"])

    async def upload(request: Request) -> Response:
        name = request.query_params.get("name", "")
        if _NAME.fullmatch(name) is None or ".." in name:
            return _error("name must be a plain file name", 400)
        staging = jobs_dir / "uploads"
        await trio.to_thread.run_sync(lambda: staging.mkdir(parents=True, exist_ok=True))
        path = staging / f"{secrets.token_hex(8)}-{name}"
        digest, size = hashlib.sha256(), 0
        try:
            async with await trio.open_file(path, "wb") as f:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > MAX_FILE_BYTES:
                        return _error(f"a job file is at most {MAX_FILE_BYTES} bytes", 413)
                    digest.update(chunk)
                    await f.write(chunk)
            file_id = await service.files.put(path, f"job file {name}")
        except (FileTransferError, MeshError, OSError) as exc:
            return _error(f"could not store the file: {exc}", 503)
        finally:
            await trio.to_thread.run_sync(lambda: path.unlink(missing_ok=True))
        return JSONResponse({"name": name, "sha256": digest.hexdigest(), "size": size,
                             "file_id": file_id})

    async def submit(request: Request) -> Response:
        body = await request.body()
        if len(body) > MAX_SUBMIT_BYTES:
            return _error("request too large", 413)
        try:
            data = json.loads(body)
            if not isinstance(data, dict) or set(data) - {"job", "files"}:
                raise InvalidJob("expected {\"job\": {...}, \"files\": {name: file id}}")
            sub = service.submit(data.get("job"), data.get("files", {}))
        except (ValueError, InvalidJob) as exc:
            return _error(f"invalid job: {exc}", 400)
        except RuntimeError as exc:
            return _error(str(exc), 503)
        return JSONResponse(service.job_json(sub), 201)

    async def cancel(request: Request) -> Response:
        sub = find(request)
        if sub is None:
            return _error("no such job", 404)
        return JSONResponse({"job_id": sub.spec.job_id, "cancelled": service.cancel(sub.spec.job_id)})

    async def output(request: Request) -> Response:
        sub = find(request)
        if sub is None:
            return _error("no such job", 404)
        result = sub.result  # the job's one reported result (of the run the check agreed on)
        if result is None or result.status is not JobStatus.OK or result.output is None:
            return _error("the job has no output (yet)", 409)
        path = jobs_dir / "outputs" / f"{sub.spec.job_id}.safetensors"
        ok = await trio.to_thread.run_sync(_matches, path, result.output.sha256, result.output.size)
        if not ok:
            tmp = path.with_name(path.name + ".part")
            try:
                await trio.to_thread.run_sync(lambda: path.parent.mkdir(parents=True, exist_ok=True))
                await service.files.get(sub.output, tmp)
            except (FileTransferError, MeshError, OSError) as exc:
                return _error(f"could not fetch the output: {exc}", 503)
            if not await trio.to_thread.run_sync(_matches, tmp, result.output.sha256,
                                                 result.output.size):
                return _error("the stored output does not match the result's sha256", 502)
            await trio.to_thread.run_sync(os.replace, tmp, path)
        return FileResponse(path, media_type="application/octet-stream",
                            filename=f"{sub.spec.job_id}.safetensors")

    async def list_jobs(request: Request) -> Response:
        return JSONResponse({"jobs": [service.job_json(s) for s in reversed(service.jobs.values())]})

    async def get_job(request: Request) -> Response:
        sub = find(request)
        if sub is None:
            return _error("no such job", 404)
        return JSONResponse(service.job_json(sub))

    async def wait_job(request: Request) -> Response:
        sub = find(request)
        if sub is None:
            return _error("no such job", 404)
        try:
            timeout = min(float(request.query_params.get("timeout", "30")), MAX_WAIT_S)
        except ValueError:
            return _error("timeout must be a number of seconds", 400)
        with trio.move_on_after(max(0.0, timeout)):
            await sub.finished.wait()
        return JSONResponse(service.job_json(sub))

    return [
        Route("/api/admin/jobs/files", upload, methods=["POST"]),
        Route("/api/admin/jobs", submit, methods=["POST"]),
        Route("/api/admin/jobs/{job_id}/cancel", cancel, methods=["POST"]),
        Route("/api/admin/jobs/{job_id}/output", output),
        Route("/api/jobs", list_jobs),
        Route("/api/jobs/{job_id}", get_job),
        Route("/api/jobs/{job_id}/wait", wait_job),
    ]


def _matches(path: Path, sha256: str, size: int) -> bool:
    try:
        if path.stat().st_size != size:
            return False
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
        return h.hexdigest() == sha256
    except OSError:
        return False
