"""Credits on a mesh of full nodes (in this process, real libp2p on 127.0.0.1).

Jobs and storage are represented here by the calls their services make into the credits
service when a job's result has been checked or an upkeep pass has audited a holder
(``job_checked``/``claim_job``, ``storage_audited``), so every kind of cheat can be staged
exactly; the receipts, their signing over ``/poolai/ledger/1.0.0``, the sync and the
balances are all real. One test earns storage credit the whole way: a real put, upkeep
auditing the holders' shares, the owner's claims once the epoch is over. The last test runs
a real job (torch worker processes, files in real storage) on a worker that lies about its
output. test_credits_jobs_live.py earns
credit with real jobs on node processes, a hostile node among them.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import httpx
import pytest
import torch
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from polling import wait_for
from safetensors.torch import load_file, save_file

from poolai.mesh import wire
from poolai.mesh.errors import RemoteError
from poolai.node import config as config_mod
from poolai.node.credits import ledger as lg
from poolai.node.credits.balances import Account, compute_balances
from poolai.node.credits.payout import b58encode
from poolai.node.credits.policy import Outcome
from poolai.node.credits.receipts import (
    EPOCH_S,
    GIB,
    PAYER_DOMAIN,
    AuditEvidence,
    JobClaim,
    Receipt,
    start_receipt,
)
from poolai.node.jobs.models import build_model, forward
from poolai.node.jobs.runner import run_job
from poolai.node.jobs.spec import MLPConfig
from poolai.node.node import Node, open_node
from poolai.storage.erasure import ErasureParams
from poolai.storage.integrity import audit_digest

pytestmark = [pytest.mark.live, pytest.mark.timeout(120)]
H100 = "NVIDIA H100 80GB HBM3"
GOOD, WRONG = b"\x11" * 32, b"\x99" * 32


def payout_address() -> str:
    key = Ed25519PrivateKey.from_private_bytes(b"\x05" * 32).public_key()
    return b58encode(key.public_bytes(Encoding.Raw, PublicFormat.Raw))


@asynccontextmanager
async def mesh(tmp_path: Path, n: int, env: dict[int, dict[str, str]] | None = None
               ) -> AsyncIterator[list[Node]]:
    async with AsyncExitStack() as stack:
        nodes: list[Node] = []
        for i in range(n):
            flags = {"listen": ["/ip4/127.0.0.1/tcp/0"], "api_port": 0,
                     "bootstrap": [nodes[0].host.addrs()[0]] if nodes else None}
            environ = {"POOLAI_CREDITS_SYNC_INTERVAL": "3600", "POOLAI_CAPACITY_HEARTBEAT": "0.5",
                       **(env or {}).get(i, {})}
            cfg = config_mod.load(tmp_path / f"n{i}", flags, environ=environ)
            nodes.append(await stack.enter_async_context(open_node(cfg)))
        await wait_for(lambda: all(len(x.host.connected_peers()) == n - 1 for x in nodes), "a full mesh")
        yield nodes


def inject(ledger: lg.Ledger, raw: bytes) -> None:
    """What a forging node does: put anything in its ledger, bypassing every check."""
    env = ledger._env
    with env.begin(write=True) as txn:
        seq = lg._U64.unpack(txn.get(b"seq", db=ledger._info))[0]
        rid = random.Random(seq).randbytes(32)
        txn.put(rid, raw, db=ledger._receipts)
        txn.put(lg._U64.pack(seq), rid, db=ledger._log)
        txn.put(b"seq", lg._U64.pack(seq + 1), db=ledger._info)


async def test_every_node_agrees_and_cheats_gain_nothing(tmp_path):
    inventory = tmp_path / "h100.json"
    inventory.write_text(json.dumps({"gpus": [{"name": H100, "memory_total": "80GiB",
                                               "compute_capability": "9.0"}]}))
    async with mesh(tmp_path, 5, {1: {"POOLAI_INVENTORY_FILE": str(inventory)}}) as nodes:
        credits = [n.credits for n in nodes]
        a, b, c, d, e = credits  # e forges
        ids = [x.peer_id for x in credits]
        await wait_for(lambda: nodes[0].capacity.table.get(b.peer_id) is not None,
                       "A to see B's capacity advert")

        # ---- honest jobs: the submitter checks the output, then the worker claims
        jobs = [(a, b, "gpu", f"cuda:0 ({H100})", 100.0), (b, c, "cpu", "cpu (2 threads)", 50.0),
                (c, d, "cpu", "cpu (2 threads)", 20.0), (d, a, "cpu", "cpu (4 threads)", 10.0),
                (a, c, "cpu", "cpu (1 threads)", 5.0)]
        keys = []
        for i, (submitter, worker, kind, device, seconds) in enumerate(jobs):
            submitter.job_checked(job_id=f"job{i}", worker=worker.peer_id, result_hash=GOOD,
                                  device=kind, max_seconds=seconds)
            keys.append((worker, await worker.claim_job(job_id=f"job{i}", submitter=submitter.peer_id,
                                                        device=device, seconds=seconds,
                                                        result_hash=GOOD)))

        # ---- storage: owners pay holders for an hour of shares that passed audits
        epoch = int(time.time()) // EPOCH_S
        share = random.Random(1).randbytes(4096)
        for owner, holder, size in ((a, d, 5 * GIB), (c, b, 2 * GIB)):
            nonces = [random.Random(i).randbytes(32) for i in range(2)]
            audits = [AuditEvidence(share_id=b"\x01" * 32, offset=0, length=1024, nonce=nonce,
                                    digest=audit_digest(nonce, share[:1024]), at=float(epoch * EPOCH_S + i))
                      for i, nonce in enumerate(nonces)]
            keys.append((owner, await owner.storage_audited(holder=holder.peer_id, epoch=epoch,
                                                            bytes_held=size, shares=3, audits=audits)))

        # ---- a replicated job: E returns a wrong output, B breaks the tie
        assert d.job_checked(job_id="rj", worker=a.peer_id, result_hash=GOOD, device="cpu",
                             max_seconds=10.0, replicated=True).outcome is Outcome.PENDING
        verdict = d.job_checked(job_id="rj", worker=e.peer_id, result_hash=WRONG, device="cpu",
                                max_seconds=10.0, replicated=True)
        assert verdict.outcome is Outcome.RUN_AGAIN and verdict.exclude == {a.peer_id, e.peer_id}
        verdict = d.job_checked(job_id="rj", worker=b.peer_id, result_hash=GOOD, device="cpu",
                                max_seconds=10.0, replicated=True)
        assert verdict.outcome is Outcome.AGREED and verdict.faulty == {e.peer_id}
        for worker, digest in ((a, GOOD), (b, GOOD), (e, WRONG)):
            keys.append((worker, await worker.claim_job(job_id="rj", submitter=d.peer_id, device="cpu",
                                                        seconds=8.0, result_hash=digest)))

        with trio.fail_after(30):
            for service, key in keys[:-1]:
                await service.wait_signed(key)
            with pytest.raises(LookupError):  # D refused the wrong output's claim
                await e.wait_signed(keys[-1][1])
        assert d.reputation_of(e.peer_id) < 0.5 < d.reputation_of(a.peer_id)

        # ---- the forger: self-signed, fake countersignature, half-signed, replays
        own = JobClaim(1, "mine", e.peer_id, e.peer_id, "gpu", H100, 86400.0, GOOD, time.time())
        body = wire.encode(own)
        inject(e.ledger, wire.encode(Receipt(body, e.key.public_key, e.key.sign(b"earner" + body),
                                             e.key.public_key, e.key.sign(PAYER_DOMAIN + body))))
        fake = JobClaim(1, "fake", e.peer_id, a.peer_id, "gpu", H100, 86400.0, GOOD, time.time())
        half = start_receipt(fake, e.key)
        forged_body = wire.decode(half, Receipt).body
        receipt = wire.decode(half, Receipt)
        inject(e.ledger, wire.encode(Receipt(forged_body, receipt.earner_key, receipt.earner_sig,
                                             e.key.public_key, e.key.sign(PAYER_DOMAIN + forged_body))))
        inject(e.ledger, half)
        honest = b.tally.counted(keys[0][1]).raw
        for _ in range(3):
            inject(e.ledger, honest)
        a.sign_wait_s = 0.2
        with trio.fail_after(10), pytest.raises(RemoteError) as refused:
            await e.host.request(a.peer_id, lg.PROTOCOL, lg.SignRequest(half), (lg.Signed,), timeout=5,
                                 max_frame=lg.MAX_FRAME)
        assert refused.value.code == "not_found"

        # ---- every node pulls from every other, then all hold the same evidence
        with trio.fail_after(30):
            for service in credits:
                await service.sync_now()
        accounts = [x.tally.accounts() for x in credits]
        assert all(acc == accounts[0] for acc in accounts)
        for x in credits:  # recomputed from the raw ledger, checking every signature again
            assert compute_balances(x.ledger.receipts()).accounts == accounts[0]
        got = accounts[0]
        assert got.get(e.peer_id, Account()) == Account()  # the forger gained nothing
        assert got[b.peer_id].earned == 317_000 + 80 + 8 * 15  # H100 job, 2 GiB-hours, replica
        assert got[a.peer_id].earned == 150 + 8 * 15 and got[a.peer_id].spent == 317_000 + 75 + 200
        assert got[d.peer_id].earned == 300 + 200 and got[d.peer_id].spent == 150 + 2 * 120
        assert sum(acc.balance for acc in got.values()) == 0
        assert sum(len(x.tally) for x in credits) == 5 * 9
        rejected = a.status()["ledger"]["rejected"]
        assert rejected == {"self_signed": 1, "key_mismatch": 1, "unsigned": 1}
        assert set(got) == set(ids) - {e.peer_id}


async def test_storage_audited_by_upkeep_earns_credit_that_every_node_agrees_on(tmp_path):
    """The whole storage path: a real put, real upkeep audits of the holders' LMDB shares,
    the owner's claims once the epoch is over, the holders' countersignatures, a sync."""
    async with mesh(tmp_path, 5) as nodes:
        owner = nodes[0].files
        credits = [n.credits for n in nodes]
        src = tmp_path / "data.bin"
        src.write_bytes(random.Random(7).randbytes(96 << 20))
        epoch = int(time.time()) // EPOCH_S
        with trio.fail_after(90):
            put = await owner.put(src, params=ErasureParams(k=2, n=4, segment_size=8 << 20), pin=True)
            for _ in range(6):  # each pass spot-audits one segment: every holder gets its turn
                await owner.upkeep()
            assert owner.credit_claims == 0  # the epoch is not over yet
            owner.clock = lambda: (epoch + 1) * EPOCH_S + 1.0
            await owner.upkeep()
        claimed = owner.credit_claims
        assert claimed >= 3  # of the four other nodes, every one holding audited shares
        with trio.fail_after(60):
            for key in credits[0].awaiting_signature():  # holders countersign in the background
                await credits[0].wait_signed(key)
            for service in credits:
                await service.sync_now()
        accounts = [c.tally.accounts() for c in credits]
        assert all(acc == accounts[0] for acc in accounts)
        got = accounts[0]
        me = credits[0].peer_id
        assert len(credits[0].ledger.receipts()) == claimed
        holders = {c.peer_id for c in credits[1:]}
        earned = {p: got[p].earned for p in holders if p in got}
        # 192 MiB of shares over about four holders: about 2 millicredits each for the hour
        assert sum(earned.values()) == got[me].spent > 0
        assert all(got[p].spent == 0 for p in earned)
        assert sum(acc.balance for acc in got.values()) == 0
        assert compute_balances(credits[3].ledger.receipts()).accounts == got
        assert put.manifest.size == 96 << 20


async def test_status_page_and_cli_show_the_same_numbers(tmp_path):
    address = payout_address()
    async with mesh(tmp_path, 2, {0: {"POOLAI_PAYOUT_ADDRESS": address}}) as nodes:
        me, peer = (n.credits for n in nodes)
        for i in range(3):
            peer.job_checked(job_id=f"j{i}", worker=me.peer_id, result_hash=GOOD, device="cpu",
                             max_seconds=60.0)
            key = await me.claim_job(job_id=f"j{i}", submitter=peer.peer_id, device="cpu",
                                     seconds=10.0 * (i + 1), result_hash=GOOD)
            with trio.fail_after(15):
                await me.wait_signed(key)
        await wait_for(lambda: getattr(nodes[1].capacity.table.get(me.peer_id), "advert", None)
                       is not None, "the payout address to be advertised")
        assert nodes[1].capacity.table.get(me.peer_id).advert.payout_address == address

        data_dir = str(nodes[0].data_dir)
        cli = [sys.executable, "-m", "poolai.node.cli.main", "--data-dir", data_dir, "credits"]
        shown = json.loads((await trio.run_process([*cli, "--json"], capture_stdout=True)).stdout)
        status = nodes[0].status()["credits"]
        keys = ("earned", "spent", "balance", "earned_milli", "balance_milli", "receipts", "payout_address")
        assert {k: shown[k] for k in keys} == {k: status[k] for k in keys}
        page = (await trio.to_thread.run_sync(
            lambda: httpx.get(nodes[0].api_url + "/api/page", timeout=10))).json()["credits"]
        shown_on_page = ("balance", "earned", "spent", "receipts", "priority", "payout_address")
        assert {k: page[k] for k in shown_on_page} == {k: shown[k] for k in shown_on_page}
        assert (page["ledger_held"], page["ledger_pending"]) == (shown["ledger"]["held"], 0)
        assert (shown["earned_milli"], shown["payout_address"]) == (900, address)
        assert [r["credits"] for r in shown["statement"]] == [0.15, 0.3, 0.45]

        out = Path(data_dir) / "statement.csv"
        await trio.run_process([*cli, "--export", "csv", "-o", str(out)], capture_stderr=True)
        lines = out.read_text().splitlines()
        assert lines[0].startswith("time,receipt_id,kind,direction,counterparty")
        assert len(lines) == 4 and all(",earned," in line for line in lines[1:])
        csv_reply = await trio.to_thread.run_sync(
            lambda: httpx.get(nodes[0].api_url + "/api/credits?format=csv", timeout=10))
        assert csv_reply.headers["content-type"].startswith("text/csv")
        assert csv_reply.text.splitlines() == lines
        text = (await trio.run_process(cli, capture_stdout=True)).stdout.decode()
        assert "earned:   0.900 credits" in text and address in text


async def test_an_output_that_fails_its_check_is_run_again_and_never_paid(tmp_path):
    """A worker that stores other bytes than its result names (a real job, then its output
    file changed): the submitter's check catches it, runs the job on another peer, refuses
    the liar's claim and pays the honest worker."""
    def inventory(name: str, gib: int) -> Path:
        path = tmp_path / f"{name}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"gpus": [{"name": f"sim-{gib}G", "memory_total": f"{gib}GiB",
                                             "compute_capability": "9.0"}]}))
        tmp.replace(path)
        return path

    async def lying(job, files_dir, out_dir, policy):  # type: ignore[no-untyped-def]
        outcome = await run_job(job, files_dir, out_dir, policy)
        out = out_dir / "output.safetensors"
        data = bytearray(out.read_bytes())
        data[-1] ^= 0x40
        out.write_bytes(bytes(data))  # the record still names the bytes it computed
        return outcome

    env = {0: {"POOLAI_JOB_SLOTS": "0"},
           1: {"POOLAI_INVENTORY_FILE": str(inventory("liar", 80))},
           2: {"POOLAI_INVENTORY_FILE": str(inventory("honest", 24))}}
    torch.set_num_threads(1)
    async with mesh(tmp_path, 3, env) as nodes:
        submitter, liar, honest = nodes
        liar.jobs.executor.runner = lying
        jobs = submitter.jobs
        credits = [n.credits for n in nodes]
        await wait_for(lambda: submitter.capacity.table.get(liar.peer_id) is not None,
                       "the liar's capacity advert")
        config = MLPConfig(16, (32,), 4)
        torch.manual_seed(5)
        model = build_model(config)
        x = torch.randn(8, 16, generator=torch.Generator().manual_seed(5))
        refs, files = {}, {}
        stored = {"weights.safetensors": dict(model.state_dict()), "inputs.safetensors": {"x": x}}
        for name, tensors in stored.items():
            path = tmp_path / name
            save_file({k: v.contiguous() for k, v in tensors.items()}, path)
            data = path.read_bytes()
            refs[name] = {"name": name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
            with trio.fail_after(30):
                files[name] = await jobs.files.put(path)
        job = {"program": {"kind": "builtin", "family": "mlp",
                           "config": {"in_features": 16, "hidden": [32], "out_features": 4},
                           "weights": refs["weights.safetensors"]},
               "inputs": refs["inputs.safetensors"], "retry_budget": 2,  # a starved worker is not lost
               "requirements": {"device": "gpu", "min_gpu_memory_mib": 40960}}
        sub = jobs.submit(job, files)  # only the liar has 40 GiB ...
        await wait_for(lambda: (cur := sub.runs[0].dispatch.current) is not None
                       and cur.peer == liar.peer_id, "the liar to be offered the job")
        inventory("honest", 80)  # ... until the honest node gets it too
        with trio.fail_after(120):
            await sub.finished.wait()
        assert sub.result is not None and sub.result.status.value == "ok", jobs.job_json(sub)
        assert [r.worker for r in sub.runs] == [liar.peer_id, honest.peer_id]
        assert sub.runs[0].check.startswith("failed: the stored output has sha256")
        assert sub.worker == honest.peer_id and sub.output == sub.runs[1].output
        kept = jobs.dir / "outputs" / f"{sub.spec.job_id}.safetensors"  # what the output route serves
        got = await trio.to_thread.run_sync(load_file, kept)
        torch.testing.assert_close(got["y"], forward(model, config, {"x": x})["y"], rtol=1e-6, atol=1e-7)
        assert credits[0].reputation_of(liar.peer_id) < 0.5

        # The honest worker's claim is countersigned; the liar's is refused and dropped.
        await wait_for(lambda: credits[0].tally.account(honest.peer_id).earned > 0
                       and not credits[1]._pending, "the honest claim signed and the liar's refused")
        assert credits[1].tally.account(liar.peer_id) == Account()
        assert credits[0].tally.account(submitter.peer_id).spent == credits[0].tally.account(
            honest.peer_id).earned
