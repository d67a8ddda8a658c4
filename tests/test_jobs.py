"""The jobs core without a network: the submitter's dispatch machine, the worker queue,
the job protocol's messages, and the executor driven through fakes (no torch process)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from fulldisk import small_disk
from polling import poll_until

from poolai.mesh import wire
from poolai.mesh.errors import PeerUnreachable, SchemaError
from poolai.node.jobs import protocol as jp
from poolai.node.jobs.dispatch import (
    Dispatch,
    FindWorkers,
    Finished,
    Phase,
    Probe,
    Refusal,
    SendCancel,
    SendOffer,
    SubmitterConfig,
    Wait,
    WorkState,
)
from poolai.node.jobs.executor import Executor, ExecutorConfig
from poolai.node.jobs.files import CachedFiles
from poolai.node.jobs.held import STATE_FILE, Held, Pending, decode_state, encode_state
from poolai.node.jobs.queue import GpuSlot, WorkerLimits, WorkItem, WorkQueue, incapable_reason
from poolai.node.jobs.runner import JobOutcome, ProcessOutcome
from poolai.node.jobs.spec import (
    BuiltinProgram,
    Device,
    FileRef,
    InvalidJob,
    JobResult,
    JobSpec,
    JobStatus,
    MLPConfig,
    Requirements,
    Timings,
    encode_job,
    result_to_dict,
)

CFG = SubmitterConfig(lease_s=3.0, dead_s=8.0, requery_s=0.25, max_requery_s=4.0, seek_timeout_s=30.0)
OUT = FileRef("output.safetensors", "ab" * 32, 10)


def ok(job_id: str = "j1", y: float = 1.0) -> JobResult:
    return JobResult(job_id, JobStatus.OK, OUT, Timings(run_s=y))


def drive_to_offer(d: Dispatch, peers: list[str], now: float = 0.0) -> SendOffer:
    action = d.step(now)
    if isinstance(action, FindWorkers):
        d.candidates(peers, now)
        action = d.step(now)
    assert isinstance(action, SendOffer), action
    return action


def accepted_by_first(peers: list[str], retries: int) -> Dispatch:
    """Job j1 with ``retries`` retries, offered to ``peers[0]`` as attempt 1, accepted at 0.0."""
    d = Dispatch("j1", retries, 0.0, CFG)
    assert drive_to_offer(d, peers) == SendOffer(peers[0], 1)
    d.accepted(1, 0.0)
    return d


# ----------------------------------------------------------------------------- dispatch machine


def test_offers_move_down_the_list_until_one_accepts() -> None:
    d = Dispatch("j1", 0, 0.0, CFG)
    a = drive_to_offer(d, ["A", "B", "C"])
    assert (a.peer, a.attempt, d.phase) == ("A", 1, Phase.OFFERING)
    assert d.step(0.0) == Wait(None)  # nothing to do while the offer is in flight
    d.refused(1, Refusal.BUSY, "4 queued", 0.1)
    b = d.step(0.1)
    assert (b.peer, b.attempt) == ("B", 2)
    d.unreachable(2, 0.2)
    c = d.step(0.2)
    assert (c.peer, c.attempt) == ("C", 3)
    assert d.accepted(3, 0.3)
    assert d.phase is Phase.ASSIGNED and d.worker_state is WorkState.QUEUED
    assert d.step(0.3) == Wait(0.3 + CFG.lease_s)
    assert d.retries_used == 0  # refusals and unreachable offers cost nothing


def test_incapable_peers_are_not_asked_again_and_busy_ones_are() -> None:
    d = Dispatch("j1", 0, 0.0, CFG)
    drive_to_offer(d, ["A", "B"])
    d.refused(1, Refusal.INCAPABLE, "no GPU", 0.0)
    drive_to_offer(d, [], 0.0)  # B is still queued from the first answer
    d.refused(2, Refusal.BUSY, "full", 0.0)
    assert d.step(0.0) == Wait(0.25)  # all tried: wait, then ask the capacity table again
    assert isinstance(d.step(0.25), FindWorkers)
    d.candidates(["A", "B"], 0.25)
    again = d.step(0.25)
    assert again.peer == "B"


def test_requery_backs_off_and_the_job_fails_with_every_reason_when_nobody_takes_it() -> None:
    d = Dispatch("j1", 0, 0.0, CFG)
    now, pauses, last_query = 0.0, [], None
    while True:
        action = d.step(now)
        if isinstance(action, Finished):
            break
        if isinstance(action, FindWorkers):
            if last_query is not None:
                pauses.append(now - last_query)
            last_query = now
            d.candidates(["A"], now)
        elif isinstance(action, SendOffer):
            d.refused(action.attempt, Refusal.BUSY, "queue full", now)
        else:
            assert isinstance(action, Wait) and action.until is not None
            now = action.until
    assert pauses[:5] == [0.25, 0.5, 1.0, 2.0, 4.0] and max(pauses) == 4.0
    assert now == pytest.approx(30.0)
    result = action.result
    assert result.status is JobStatus.REFUSED
    assert "no capable peer accepted the job" in result.error and "busy: queue full" in result.error


def test_an_invalid_refusal_ends_the_job_with_the_workers_message() -> None:
    d = Dispatch("j1", 3, 0.0, CFG)
    drive_to_offer(d, ["A", "B"])
    d.refused(1, Refusal.INVALID, "inputs: missing tensors ['x']", 0.0)
    action = d.step(0.0)
    assert isinstance(action, Finished)
    assert action.result.status is JobStatus.REFUSED
    assert action.result.error == "inputs: missing tensors ['x']"


def test_a_silent_worker_is_probed_then_lost_and_the_job_goes_elsewhere_in_time() -> None:
    d = accepted_by_first(["A", "B"], retries=1)
    for t in (1.0, 2.0, 3.0):  # heartbeats renew the lease
        assert d.progress("A", 1, WorkState.RUNNING, t)
    assert d.step(5.9) == Wait(6.0)
    probe = d.step(6.0)
    assert probe == Probe("A", 1)
    assert d.step(6.1) == Wait(None)  # one probe at a time
    d.lost(1, 7.0)
    assert d.retries_used == 1 and d.attempts[0].outcome == "lost"
    action = d.step(7.0)
    assert isinstance(action, FindWorkers)
    d.candidates(["A", "B"], 7.0)  # A is still advertised: it is not offered again
    offer = d.step(7.0)
    assert offer == SendOffer("B", 2)
    assert 7.0 - 3.0 < 10.0  # last heartbeat to re-dispatch: lease + probe deadline


def test_a_slow_worker_is_probed_again_until_it_has_been_silent_for_dead_s() -> None:
    d = accepted_by_first(["A", "B"], retries=1)
    assert d.step(3.0) == Probe("A", 1)
    d.probe_timed_out(1, 5.5)
    assert d.step(5.5) == Probe("A", 1)  # still within dead_s: ask again
    assert d.progress("A", 1, WorkState.RUNNING, 6.0)  # it was only slow
    assert d.step(9.0) == Probe("A", 1)
    d.probe_timed_out(1, 11.5)
    assert d.step(11.5) == Probe("A", 1)
    d.probe_timed_out(1, 14.0)  # 8 s since it was last heard of
    assert d.attempts[0].outcome == "lost" and isinstance(d.step(14.0), FindWorkers)


def test_a_probe_answer_renews_the_lease() -> None:
    d = accepted_by_first(["A"], retries=0)
    assert d.step(3.0) == Probe("A", 1)
    assert d.progress("A", 1, WorkState.RUNNING, 3.5)
    assert d.step(3.5) == Wait(6.5)


def test_losing_the_worker_with_no_budget_left_ends_the_job_as_crashed() -> None:
    d = accepted_by_first(["A", "B"], retries=0)
    d.step(3.0)
    d.lost(1, 4.0)
    action = d.step(4.0)
    assert isinstance(action, Finished) and action.result.status is JobStatus.CRASHED
    assert "was lost" in action.result.error


def test_results_are_accepted_exactly_once() -> None:
    d = accepted_by_first(["A"], retries=2)
    assert not d.result_received("B", 1, ok(), 1.0)  # not the peer it went to
    assert not d.result_received("A", 7, ok(), 1.0)  # an attempt never made
    assert not d.result_received("A", 1, ok("other"), 1.0)  # another job's record
    assert d.result_received("A", 1, ok(y=1.0), 1.0)
    assert not d.result_received("A", 1, ok(y=2.0), 1.5)  # re-delivery
    assert d.result.timings.run_s == 1.0 and d.result_attempt == 1 and d.duplicates == 1
    assert not d.progress("A", 1, WorkState.RUNNING, 2.0)  # the worker is told to stop


def test_a_lost_workers_late_result_wins_and_the_new_attempt_is_cancelled() -> None:
    d = accepted_by_first(["A", "B"], retries=2)
    d.step(3.0)
    d.lost(1, 3.5)
    d.step(3.5)
    d.candidates(["B"], 3.5)
    assert d.step(3.5) == SendOffer("B", 2)
    d.accepted(2, 3.6)
    assert d.result_received("A", 1, ok(), 4.0)  # the first final result wins
    assert d.step(4.0) == SendCancel("B", 2)
    assert isinstance(d.step(4.0), Finished)
    assert not d.result_received("B", 2, ok(y=9.0), 5.0)
    assert d.result.timings.run_s == 1.0


def test_a_restarted_worker_that_kept_the_job_is_adopted_back() -> None:
    d = accepted_by_first(["W"], retries=1)
    d.step(3.0)
    d.lost(1, 4.0)
    assert isinstance(d.step(4.0), FindWorkers)
    d.candidates(["W"], 4.0)  # W is excluded after being lost: nobody to offer to
    assert isinstance(d.step(4.0), Wait)
    assert d.progress("W", 1, WorkState.QUEUED, 9.0)  # it came back with its queue
    assert d.phase is Phase.ASSIGNED and d.retries_used == 0
    assert d.result_received("W", 1, ok(), 12.0)


def test_retryable_results_spend_the_budget_then_become_final() -> None:
    d = accepted_by_first(["A", "B"], retries=1)
    timed_out = JobResult("j1", JobStatus.TIMED_OUT, error="killed after its timeout of 1 s")
    assert not d.result_received("A", 1, timed_out, 2.0)
    assert d.phase is Phase.SEEKING and d.retries_used == 1
    d.step(2.0)
    d.candidates(["A", "B"], 2.0)
    offer = d.step(2.0)
    d.accepted(offer.attempt, 2.0)
    assert d.result_received(offer.peer, offer.attempt, timed_out, 4.0)
    assert d.result.status is JobStatus.TIMED_OUT


def test_failed_and_refused_results_are_final_whatever_the_budget() -> None:
    d = accepted_by_first(["A"], retries=8)
    assert d.result_received("A", 1, JobResult("j1", JobStatus.FAILED, error="shape"), 1.0)
    assert d.phase is Phase.DONE and d.result.error == "shape"


def test_cancel_tells_the_worker_and_stops_its_heartbeats() -> None:
    d = accepted_by_first(["A"], retries=0)
    assert d.cancel(1.0)
    assert d.step(1.0) == SendCancel("A", 1)
    assert d.step(1.0) == Finished(None)
    assert not d.progress("A", 1, WorkState.RUNNING, 1.5)
    assert not d.cancel(2.0)


def test_a_heartbeat_that_overtakes_the_accept_reply_changes_nothing() -> None:
    d = Dispatch("j1", 0, 0.0, CFG)
    drive_to_offer(d, ["A"])
    assert d.progress("A", 1, WorkState.RUNNING, 0.1)
    assert d.accepted(1, 0.2)  # not cancelled as stale
    assert d.worker_state is WorkState.RUNNING


def test_an_accept_for_an_attempt_given_up_on_is_cancelled() -> None:
    d = Dispatch("j1", 0, 0.0, CFG)
    drive_to_offer(d, ["A", "B"])
    d.unreachable(1, 5.0)  # the offer timed out, but A took it after all
    offer = d.step(5.0)
    assert offer == SendOffer("B", 2)
    assert not d.accepted(1, 5.1)
    assert not d.progress("A", 1, WorkState.QUEUED, 5.2)


def test_offers_stop_after_a_bounded_number_of_unreachable_peers() -> None:
    cfg = SubmitterConfig(max_unreachable=3, seek_timeout_s=1e9)
    d = Dispatch("j1", 0, 0.0, cfg)
    now, offered = 0.0, []
    fakes = [f"fake{i}" for i in range(20)]
    for _ in range(100):
        action = d.step(now)
        if isinstance(action, Finished):
            break
        if isinstance(action, FindWorkers):
            d.candidates([*fakes, "real"], now)
        elif isinstance(action, SendOffer):
            offered.append(action.peer)
            d.unreachable(action.attempt, now)
        else:
            now = action.until
    assert isinstance(action, Finished) and action.result.status is JobStatus.REFUSED
    assert offered == fakes[:3] and "gave up after 3 unreachable peers" in action.result.error


def test_one_peer_unreachable_again_and_again_counts_once() -> None:
    # A worker restarting is unreachable for a few rounds; the job waits for it.
    d = Dispatch("j1", 0, 0.0, SubmitterConfig(max_unreachable=2, seek_timeout_s=1e9))
    now = 0.0
    for _ in range(6):
        offer = drive_to_offer(d, ["w"], now)
        d.unreachable(offer.attempt, now)
        now = d.step(now).until
    offer = drive_to_offer(d, ["w"], now)
    assert d.accepted(offer.attempt, now) and d.phase is Phase.ASSIGNED


def test_offers_per_job_are_bounded() -> None:
    d = Dispatch("j1", 0, 0.0, SubmitterConfig(max_offers=3, seek_timeout_s=1e9))
    now = 0.0
    for _ in range(50):
        action = d.step(now)
        if isinstance(action, Finished):
            break
        if isinstance(action, FindWorkers):
            d.candidates(["A", "B"], now)
        elif isinstance(action, SendOffer):
            d.refused(action.attempt, Refusal.BUSY, "full", now)
        else:
            now = action.until
    assert isinstance(action, Finished) and len(d.attempts) == 3


# ----------------------------------------------------------------------------- worker queue

CPU = Requirements()
GPU8 = Requirements(device=Device.GPU, min_gpu_memory_mib=8192)
GPUS = (GpuSlot(0, "big", 81920, (9, 0)), GpuSlot(1, "small", 16384, (8, 6)))


def item(job_id: str, priority: int = 0, at: float = 0.0, req: Requirements = CPU) -> WorkItem:
    return WorkItem("S", job_id, 1, priority, req, at)


def test_queue_runs_by_priority_and_ageing_prevents_starvation() -> None:
    q = WorkQueue(WorkerLimits(slots=1, max_queued=8, aging_s=1.0))
    q.admit(item("low", -10, at=0.0))
    q.admit(item("mid", 0, at=0.0))
    q.admit(item("high", 5, at=0.0))
    assert q.position(("S", "high"), 0.0) == 0 and q.position(("S", "low"), 0.0) == 2
    assert q.start_next(0.0).item.job_id == "high"
    assert q.start_next(0.0) is None  # one slot
    q.finish(("S", "high"))
    # A priority-5 job arriving later passes 'low' only while 'low' has waited < 15 s longer.
    q.admit(item("h10", 5, at=10.0))
    assert [i.job_id for i in q._order(10.0)] == ["mid", "h10", "low"]
    q.admit(item("h20", 5, at=20.0))
    assert [i.job_id for i in q._order(20.0)] == ["mid", "h10", "low", "h20"]
    assert q.start_next(20.0).item.job_id == "mid"


def test_queue_admission_refuses_with_reasons_and_is_idempotent() -> None:
    q = WorkQueue(WorkerLimits(slots=1, max_queued=2, memory_mib=4096))
    assert q.admit(item("a")).seq == 1
    again = q.admit(WorkItem("S", "a", 2, 0, CPU, 9.0))
    assert again.attempt == 2 and again.seq == 1 and len(q.queued) == 1  # re-labelled, not added
    q.admit(item("b"))
    assert q.admit(item("c")) == (Refusal.BUSY, "2 jobs queued, 0 running")
    reason, message = q.admit(item("g", req=GPU8))
    assert reason is Refusal.INCAPABLE and message == "this node has no GPU"
    reason, message = q.admit(item("m", req=Requirements(memory_mib=8192)))
    assert reason is Refusal.INCAPABLE and "allows 4096 MiB" in message


def test_gpu_jobs_get_one_gpu_each_and_cpu_jobs_pass_a_waiting_gpu_job() -> None:
    q = WorkQueue(WorkerLimits(slots=3, max_queued=8, gpus=GPUS))
    for name in ("g1", "g2", "g3"):
        q.admit(item(name, 1, req=GPU8))
    q.admit(item("c", 0))
    first, second = q.start_next(0.0), q.start_next(0.0)
    assert (first.gpu.name, second.gpu.name) == ("small", "big")  # smallest that fits first
    third = q.start_next(0.0)
    assert third.item.job_id == "c" and third.gpu is None  # g3 waits for a GPU, c does not
    q.finish(first.item.key)
    assert q.start_next(0.0).item.job_id == "g3"


def test_incapable_reasons_name_what_is_missing() -> None:
    limits = WorkerLimits(gpus=GPUS)
    assert incapable_reason(GPU8, limits) is None
    need = Requirements(device=Device.GPU, min_gpu_memory_mib=100_000, min_compute_capability=(9, 0))
    assert incapable_reason(need, limits) == (
        "no GPU has 100000 MiB and compute capability 9.0 (best: big, 81920 MiB)")
    assert incapable_reason(CPU, WorkerLimits(slots=0)) == "this node runs no jobs"


# ----------------------------------------------------------------------------- protocol


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def spec(job_id: str = "j1", submitter: str = "S", **kw) -> JobSpec:  # type: ignore[no-untyped-def]
    program = BuiltinProgram(MLPConfig(4, (8,), 2), FileRef("weights.safetensors", sha(b"w"), 1))
    return JobSpec(job_id, submitter, program, FileRef("inputs.safetensors", sha(b"i"), 1), **kw)


FILES = {"weights.safetensors": "1" * 64, "inputs.safetensors": "2" * 64}


def roundtrip(msg):  # type: ignore[no-untyped-def]
    return wire.decode(wire.encode(msg), *jp.REQUESTS, jp.Accept, jp.Refuse, jp.Entry,
                       jp.ProgressAck, jp.ResultAck, jp.Cancelled)


def test_messages_round_trip_and_offers_are_checked_against_the_sender() -> None:
    offer = jp.Offer(spec=encode_job(spec()), files=FILES, attempt=1)
    assert roundtrip(offer) == offer
    assert jp.parse_offer(offer, "S").job.job_id == "j1"
    with pytest.raises(InvalidJob, match="submitter is not the peer"):
        jp.parse_offer(offer, "M")
    with pytest.raises(InvalidJob, match="do not match"):
        jp.parse_offer(jp.Offer(spec=offer.spec, files={"weights.safetensors": "1" * 64},
                                attempt=1), "S")
    with pytest.raises(InvalidJob, match="64 lowercase hex"):
        jp.parse_offer(jp.Offer(spec=offer.spec, files={**FILES, "inputs.safetensors": "../x"},
                                attempt=1), "S")
    with pytest.raises(InvalidJob, match="not JSON"):
        jp.parse_offer(jp.Offer(spec=b"{", files=FILES, attempt=1), "S")
    progress = jp.Progress(entries=(jp.Entry(job_id="j1", attempt=2, state="running"),))
    assert roundtrip(progress) == progress


def test_wire_limits_refuse_oversized_and_out_of_range_fields() -> None:
    too_many = {f"f{i}": "1" * 64 for i in range(5)}
    body = wire.encode(jp.Offer(spec=b"{}", files=too_many, attempt=1))
    with pytest.raises(SchemaError, match="exceeds the limit"):
        wire.decode(body, jp.Offer)
    body = wire.encode(jp.Offer(spec=b"{}", files={}, attempt=0))
    with pytest.raises(SchemaError, match="below the minimum"):
        wire.decode(body, jp.Offer)
    entries = tuple(jp.Entry(job_id="j", attempt=1, state="queued") for _ in range(257))
    with pytest.raises(SchemaError, match="exceeds the limit"):
        wire.decode(wire.encode(jp.Progress(entries=entries)), jp.Progress)


def test_results_are_checked_before_they_are_believed() -> None:
    good = jp.Result(job_id="j1", attempt=1, record=result_to_dict(ok()), output="a" * 64,
                     log_tail="", gpu_s=0.0)
    assert jp.parse_result(roundtrip(good)).status is JobStatus.OK
    with pytest.raises(InvalidJob, match="another job"):
        jp.parse_result(jp.Result(job_id="j2", attempt=1, record=good.record, output="a" * 64,
                                  log_tail="", gpu_s=0.0))
    with pytest.raises(InvalidJob, match="must name its output"):
        jp.parse_result(jp.Result(job_id="j1", attempt=1, record=good.record, output="",
                                  log_tail="", gpu_s=0.0))
    with pytest.raises(InvalidJob):
        jp.parse_result(jp.Result(job_id="j1", attempt=1, record={"job_id": "j1", "status": "meh"},
                                  output="", log_tail="", gpu_s=0.0))


# ----------------------------------------------------------------------------- executor with fakes


class MemoryFiles:
    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.names: dict[str, str] = {}

    async def put(self, path: Path, name: str = "") -> str:
        data = await trio.Path(path).read_bytes()
        self.blobs[sha(data)] = data
        self.names[sha(data)] = name
        return sha(data)

    async def get(self, file_id: str, path: Path) -> None:
        if file_id not in self.blobs:
            raise PeerUnreachable(f"no file {file_id[:8]}")
        await trio.Path(path).write_bytes(self.blobs[file_id])


class Submitter:
    """Records what a worker tells its submitter; ``keep`` decides the heartbeat answers."""

    def __init__(self) -> None:
        self.progress: list[tuple[str, int, str]] = []
        self.results: list[jp.Result] = []
        self.keep = True
        self.reachable = True
        self.changed = trio.Event()

    async def call(self, peer, request, reply_types, _timeout):  # type: ignore[no-untyped-def]
        if not self.reachable:
            raise PeerUnreachable("down")
        self.changed.set()
        self.changed = trio.Event()
        if isinstance(request, jp.Progress):
            self.progress += [(e.job_id, e.attempt, e.state) for e in request.entries]
            return jp.ProgressAck(keep=tuple(self.keep for _ in request.entries))
        self.results.append(request)
        return jp.ResultAck(job_id=request.job_id, accepted=True)

    async def wait_for(self, condition) -> None:  # type: ignore[no-untyped-def]
        while not condition():
            await self.changed.wait()


class FakeRunner:
    """Stands in for run_job: writes an output and returns, or (``block``) writes it and
    returns once released."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.release = trio.Event()
        self.block = False

    async def __call__(self, job, files_dir, out_dir, policy):  # type: ignore[no-untyped-def]
        self.started.append(job.job_id)
        assert sorted(p.name for p in files_dir.iterdir()) == sorted(f.name for f in job.files())
        data = b"out-" + job.job_id.encode()
        (out_dir / "output.safetensors").write_bytes(data)
        if self.block:
            await self.release.wait()
        result = JobResult(job.job_id, JobStatus.OK, FileRef("output.safetensors", sha(data), len(data)),
                           device=f"cpu [{policy.cuda_visible_devices or 'no gpu'}]")
        return JobOutcome(result, ProcessOutcome(0, False, b"", b"log line", 0, 0, 0.1, False))


async def offer_to(ex: Executor, files: MemoryFiles, job_id: str, attempt: int = 1):  # type: ignore[no-untyped-def]
    ids = {"weights.safetensors": await put_bytes(files, b"w"),
           "inputs.safetensors": await put_bytes(files, b"i")}
    return await ex.offer("S", jp.Offer(spec=encode_job(spec(job_id)), files=ids, attempt=attempt))


async def until(condition) -> None:  # type: ignore[no-untyped-def]
    """The executor's state on disk, written by a worker thread (the test's fail_after bounds it)."""
    await poll_until(condition, interval=0.01)

def on_disk(path: Path) -> dict:  # type: ignore[type-arg]
    try:
        return json.loads((path / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}


async def put_bytes(files: MemoryFiles, data: bytes) -> str:
    files.blobs[sha(data)] = data
    return sha(data)


def executor(tmp_path: Path, files: MemoryFiles, sub: Submitter, runner: FakeRunner,
             slots: int = 1) -> Executor:
    # Heartbeats and redeliveries at 0.2 s, not the node's 1 s: the same steps, sooner.
    return Executor("W", tmp_path, files, sub.call, lambda: WorkerLimits(slots=slots, max_queued=4),
                    runner=runner, config=ExecutorConfig(heartbeat_s=0.2, max_retry_s=0.2))


@asynccontextmanager
async def started(tmp_path: Path, *, block: bool = False, reachable: bool = True, slots: int = 1
                  ) -> AsyncIterator[tuple[Executor, MemoryFiles, Submitter, FakeRunner]]:
    """A running executor with in-memory files, a recording submitter and a fake runner,
    all within 20 s."""
    files, sub, runner = MemoryFiles(), Submitter(), FakeRunner()
    runner.block, sub.reachable = block, reachable
    ex = executor(tmp_path, files, sub, runner, slots)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(ex.run)
            yield ex, files, sub, runner
            nursery.cancel_scope.cancel()


async def run_a_queue_b(ex: Executor, files: MemoryFiles, sub: Submitter) -> None:
    """Offer jobs a and b and wait until a runs (with a blocking runner, b stays queued)."""
    await offer_to(ex, files, "a")
    await offer_to(ex, files, "b")
    await sub.wait_for(lambda: ("a", 1, "running") in sub.progress)


def test_the_worker_state_file_round_trips_and_drops_only_what_no_longer_parses() -> None:
    job = spec("j1")
    held = Held(WorkItem("S", "j1", 2, 0, job.requirements, 5.0, 7), encode_job(job), {"a": "b"})
    stopped = Held(WorkItem("S", "j0", 1, 0, job.requirements, 4.0, 6), encode_job(spec("j0")), {})
    stopped.stopped = True
    message = jp.Result(job_id="j9", attempt=1, record={"status": "ok"}, output="", log_tail="", gpu_s=0.0)
    data = encode_state([held, stopped], [Pending("T", message, 9.0)])
    jobs, pending, problems = decode_state(data, priority_of=lambda submitter: 3)
    assert problems == [] and [(h.item.key, h.item.attempt, h.item.seq, h.item.priority, h.files)
                                for h in jobs] == [(("S", "j1"), 2, 7, 3, {"a": "b"})]
    assert list(pending) == [("T", "j9")] and pending["T", "j9"].message == message

    doc = json.loads(data)
    doc["jobs"].append({"submitter": "S", "spec": "{not json"})
    doc["results"].append({"submitter": "T"})
    jobs, pending, problems = decode_state(json.dumps(doc).encode(), priority_of=lambda s: 0)
    assert len(jobs) == 1 and len(pending) == 1 and len(problems) == 2
    for bad in (b"[]", b'{"version": 2}', b'{"version": 1, "jobs": 5}', b"\xff"):
        with pytest.raises(ValueError):
            decode_state(bad, priority_of=lambda s: 0)


async def test_executor_runs_reports_and_redelivers_until_acknowledged(tmp_path: Path) -> None:
    async with started(tmp_path, reachable=False) as (ex, files, sub, runner):
        reply = await offer_to(ex, files, "j1")
        assert isinstance(reply, jp.Accept) and reply.ahead == 0
        await until(lambda: on_disk(tmp_path).get("results"))  # kept until acknowledged
        sub.reachable = True
        await sub.wait_for(lambda: sub.results)
        result = jp.parse_result(sub.results[0])
        assert result.status is JobStatus.OK and sub.results[0].output == sha(b"out-j1")
        assert files.blobs[sub.results[0].output] == b"out-j1"
        assert files.names[sub.results[0].output] == "output of job j1"  # named on the page
        assert sub.results[0].log_tail == "log line"
        await until(lambda: on_disk(tmp_path) == {"version": 1, "jobs": [], "results": []})


async def test_a_full_disk_refuses_new_offers_and_the_executor_keeps_running(tmp_path: Path) -> None:
    """Found by the chaos soak: on a full disk, writing the state file for an offer raised
    ENOSPC and, from the tasks that save after a job, ended the node. Now an offer it
    cannot write down is refused (the submitter goes elsewhere) and held work goes on."""
    with small_disk(tmp_path, "1m") as disk:
        async with started(disk, block=True) as (ex, files, sub, runner):
            assert isinstance(await offer_to(ex, files, "j1"), jp.Accept)
            await sub.wait_for(lambda: ("j1", 1, "running") in sub.progress)
            fill(disk / "ballast")
            refused = await offer_to(ex, files, "j2")
            assert isinstance(refused, jp.Refuse) and refused.reason == "busy"
            assert "cannot write to its disk" in refused.message
            assert [j["job_id"] for j in on_disk(disk)["jobs"]] == ["j1"]
            runner.release.set()  # j1 ends; its result is delivered although no save succeeds
            await sub.wait_for(lambda: sub.results)
            assert jp.parse_result(sub.results[0]).status is JobStatus.OK
            (disk / "ballast").unlink()
            assert isinstance(await offer_to(ex, files, "j3"), jp.Accept)
            await until(lambda: [j["job_id"] for j in on_disk(disk).get("jobs", [])] == ["j3"])


def fill(path: Path) -> None:
    """Write zeros to ``path`` until the disk under it is full."""
    with path.open("wb") as f:
        try:
            while True:
                f.write(bytes(64 << 10))
                f.flush()
        except OSError:
            pass


async def test_executor_refuses_malformed_offers_and_reports_a_missing_file(tmp_path: Path) -> None:
    async with started(tmp_path) as (ex, files, sub, runner):
        bad = await ex.offer("S", jp.Offer(spec=b'{"version": 1}', files=FILES, attempt=1))
        assert isinstance(bad, jp.Refuse) and bad.reason == "invalid"
        assert "job.id is missing" in bad.message
        reply = await ex.offer("S", jp.Offer(spec=encode_job(spec("j2")), files=FILES, attempt=1))
        assert isinstance(reply, jp.Accept)
        await sub.wait_for(lambda: sub.results)
        result = jp.parse_result(sub.results[0])
        assert result.status is JobStatus.CRASHED and "could not fetch" in result.error
        assert runner.started == []


async def test_a_restarted_executor_runs_the_jobs_it_had_accepted(tmp_path: Path) -> None:
    files, sub, runner = MemoryFiles(), Submitter(), FakeRunner()
    runner.block = True
    ex = executor(tmp_path, files, sub, runner)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(ex.run)
            for name in ("a", "b", "c"):
                assert isinstance(await offer_to(ex, files, name), jp.Accept)
            await sub.wait_for(lambda: ("a", 1, "running") in sub.progress)
            nursery.cancel_scope.cancel()  # the node stops with one job running, two queued
        assert runner.started == ["a"] and sub.results == []
        runner2 = FakeRunner()
        ex2 = executor(tmp_path, files, sub, runner2)
        async with trio.open_nursery() as nursery:
            await nursery.start(ex2.run)
            assert ex2.stats["restored"] == 3
            await sub.wait_for(lambda: len(sub.results) == 3)
            nursery.cancel_scope.cancel()
    assert runner2.started == ["a", "b", "c"]  # in admission order, the interrupted one first


async def test_a_submitter_that_no_longer_wants_a_job_stops_it(tmp_path: Path) -> None:
    async with started(tmp_path, block=True) as (ex, files, sub, runner):
        await run_a_queue_b(ex, files, sub)
        sub.keep = False
        await until(lambda: not ex.held)
        assert ex.stats["stopped"] == 2 and sub.results == []
        assert isinstance(await offer_to(ex, files, "c"), jp.Accept)  # still healthy


async def test_a_repeated_offer_is_idempotent(tmp_path: Path) -> None:
    async with started(tmp_path, block=True) as (ex, files, sub, runner):
        await offer_to(ex, files, "a", attempt=1)
        await offer_to(ex, files, "a", attempt=3)  # the submitter thought us lost
        assert len(ex.held) == 1 and ex.held[("S", "a")].item.attempt == 3
        runner.release.set()
        await sub.wait_for(lambda: sub.results)
        assert sub.results[0].attempt == 3 and runner.started == ["a"]


async def test_drain_and_pause_refuse_offers_and_pause_holds_the_queue(tmp_path: Path) -> None:
    async with started(tmp_path, block=True) as (ex, files, sub, runner):
        await run_a_queue_b(ex, files, sub)
        ex.draining = True
        refused = await offer_to(ex, files, "c")
        assert (refused.reason, refused.message) == ("busy", "this node is draining")
        ex.draining = False
        ex.set_paused(True)
        assert (await offer_to(ex, files, "c")).message == "this node is paused"
        assert isinstance(await offer_to(ex, files, "b", attempt=2), jp.Accept)  # already held
        runner.release.set()
        await sub.wait_for(lambda: len(sub.results) == 1)
        assert runner.started == ["a"] and ex.snapshot()["queue_length"] == 1  # b waits
        ex.set_paused(False)
        await sub.wait_for(lambda: len(sub.results) == 2)
        assert runner.started == ["a", "b"]


class CountingFiles(MemoryFiles):
    def __init__(self) -> None:
        super().__init__()
        self.gets = 0

    async def get(self, file_id: str, path: Path) -> None:
        self.gets += 1
        await super().get(file_id, path)


async def test_the_file_cache_serves_repeats_and_evicts_the_least_recently_used(tmp_path: Path) -> None:
    inner = CountingFiles()
    cache = CachedFiles(inner, tmp_path / "cache", max_bytes=250)
    a, b, c = [await put_bytes(inner, bytes([n]) * 100) for n in (1, 2, 3)]
    for i, file_id in enumerate((a, a, b, a, c)):
        await cache.get(file_id, tmp_path / f"out{i}")
    assert inner.gets == 3 and (cache.hits, cache.misses) == (2, 3)
    assert (tmp_path / "out1").read_bytes() == bytes([1]) * 100
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted([a, c])  # b was oldest
    with pytest.raises(PeerUnreachable):
        await cache.get("f" * 64, tmp_path / "missing")
    assert not list((tmp_path / "cache").glob("*.part"))


def test_node_side_job_modules_do_not_import_torch() -> None:
    code = ("import sys, poolai.node.jobs.service, poolai.node.jobs.api, poolai.node.jobs.cli; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert proc.stdout.strip() == b"[]", proc.stderr.decode()[-2000:]
