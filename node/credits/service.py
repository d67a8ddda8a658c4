"""The "credits" node service: earn and pay with receipts, keep the ledger, serve it.

It owns the :class:`~poolai.node.credits.ledger.Ledger` and a :class:`~poolai.node.credits.balances.Tally`
of every receipt held, serves ``/poolai/ledger/1.0.0`` (``ledger.fetch`` pages and
``ledger.sign`` countersigning), pulls new receipts from connected peers every
``credits_sync_interval`` seconds, and re-sends claims awaiting the other party's
signature with backoff until they are signed or refused. What it keeps of other
peers' receipts is bounded by :mod:`poolai.node.credits.retention` (its own always;
others' only for tracked peers, per peer and in all); the connected peers and its own
counterparties are the tracked peers.

Other services call it through these seams (all on the event loop):

* worker, once its result was accepted: :meth:`CreditsService.claim_job`;
* submitter, once it has checked a result: :meth:`CreditsService.job_checked` (and
  :meth:`replicate` when it submits, :meth:`job_failed` when a result fails its check);
* data owner, after an upkeep pass: :meth:`CreditsService.storage_audited`;
* a worker's queue: :meth:`priority_of`; the capacity ranking: :meth:`reputation_of`.

Local API: ``GET /api/credits`` (this node's totals and statement; ``?format=csv``
for the statement as CSV) and ``GET /api/credits/balances`` (every peer's account).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from poolai.mesh import rpc
from poolai.mesh.backoff import Backoff
from poolai.mesh.bounded import CappedDict
from poolai.mesh.errors import MeshError, ProtocolError, RemoteError
from poolai.mesh.short_ids import short_hex, short_id
from poolai.node.credits import ledger as lg
from poolai.node.credits.balances import Tally, check_all
from poolai.node.credits.policy import (
    Countersign,
    Event,
    Expectation,
    PayerBook,
    RedundancyPolicy,
    Standing,
    Verdict,
    countersign_rule,
    payer_refusal,
    priority_for,
    reputation,
)
from poolai.node.credits.receipts import (
    MILLI,
    AuditEvidence,
    Checked,
    JobClaim,
    ReceiptRejected,
    SigningKey,
    StorageClaim,
    add_signature,
    check_receipt,
    device_of,
    parties_of,
    start_receipt,
)
from poolai.node.credits.retention import Bounds, Held, Retention, wanted

if TYPE_CHECKING:
    from poolai.node.capacity.rules import CapacityTable
    from poolai.node.context import NodeContext

log = logging.getLogger(__name__)

SIGN_TIMEOUT_S = 20.0  # one ledger.sign exchange (the server may wait SIGN_WAIT_S inside)
SIGN_WAIT_S = 10.0  # a payer waits this long for its own check of the result to finish
FETCH_TIMEOUT_S = 10.0
PAGES_PER_SYNC = 16  # per peer and sync round
SYNC_FANOUT = 8  # peers fetched from at once
SEND_FANOUT = 8  # claims sent for signing at once
RETRY_MAX_S = 600.0
CLAIM_BACKOFF = Backoff(base=2.0, cap=RETRY_MAX_S)  # 2, 4, 8 ... 512, 600 s between sends
MAX_TRIES = 24  # a claim nobody signs is dropped after this many sends (about 3 hours)
MAX_EXPECTED = 10_000  # checked results (and replicated jobs) remembered for workers' claims
MAX_CURSORS = 1024  # peers whose sync cursor is remembered; a forgotten one starts from 0


@dataclass
class _Pending:
    checked: Checked
    tries: int = 0
    next_try: float = 0.0


class CreditsService:
    name = "credits"

    def __init__(self, ctx: NodeContext, *, adverts: CapacityTable | None = None,
                 rng: random.Random | None = None, durable: bool = True,
                 bounds: Bounds | None = None) -> None:
        """``adverts`` (the capacity table) tells which GPUs a worker advertised, to bound
        what it may claim; without it claims are checked against the job alone.
        ``bounds``: how many of other peers' receipts the ledger keeps (default: Bounds())."""
        self.ctx = ctx
        self.host = ctx.host
        self.peer_id = ctx.host.peer_id
        self.adverts = adverts
        pair = ctx.host.key_pair
        self.key = SigningKey(self.peer_id, pair.public_key.to_bytes(), pair.private_key.sign)
        cfg = ctx.config
        self.policy = RedundancyPolicy(fraction=cfg.redundancy_fraction)
        self.sync_interval = cfg.credits_sync_interval
        self.payout_address = cfg.payout_address
        self.tally = Tally()
        self.retention = Retention(self.peer_id, bounds or Bounds())
        self._counterparties: set[str] = set()  # peers we hold a receipt with: tracked
        self.ledger: lg.Ledger | None = None
        self._durable = durable
        self._rng = rng or random.SystemRandom()
        self.payer = PayerBook(self.policy, MAX_EXPECTED)
        self._arrived: dict[tuple[str, str], trio.Event] = {}  # (job id, worker) claims waiting
        self._pending: dict[bytes, _Pending] = {}
        self._sending: set[bytes] = set()
        self._wake = trio.Event()
        self._cursors: CappedDict[str, int] = CappedDict(MAX_CURSORS, renew=True)  # per peer synced from
        self._writing = trio.Lock()  # one admission and ledger write at a time
        self._rejected: dict[str, int] = {}
        self._synced_at: float | None = None
        self._standings: dict[str, Standing] = {}
        self._dirty: set[str] = set()  # standings changed since the last flush
        self._flush = trio.Event()
        self._stored = trio.Event()  # set (and replaced) whenever receipts are stored
        self.sign_wait_s = SIGN_WAIT_S
        self._send_limiter = trio.CapacityLimiter(SEND_FANOUT)

    # ------------------------------------------------------------------ NodeService
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        path = self.ctx.data_dir / "ledger"
        ledger = await trio.to_thread.run_sync(lambda: lg.Ledger(path, durable=self._durable))
        try:
            self.ledger = ledger
            held, pending = await trio.to_thread.run_sync(_load, ledger)
            self._standings = await trio.to_thread.run_sync(ledger.standings)
            evict = {h.receipt_id: h for h in self.retention.load(_held(c) for c in held)}
            if evict:  # the bounds shrank, or the ledger predates them: compact it now
                await trio.to_thread.run_sync(ledger.evict, list(evict.values()))
                log.info("ledger: %d receipt(s) of other peers evicted to stay within %s",
                         len(evict), self.retention.bounds)
            for checked in held:
                if checked.receipt_id not in evict:
                    self._count(checked)
            for checked in pending:
                self._pending[checked.claim_key] = _Pending(checked)
            log.info("ledger: %d receipt(s), %d claim(s) awaiting a signature", len(held), len(pending))
            self.host.serve(lg.PROTOCOL, rpc.Service("ledger", self._handle, rpc.ServiceConfig(
                (lg.Fetch, lg.SignRequest), max_frame=lg.MAX_FRAME, handler_timeout=SIGN_WAIT_S + 5)))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._send_loop, nursery)
                nursery.start_soon(self._sync_loop)
                nursery.start_soon(self._flush_loop)
                task_status.started()
        finally:
            self.ledger = None
            with trio.CancelScope(shield=True):
                try:
                    await trio.to_thread.run_sync(ledger.put_standings, self._take_dirty())
                except lg.LedgerError as exc:
                    log.warning("could not save peers' standings: %s", exc)
                await trio.to_thread.run_sync(ledger.close)

    def status(self) -> dict[str, Any]:
        """This node's totals (credits with 3 decimals, exact millicredits alongside)."""
        account = self.tally.account(self.peer_id)
        worst = sorted(self._standings.items(), key=lambda kv: (reputation(kv[1]), kv[0]))[:32]
        return {
            "peer_id": self.peer_id,
            "earned": account.earned / MILLI, "spent": account.spent / MILLI,
            "balance": account.balance / MILLI,
            "earned_milli": account.earned, "spent_milli": account.spent,
            "balance_milli": account.balance, "receipts": account.receipts,
            "priority": priority_for(account.balance),
            "payout_address": self.payout_address,
            "ledger": {"held": len(self.tally), "pending": len(self._pending),
                       "superseded": self.tally.superseded,
                       "rejected": dict(self._rejected), "synced_at": self._synced_at,
                       "others": {"receipts": len(self.retention), "bytes": self.retention.bytes,
                                  "peers": self.retention.peers(), "evicted": self.retention.evicted,
                                  "not_kept": dict(self.retention.refused)}},
            "redundancy_fraction": self.policy.fraction,
            "reputation": {peer: round(reputation(s), 4) for peer, s in worst},
        }


    # ------------------------------------------------------------------ seams for other services
    def balance_of(self, peer: str) -> int:
        """``peer``'s balance in millicredits, from the receipts this node holds."""
        return self.tally.account(peer).balance

    def priority_of(self, submitter: str) -> int:
        """Queue priority of ``submitter``'s jobs on this worker (see credit_policy.priority_for)."""
        return priority_for(self.balance_of(submitter))

    def reputation_of(self, peer: str) -> float:
        """``peer``'s reputation score in (0, 1) as this node has seen it (0.5: a stranger)."""
        return reputation(self._standings.get(peer, Standing()))

    def replicate(self) -> bool:
        """Whether the job about to be submitted should also run on a second peer."""
        return self.policy.choose(self._rng)

    async def claim_job(self, *, job_id: str, submitter: str, device: str, seconds: float,
                        result_hash: bytes, finished_at: float | None = None) -> bytes:
        """Worker side: sign a claim for a finished job and have the submitter countersign it.

        ``device`` is the worker's device text (``"cuda:0 (NVIDIA H100 …)"`` or ``"cpu …"``);
        ``seconds`` are GPU-seconds for a GPU job, CPU-seconds otherwise; ``result_hash``
        is the sha256 the output is stored under. The claim is on disk when this returns
        (its claim key is returned; b"" for our own job, which earns nothing); it is sent
        in the background, with retries. Raises ReceiptRejected (a MeshError) for a malformed claim.
        """
        if submitter == self.peer_id:
            return b""
        kind, device_class = device_of(device)
        claim = JobClaim(version=1, job_id=job_id, worker=self.peer_id, submitter=submitter,
                         device=kind, device_class=device_class, seconds=min(max(seconds, 0.0), 86400.0),
                         result_hash=result_hash,
                         finished_at=time.time() if finished_at is None else finished_at)
        return await self._start(claim)

    def job_checked(self, *, job_id: str, worker: str, result_hash: bytes, device: str,
                    max_seconds: float, replicated: bool = False) -> Verdict | None:
        """Submitter side: ``worker``'s output for ``job_id`` exists and hashes to ``result_hash``.

        ``device`` is "gpu" or "cpu" as the job required; ``max_seconds`` the most this node
        pays for (the time it saw the job take, times the worker's cores for a CPU job).
        For a replicated job, returns the replica check's verdict: RUN_AGAIN asks for one
        more run on a peer outside ``verdict.exclude``; only credited workers get signed.
        """
        if worker == self.peer_id:
            return None  # our own work earns nothing
        verdict, events = self.payer.checked(job_id, worker, Expectation(result_hash, device, max_seconds),
                                             replicated=replicated)
        for peer, event in events:
            self._record(peer, event)
            if event is Event.MISMATCHED:
                log.warning("job %s: %s returned an output the other runs disagree with", job_id,
                            short_id(peer))
            arrived = self._arrived.get((job_id, peer))
            if arrived is not None:
                arrived.set()
        return verdict

    def job_failed(self, worker: str, job_id: str | None = None) -> None:
        """Submitter side: ``worker``'s result failed its check (output missing or hash wrong).

        With ``job_id``, the worker's claim for that job is refused at once (not left to
        retry until it gives up).
        """
        self._record(worker, Event.FAILED)
        if job_id is not None:
            self.payer.failed(job_id, worker)
            arrived = self._arrived.get((job_id, worker))
            if arrived is not None:
                arrived.set()

    async def storage_audited(self, *, holder: str, epoch: int, bytes_held: int, shares: int,
                              audits: Sequence[AuditEvidence]) -> bytes:
        """Owner side: ``holder`` kept ``bytes_held`` of our shares through ``epoch`` (unix hour)
        and passed ``audits`` (at most credits.MAX_AUDITS, all within the epoch); pay for it.

        Call it once per holder and epoch, after the epoch: the claim key is (owner, holder,
        epoch), and of two receipts for one key only the smaller counts. The holder is asked
        to countersign in the background. Raises ReceiptRejected (a MeshError) for a malformed claim.
        """
        claim = StorageClaim(version=1, owner=self.peer_id, holder=holder, epoch=epoch,
                             bytes_held=bytes_held, shares=shares, audits=tuple(audits))
        return await self._start(claim)

    def awaiting_signature(self) -> list[bytes]:
        """Claim keys of this node's claims that the other party has not countersigned yet."""
        return list(self._pending)

    async def wait_signed(self, claim_key: bytes) -> Checked:
        """The receipt for ``claim_key`` once both parties signed it (the caller sets a deadline).

        Raises LookupError when this node is not waiting for it (refused, or never claimed).
        """
        while (checked := self.tally.counted(claim_key)) is None:
            if claim_key not in self._pending:
                raise LookupError("no claim with this key awaits a signature")
            await self._stored.wait()
        return checked

    async def sync_now(self, peers: Sequence[str] | None = None) -> int:
        """Pull new receipts from ``peers`` (default: every connected peer); returns how many."""
        targets = list(self.host.member_peers() if peers is None else peers)
        limiter = trio.CapacityLimiter(SYNC_FANOUT)
        added = 0

        async def one(peer: str) -> None:
            nonlocal added
            async with limiter:
                try:
                    new = await self._pull(peer)
                    added += new  # read ``added`` only after the await: the tasks interleave
                except (MeshError, lg.LedgerError) as exc:
                    log.debug("ledger sync with %s failed: %s", short_id(peer), exc)

        async with trio.open_nursery() as nursery:
            for peer in targets:
                if peer != self.peer_id:
                    nursery.start_soon(one, peer)
        self._synced_at = time.time()
        return added

    # ------------------------------------------------------------------ claims we start
    async def _start(self, claim: JobClaim | StorageClaim) -> bytes:
        checked = check_receipt(start_receipt(claim, self.key), complete=False)
        held = self.tally.counted(checked.claim_key)
        if held is not None:
            return checked.claim_key  # already paid; a repeat call changes nothing
        ledger = self._ledger()
        try:
            await trio.to_thread.run_sync(ledger.put_pending, checked)
        except lg.LedgerError as exc:  # a full disk: the claim is sent all the same
            log.warning("claim %s kept in memory only (lost if the node restarts first): %s",
                        short_hex(checked.claim_key), exc)
        self._pending[checked.claim_key] = _Pending(checked)
        self._wake.set()
        return checked.claim_key

    async def _send_loop(self, nursery: trio.Nursery) -> None:
        while True:
            now = trio.current_time()
            for key, p in list(self._pending.items()):
                if p.next_try <= now and key not in self._sending:
                    self._sending.add(key)
                    nursery.start_soon(self._send, key, p)
            waits = [p.next_try for k, p in self._pending.items() if k not in self._sending]
            with trio.move_on_at(min(waits) if waits else now + RETRY_MAX_S):
                await self._wake.wait()
            self._wake = trio.Event()

    async def _send(self, key: bytes, p: _Pending) -> None:
        mine = p.checked
        other = mine.payer if mine.earner == self.peer_id else mine.earner
        try:
            async with self._send_limiter:
                reply = await self.host.request(other, lg.PROTOCOL, lg.SignRequest(mine.raw),
                                                (lg.Signed,), timeout=SIGN_TIMEOUT_S,
                                                max_frame=lg.MAX_FRAME)
            done = check_receipt(reply.receipt)
            if done.receipt.body != mine.receipt.body:
                raise ReceiptRejected("invalid_claim", "the signed receipt is for another claim")
            await self._store([done])
            log.info("%s receipt %s signed by %s: %.3f credits", done.kind, short_hex(done.receipt_id),
                     short_id(other), done.credit / MILLI)
        except RemoteError as exc:
            if exc.code in ("refused", "bad_request"):
                log.warning("%s refused to sign our %s claim: %s", short_id(other), mine.kind, exc.message)
                await self._drop(key)
            else:
                await self._backoff(key, p, exc)
        except (MeshError, ReceiptRejected, lg.LedgerError) as exc:  # a full disk: try again later
            await self._backoff(key, p, exc)
        finally:
            self._sending.discard(key)
            self._wake.set()

    async def _backoff(self, key: bytes, p: _Pending, exc: Exception) -> None:
        p.tries += 1
        if p.tries >= MAX_TRIES:
            log.warning("giving up on a %s claim after %d tries: %s", p.checked.kind, p.tries, exc)
            await self._drop(key)
            return
        p.next_try = CLAIM_BACKOFF.next_at(trio.current_time(), p.tries)
        log.debug("claim %s not signed yet (%s); retrying", short_hex(key), exc)

    async def _drop(self, key: bytes) -> None:
        try:
            await trio.to_thread.run_sync(self._ledger().drop_pending, key)
        except lg.LedgerError as exc:  # kept on disk: after a restart it is tried again
            log.warning("could not drop a claim from the ledger: %s", exc)
        self._pending.pop(key, None)
        self._changed()

    def _changed(self) -> None:
        self._stored.set()
        self._stored = trio.Event()

    # ------------------------------------------------------------------ requests from peers
    async def _handle(self, peer: str, request: Any) -> Any:
        if isinstance(request, lg.Fetch):
            ledger = self._ledger()
            receipts, next_cursor, more = await trio.to_thread.run_sync(
                lambda: ledger.page(request.since, party=request.party, limit=request.limit))
            return lg.Page(receipts=tuple(receipts), next=next_cursor, more=more)
        if isinstance(request, lg.SignRequest):
            return lg.Signed(receipt=await self._countersign(peer, request.receipt))
        raise rpc.RemoteFault("bad_request", f"unexpected {type(request).__name__}")

    async def _countersign(self, peer: str, data: bytes) -> bytes:
        try:
            checked = check_receipt(data, complete=False)
        except ReceiptRejected as exc:
            raise rpc.RemoteFault("bad_request", str(exc)) from None
        held = self.tally.counted(checked.claim_key)
        action, reason = countersign_rule(checked, me=self.peer_id, peer=peer, held=held, now=time.time())
        if action is Countersign.RESEND:
            assert held is not None
            return held.raw
        if action is Countersign.REFUSED:
            raise rpc.RemoteFault("refused", reason)
        if action is Countersign.CHECK_JOB:
            assert isinstance(checked.claim, JobClaim)
            await self._check_job_claim(checked.claim)  # raises RemoteFault when it disagrees
        done = check_receipt(add_signature(data, self.key))
        try:
            await self._store([done])
        except lg.LedgerError as exc:  # a full disk: the claimant asks again later
            raise rpc.RemoteFault("busy", f"cannot keep the receipt now: {exc}") from None
        return done.raw

    async def _check_job_claim(self, claim: JobClaim) -> None:
        job = (claim.job_id, claim.worker)
        if self.payer.expectation(*job) is None and not self.payer.faulty(*job):
            arrived = self._arrived.setdefault(job, trio.Event())  # its check may be running now
            with trio.move_on_after(self.sign_wait_s):
                await arrived.wait()
            self._arrived.pop(job, None)
        if self.payer.faulty(*job):
            raise rpc.RemoteFault("refused", "your output failed this node's check, or disagreed "
                                             "with the other runs of this job")
        expectation = self.payer.expectation(*job)
        if expectation is None:
            raise rpc.RemoteFault("not_found", f"no checked result of job {claim.job_id} from you")
        refusal = payer_refusal(claim, expectation, now=time.time(),
                                advertised=self._advertised_gpus(claim.worker))
        if refusal is not None:
            if claim.result_hash != expectation.result_hash:
                self._record(claim.worker, Event.FAILED)
            raise rpc.RemoteFault("refused", refusal)

    # ------------------------------------------------------------------ receipts from peers
    async def _pull(self, peer: str) -> int:
        added = 0
        cursor = self._cursors.get(peer, 0)
        for _ in range(PAGES_PER_SYNC):
            page = await self.host.request(peer, lg.PROTOCOL, lg.Fetch(since=cursor), (lg.Page,),
                                           timeout=FETCH_TIMEOUT_S, max_frame=lg.MAX_FRAME)
            if page.next < cursor or (page.receipts and page.next == cursor):
                raise ProtocolError(f"ledger page cursor went from {cursor} to {page.next}")
            good, rejected = await trio.to_thread.run_sync(_check_page, page.receipts, self.peer_id,
                                                           self._tracked())
            skipped = len(page.receipts) - len(good) - sum(rejected.values())
            if skipped:
                self.retention.refused["untracked"] = self.retention.refused.get("untracked", 0) + skipped
            for reason, count in rejected.items():
                self._rejected[reason] = self._rejected.get(reason, 0) + count
            added += await self._store(good)
            cursor = page.next
            self._cursors.put(peer, cursor)
            if not page.more:
                break
        return added

    def _tracked(self) -> frozenset[str]:
        return frozenset(self.host.member_peers()) | self._counterparties

    async def _store(self, receipts: list[Checked]) -> int:
        """Keep the new receipts the retention rule admits, evicting what it says, in one
        ledger transaction; then count them. Returns how many were kept."""
        async with self._writing:  # admissions decide on the state the previous write left
            keep, evict = self._admit(receipts)
            settled = [c.claim_key for c in receipts if c.claim_key in self._pending]
            if keep or evict or settled:
                ledger = self._ledger()

                def write() -> None:
                    ledger.add_many(keep, evict)
                    for key in settled:
                        ledger.drop_pending(key)

                await trio.to_thread.run_sync(write)
            for checked in keep:
                self._count(checked)
            for held in evict:
                self.tally.discard(held.receipt_id, held.claim_key)
            for key in settled:
                self._pending.pop(key, None)
        self._changed()
        return len(keep)

    def _admit(self, receipts: list[Checked]) -> tuple[list[Checked], list[Held]]:
        tracked = self._tracked().__contains__
        keep: dict[bytes, Checked] = {}
        evict: list[Held] = []
        best: dict[bytes, Checked] = {}  # claim key -> the receipt that pays it, this batch included
        for checked in receipts:
            if self.tally.seen(checked.receipt_id) or checked.receipt_id in keep:
                continue
            own = self.peer_id in (checked.earner, checked.payer)
            paid = best.get(checked.claim_key) or self.tally.counted(checked.claim_key)
            if not own and paid is not None and (paid.credit, paid.receipt_id) <= (
                    checked.credit, checked.receipt_id):
                self.retention.refused["superseded"] = self.retention.refused.get("superseded", 0) + 1
                continue  # rule 5: it would not count
            admission = self.retention.admit(_held(checked), tracked)
            evict.extend(admission.evict)
            if not admission.store:
                continue
            keep[checked.receipt_id] = checked
            best[checked.claim_key] = checked
            if not own and paid is not None:
                gone = self.retention.remove(paid.receipt_id)
                if gone is not None:
                    evict.append(gone)
        both = keep.keys() & {h.receipt_id for h in evict}  # admitted, then evicted by a later one
        return ([c for c in keep.values() if c.receipt_id not in both],
                [h for h in evict if h.receipt_id not in both])

    def _count(self, checked: Checked) -> None:
        self.tally.add(checked)
        if self.peer_id in (checked.earner, checked.payer):
            self._counterparties.add(checked.payer if checked.earner == self.peer_id else checked.earner)

    # ------------------------------------------------------------------ helpers
    def _ledger(self) -> lg.Ledger:
        if self.ledger is None:
            raise MeshError("the credits service is not running")
        return self.ledger

    def _record(self, peer: str, event: Event) -> None:
        self._standings[peer] = self._standings.get(peer, Standing()).after(event)
        self._dirty.add(peer)
        self._flush.set()

    async def _flush_loop(self) -> None:
        while True:
            await self._flush.wait()
            self._flush = trio.Event()
            dirty = self._take_dirty()
            try:
                await trio.to_thread.run_sync(self._ledger().put_standings, dirty)
            except lg.LedgerError as exc:  # a full disk: written with the next change
                self._dirty |= set(dirty)
                log.warning("could not save peers' standings: %s", exc)

    def _take_dirty(self) -> dict[str, Standing]:
        dirty, self._dirty = self._dirty, set()
        return {peer: self._standings[peer] for peer in dirty}

    def _advertised_gpus(self, peer: str) -> set[str] | None:
        if self.adverts is None:
            return None
        entry = self.adverts.get(peer)
        return None if entry is None else {g.name for g in entry.advert.gpus}

    async def _sync_loop(self) -> None:
        while True:
            await trio.sleep(self.sync_interval * self._rng.uniform(0.9, 1.1))
            await self.sync_now()


def _held(checked: Checked) -> Held:
    return Held(checked.receipt_id, (checked.earner, checked.payer), len(checked.raw), checked.claim_key)


def _check_page(receipts: Sequence[bytes], me: str, tracked: frozenset[str]
                ) -> tuple[list[Checked], dict[str, int]]:
    """check_all of the receipts on a page that would be kept if they pass (retention
    rules 1-2): the others cost no signature check."""
    worth = []
    for raw in receipts:
        try:
            parties = parties_of(raw)
        except ReceiptRejected:
            worth.append(raw)  # check_all counts it by reason
            continue
        if wanted(parties, me, tracked.__contains__):
            worth.append(raw)
    return check_all(worth)


def _load(ledger: lg.Ledger) -> tuple[list[Checked], list[Checked]]:
    good, rejected = check_all(ledger.receipts())
    if rejected:
        log.error("ledger %s holds receipts that fail their checks: %s", ledger.path, rejected)
    pending, _ = check_all(ledger.pending(), complete=False)
    return good, pending
