"""``poolai put / get / stat / pin / unpin``: the mesh's burst-RAID storage from the shell.

Every command talks to the node running in the data directory, through its
local API (:mod:`poolai.node.cli.local_api`): files move over the API's Unix
socket where this user can open it, else over TCP. Progress bars go to stderr
when it is a terminal; the file id (put) and tables (stat) go to stdout.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from poolai.mesh.short_ids import short_id
from poolai.node import config as config_mod
from poolai.node.cli.errors import CliError
from poolai.node.cli.local_api import CONNECT_TIMEOUT, LocalNode, find_node

MiB = 1 << 20
CHUNK = 1 << 20
READ_TIMEOUT = 300.0  # seconds the node may stay silent during a transfer


def register(sub: Any) -> None:
    """Add the storage commands to the ``poolai`` parser."""
    put = sub.add_parser("put", help="store a file in the mesh; prints its id")
    put.add_argument("file", type=Path, help="the file to store")
    put.add_argument("--k", type=int, help="shares needed to rebuild a segment (default 4)")
    put.add_argument("--n", type=int, help="shares stored per segment (default 10)")
    put.add_argument("--segment-mib", type=int, help="segment size in MiB (default 4)")
    put.add_argument("--pin", action="store_true", help="keep it until unpinned (renew its lease)")
    put.set_defaults(func=_put)

    get = sub.add_parser("get", help="fetch a file from the mesh")
    get.add_argument("file_id", help="the id 'poolai put' printed")
    where = get.add_mutually_exclusive_group(required=True)
    where.add_argument("-o", "--output", type=Path, help="where to write it")
    where.add_argument("--check", action="store_true",
                       help="read and verify the whole file through the mesh, write nothing, "
                            "and print how fast the mesh read it")
    get.set_defaults(func=_get)

    stat = sub.add_parser("stat", help="show where a file's shares are and their health")
    stat.add_argument("file_id")
    stat.add_argument("--verify", action="store_true",
                      help="also prove every share (fetch k per segment, audit the other holders)")
    stat.add_argument("--json", action="store_true", help="print the raw JSON")
    stat.set_defaults(func=_stat)

    for action, text in (("pin", "keep a file: renew its leases until unpinned"),
                         ("unpin", "let a file's lease run out")):
        cmd = sub.add_parser(action, help=text)
        cmd.add_argument("file_id")
        cmd.set_defaults(func=_pin, action=action)


# ----------------------------------------------------------------------------- plumbing


def _node(args: argparse.Namespace) -> LocalNode:
    return find_node(config_mod.load(args.data_dir, {}).data_dir)


def _check_id(text: str) -> str:
    raw = text.strip().lower()
    if len(raw) != 64 or any(c not in "0123456789abcdef" for c in raw):
        raise CliError(f"{text!r} is not a file id (64 hex digits)")
    return raw


def _fail(response: httpx.Response) -> CliError:
    try:
        body = response.read()
    except httpx.HTTPError:
        body = b""
    return _error(response.status_code, body)


def _error(status: int, body: bytes) -> CliError:
    """The one-line error for an HTTP error reply of the local API."""
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict):
        return CliError(f"{error.get('code')}: {error.get('message')}")
    if isinstance(error, str):
        return CliError(f"{status}: {error}")
    return CliError(f"the node answered HTTP {status}")


class _NodeStopped(Exception):
    """The connection to the node failed or broke during a download."""


class Bar:
    """A one-line progress bar on stderr (only drawn on a terminal)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.tty = sys.stderr.isatty()
        self.phase_start = time.monotonic()
        self.phase = ""
        self.last = 0.0

    def show(self, phase: str, done: int, total: int) -> None:
        now = time.monotonic()
        if phase != self.phase:
            self.phase, self.phase_start = phase, now
        if not self.tty or (now - self.last < 0.1 and done < total):
            return
        self.last = now
        frac = done / total if total else 1.0
        rate = done / max(now - self.phase_start, 1e-6) / 1e6
        filled = int(frac * 30)
        sys.stderr.write(f"\r{self.label} {phase:<6} [{'#' * filled}{' ' * (30 - filled)}] "
                         f"{frac * 100:5.1f}% {done / MiB:8.1f}/{total / MiB:.1f} MiB {rate:7.1f} MB/s ")
        sys.stderr.flush()

    def clear(self) -> None:
        if self.tty:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()

    def finish(self, text: str) -> None:
        self.clear()
        print(text, file=sys.stderr)


def _timeout() -> httpx.Timeout:
    # no total limit (a put of a large file takes minutes); a silent node is an error
    return httpx.Timeout(connect=CONNECT_TIMEOUT, read=READ_TIMEOUT, write=READ_TIMEOUT, pool=CONNECT_TIMEOUT)


# ----------------------------------------------------------------------------- commands


def _put(args: argparse.Namespace) -> int:
    node = _node(args)
    path: Path = args.file
    try:
        size = path.stat().st_size
        handle = path.open("rb")
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    params: dict[str, str] = {"progress": "1"}
    for key, value in (("k", args.k), ("n", args.n),
                       ("segment", args.segment_mib * MiB if args.segment_mib else None)):
        if value is not None:
            params[key] = str(value)
    if args.pin:
        params["pin"] = "1"
    params["name"] = path.name  # what the status page lists it as
    bar = Bar("put")
    start = time.monotonic()

    def body() -> Iterator[bytes]:
        sent = 0
        while chunk := handle.read(CHUNK):
            sent += len(chunk)
            bar.show("upload", sent, size)
            yield chunk

    with handle:
        result = _follow(node, "put", bar, "POST", "/api/files", params=params, content=body(),
                         headers={**node.headers, "Content-Length": str(size)})
    took = time.monotonic() - start
    bar.finish(f"put {size / MiB:.1f} MiB in {took:.1f} s ({size / max(took, 1e-6) / 1e6:.1f} MB/s), "
               f"{result['segments']} segments, {result['k']}-of-{result['n']}"
               f"{', pinned' if result.get('pinned') else ''}")
    if not result.get("shares_present"):  # all stored now, so the put saw where they went
        warning = spread_warning(result.get("spread", result["n"]), result["n"], result["k"])
        if warning:
            print(warning, file=sys.stderr)
    print(result["file_id"])
    return 0


def spread_warning(spread: int, n: int, k: int, most_on_one: int | None = None) -> str | None:
    """A warning when a file's shares sit on fewer distinct peers than it has shares per
    segment (a node alone holds all ten of a 4-of-10 file); None when each has its own.
    ``most_on_one``, where known, is the most shares of a segment one peer holds."""
    if spread >= n:
        return None
    head = f"warning: the {n} shares of each segment sit on {spread} distinct peer(s), not {n}"
    if spread <= 1:
        return f"{head}: if that peer is lost, so is the file"
    if most_on_one is not None and n - most_on_one < k:
        return f"{head}: losing the peer with the most ({most_on_one}) loses segments (each needs {k})"
    lose = most_on_one if most_on_one is not None else -(-n // spread)
    return f"{head}: losing one peer costs a segment up to {lose} shares, not one"


def _follow(node: LocalNode, what: str, bar: Bar, method: str, path: str, **request: Any) -> dict[str, Any]:
    """Send a ``progress=1`` request and follow its NDJSON events on ``bar``; the ``done``
    event. CliError for an error event, a failed request or a connection that ends early."""
    try:
        url = node.base + path
        with node.client(_timeout()) as client, client.stream(method, url, **request) as response:
            if response.status_code != 200:
                raise _fail(response)
            for line in response.iter_lines():
                if not line.strip():
                    continue
                event = json.loads(line)
                if event.get("event") == "progress":
                    bar.show(what if what != "put" else event["phase"], event["done"], event["total"])
                elif event.get("event") == "error":
                    error = event.get("error", {})
                    if bar.tty:
                        bar.finish("")
                    raise CliError(f"{error.get('code')}: {error.get('message')}")
                elif event.get("event") == "done":
                    return dict(event)
    except httpx.HTTPError as exc:
        raise CliError(f"the node did not finish the {what}: {exc}") from None
    except (ValueError, KeyError) as exc:
        raise CliError(f"the node sent a malformed progress event: {exc}") from None
    raise CliError(f"the node closed the connection before the {what} finished")


def _get(args: argparse.Namespace) -> int:
    node = _node(args)
    file_id = _check_id(args.file_id)
    if args.check:
        bar = Bar("check")
        result = _follow(node, "check", bar, "GET", f"/api/files/{file_id}/check",
                         params={"progress": "1"}, headers=node.headers)
        bar.clear()
        print(f"{result['file_id']}: read and verified {result['size'] / MiB:.1f} MiB "
              f"({result['segments']} segments, {result['k']}-of-{result['n']}) in "
              f"{result['seconds']:.1f} s ({result['MBps']:.1f} MB/s); nothing written")
        return 0
    out: Path = args.output
    # The partial download keeps the file id in its name: only bytes of this file, which the
    # node verified before sending, are ever in it, so a later run resumes after them.
    tmp = out.with_name(f"{out.name}.{file_id[:16]}.part")
    bar = Bar("get")
    start = time.monotonic()
    have = tmp.stat().st_size if tmp.exists() else 0
    progress = [have, 0]  # bytes in the part file, file size (once known)
    again = "re-run the same command to resume"
    try:
        _download(node, f"/api/files/{file_id}", tmp, have, progress, bar)
    except OSError as exc:
        raise CliError(f"cannot write {out}: {exc.strerror or exc}") from None
    except _NodeStopped:
        if progress[1]:
            reason = _last_error(node, file_id)
            raise CliError(f"download stopped at {progress[0]} of {progress[1]} bytes: {reason}; "
                           f"{again}") from None
        raise CliError(f"the node at {node.api} did not answer") from None
    received, size = progress
    if received != size:
        reason = _last_error(node, file_id)
        raise CliError(f"download stopped at {received} of {size} bytes: {reason}; {again}")
    tmp.replace(out)
    took = time.monotonic() - start
    bar.finish(f"got {size / MiB:.1f} MiB in {took:.1f} s ({size / max(took, 1e-6) / 1e6:.1f} MB/s) -> {out}")
    return 0


def _download(node: LocalNode, path: str, tmp: Path, have: int, progress: list[int],
              bar: Bar) -> None:
    """Append the file's bytes after the ``have`` already in ``tmp``; ``progress`` follows.

    The body is read with the standard library's http.client into one reused buffer: about
    0.1 ms of CPU per MB, where httpx's ``iter_raw`` spends about 1 ms, and the CLI shares
    the machine with the node that serves it. Raises _NodeStopped when the connection fails
    or breaks, OSError for the file, CliError for an error reply.
    """
    headers = {**node.headers, "Range": f"bytes={have}-"} if have else node.headers
    conn = node.connection()
    try:
        try:
            conn.connect()
            assert conn.sock is not None
            conn.sock.settimeout(READ_TIMEOUT)  # a silent node is an error; a slow file is not
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            if response.status not in (200, 206):
                body = response.read(64 << 10)
        except (http.client.HTTPException, OSError) as exc:
            raise _NodeStopped(str(exc)) from None
        if response.status == 416:  # the part is as long as the file, or longer
            total = (response.getheader("content-range") or "").rpartition("/")[2]
            if total.isdigit() and int(total) == have:  # complete, only not renamed yet
                progress[:] = [have, have]
                return
            tmp.unlink(missing_ok=True)
            raise CliError(f"{tmp.name} was longer than the file and is removed; run again")
        if response.status not in (200, 206):
            raise _error(response.status, body)
        if response.status == 200:
            have = 0  # the node sent the whole file
        progress[:] = [have, have + int(response.getheader("content-length") or "0")]
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        with tmp.open("r+b" if have else "wb") as handle:
            handle.truncate(have)
            handle.seek(have)
            while True:
                try:
                    got = response.readinto(buf)
                except (http.client.HTTPException, OSError) as exc:
                    raise _NodeStopped(str(exc)) from None
                if not got:
                    break
                handle.write(view[:got])
                progress[0] += got
                bar.show("get", progress[0], progress[1])
            handle.flush()
            os.fsync(handle.fileno())
    finally:
        conn.close()


def _last_error(node: LocalNode, file_id: str) -> str:
    try:
        with node.client(CONNECT_TIMEOUT, headers=node.headers) as client:
            status = client.get(f"{node.base}/api/storage").json()
    except (httpx.HTTPError, ValueError):
        return "the node stopped sending"
    for error in reversed(status.get("recent_errors", [])):
        if error.get("file_id") == file_id:
            return str(error.get("error"))
    return "the node stopped sending (see its log)"


def _request(node: LocalNode, method: str, path: str, timeout: float = 600.0) -> Any:
    try:
        with node.client(timeout, headers=node.headers) as client:
            response = client.request(method, node.base + path)
    except httpx.HTTPError as exc:
        raise CliError(f"the node did not answer: {exc}") from None
    if response.status_code >= 300:
        raise _fail(response)
    return response.json()


def _stat(args: argparse.Namespace) -> int:
    node = _node(args)
    file_id = _check_id(args.file_id)
    query = "?verify=1" if args.verify else ""
    data = _request(node, "GET", f"/api/files/{file_id}/stat{query}")
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"file {data['file_id']}")
    print(f"size {data['size']} bytes, {data['k']}-of-{data['n']}, {data['segments']} segments of "
          f"{data['segment_size'] / MiB:g} MiB{', verified' if data['verified'] else ''}")
    print(f"{'seg':>5}  {'health':<12} {'live':>5} {'peers':>5} {'proven':>6}  holders (share 0..n-1; "
          f"+ proven, ! failed, - none)")
    for seg in data["segment_health"]:
        cells = []
        for holder, proof in zip(seg["holders"], seg["proofs"], strict=True):
            mark = {True: "+", False: "!", None: ""}[proof]
            cells.append("-" if holder is None else short_id(holder) + mark)
        print(f"{seg['segment']:>5}  {seg['health']:<12} {seg['live']:>2}/{data['n']:<2} "
              f"{seg['spread']:>5} {seg['proven']:>6}  {' '.join(cells)}")
    counts = data["counts"]
    print(f"segments: {counts['healthy']} healthy, {counts['concentrated']} concentrated (on fewer "
          f"than {data['n']} peers), {counts['degraded']} degraded, {counts['lost']} lost")
    warning = spread_warning(data["spread"], data["n"], data["k"], data["most_on_one_peer"])
    if warning and data["segments"]:
        print(warning)
    return 0


def _pin(args: argparse.Namespace) -> int:
    node = _node(args)
    file_id = _check_id(args.file_id)
    data = _request(node, "POST", f"/api/files/{file_id}/{args.action}")
    until = time.strftime("%Y-%m-%d %H:%M", time.localtime(data["lease_expiry"]))
    state = "pinned" if data["pinned"] else "unpinned (kept until its lease ends)"
    print(f"{data['file_id']} {state}; lease until {until}")
    return 0
