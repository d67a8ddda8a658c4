"""A hostile PoolAI node, for tests only: ``python tests/evil_node.py <poolai CLI arguments>``.

It is poolai's normal command line with two changes a dishonest owner could make to their
own copy of the code; nothing in poolai itself knows about them:

* **Wrong outputs.** Every output its jobs compute is corrupted (the last byte of the file,
  the exponent of the last float32, flipped) and reported with a result record whose sha256
  and size match the corrupted bytes. The output passes the submitter's hash check; only a
  redundant run on another peer shows it is wrong.
* **Forged receipts.** Each ledger page it serves (when it has receipts to serve at all)
  also carries: a receipt it signed as both worker and submitter, one "countersigned" for
  the fetching peer with its own key, one with its signature alone, and three replays of
  the first receipt on the page.

With ``POOLAI_EVIL_FLOOD=1`` it serves a receipt flood instead: every ``ledger.fetch`` is
answered with a full page of freshly minted, valid receipts and ``more: true``. Each page
uses two new throwaway keys: half its receipts are between this node and the first
(claims it signs as worker, the throwaway key pays), half between the two throwaway keys.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
import sys
import time
from pathlib import Path
from typing import Any

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from poolai.mesh import wire
from poolai.mesh.adverts import peer_id_from_public_key
from poolai.node.credits import ledger as lg
from poolai.node.credits import service as credits_service
from poolai.node.credits.receipts import (
    EARNER_DOMAIN,
    PAYER_DOMAIN,
    JobClaim,
    Receipt,
    SigningKey,
    add_signature,
    start_receipt,
)
from poolai.node.jobs import service as job_service
from poolai.node.jobs.executor import Executor
from poolai.node.jobs.runner import JobOutcome, WorkerPolicy, run_job
from poolai.node.jobs.spec import FileRef, JobSpec, JobStatus

H100 = "NVIDIA H100 80GB HBM3"
FORGED_JOB = "forged"  # job ids of forged claims start with this
FLOOD = "POOLAI_EVIL_FLOOD"
FLOOD_JOB = "flood"  # job ids of flood receipts start with this


def corrupt(path: Path) -> tuple[str, int]:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x40
    path.write_bytes(bytes(data))
    return hashlib.sha256(data).hexdigest(), len(data)


async def corrupting_run_job(job: JobSpec, files_dir: Path, out_dir: Path,
                             policy: WorkerPolicy) -> JobOutcome:
    outcome = await run_job(job, files_dir, out_dir, policy)
    result = outcome.result
    if result.status is not JobStatus.OK or result.output is None:
        return outcome
    sha, size = await trio.to_thread.run_sync(corrupt, out_dir / result.output.name)
    output = FileRef(result.output.name, sha, size)
    return dataclasses.replace(outcome, result=dataclasses.replace(result, output=output))


class CorruptingExecutor(Executor):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs, runner=corrupting_run_job)


def forged(service: credits_service.CreditsService, fetcher: str, honest: bytes | None) -> list[bytes]:
    key, me = service.key, service.peer_id
    now = time.time()

    def claim(job: str, submitter: str) -> JobClaim:
        return JobClaim(1, f"{FORGED_JOB}-{job}", me, submitter, "gpu", H100, 86400.0, b"\x07" * 32, now)

    own = wire.encode(claim("self", me))
    fake = wire.encode(claim("fake", fetcher))
    receipts = [
        wire.encode(Receipt(own, key.public_key, key.sign(EARNER_DOMAIN + own),
                            key.public_key, key.sign(PAYER_DOMAIN + own))),
        wire.encode(Receipt(fake, key.public_key, key.sign(EARNER_DOMAIN + fake),
                            key.public_key, key.sign(PAYER_DOMAIN + fake))),
        start_receipt(claim("half", fetcher), key),
    ]
    return receipts + ([honest] * 3 if honest is not None else [])


_honest_handle = credits_service.CreditsService._handle


async def forging_handle(self: credits_service.CreditsService, peer: str, request: Any) -> Any:
    reply = await _honest_handle(self, peer, request)
    if isinstance(request, lg.Fetch) and isinstance(reply, lg.Page) and reply.receipts:
        extra = forged(self, peer, reply.receipts[0])
        kept = reply.receipts[: lg.MAX_PAGE - len(extra)]
        reply = lg.Page(receipts=tuple(kept) + tuple(extra), next=reply.next, more=reply.more)
    return reply


def throwaway_key() -> SigningKey:
    private = Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return SigningKey(peer_id_from_public_key(public), public, private.sign)


_minted = itertools.count()


def flood_page(me: SigningKey, n: int) -> list[bytes]:
    """``n`` valid receipts: half between ``me`` and a new throwaway key, half between two."""
    first, second = throwaway_key(), throwaway_key()
    out = []
    for i in range(n):
        worker, payer = (me, first) if i % 2 == 0 else (first, second)
        claim = JobClaim(1, f"{FLOOD_JOB}-{next(_minted)}", worker.peer_id, payer.peer_id, "cpu", "cpu",
                         1.0, b"\x05" * 32, time.time())
        out.append(add_signature(start_receipt(claim, worker), payer))
    return out


async def flooding_handle(self: credits_service.CreditsService, peer: str, request: Any) -> Any:
    if isinstance(request, lg.Fetch):
        receipts = await trio.to_thread.run_sync(flood_page, self.key, request.limit)
        return lg.Page(receipts=tuple(receipts), next=request.since + len(receipts), more=True)
    return await _honest_handle(self, peer, request)


def command(*args: str) -> list[str]:
    """The command line that starts this node with poolai CLI ``args``: the twin of
    :func:`poolai.node.launcher.poolai_command`, to pass as a ``NodeProcess`` program."""
    return [sys.executable, str(Path(__file__).resolve()), *args]


def main() -> int:
    job_service.Executor = CorruptingExecutor  # type: ignore[misc]
    flood = os.environ.get(FLOOD) == "1"
    credits_service.CreditsService._handle = flooding_handle if flood else forging_handle  # type: ignore[method-assign]
    from poolai.node.cli.main import main as poolai_main

    return poolai_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
