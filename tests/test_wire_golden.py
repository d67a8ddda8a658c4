"""Wire compatibility: every message encodes to exactly the bytes older nodes sent and accept.

``golden_wire.json`` holds, for every message type on every PoolAI protocol, the
bytes the code of commit 7ce8a54 produced for a few sample values, plus signed
adverts and receipts (Ed25519 signatures are deterministic, so the signed bytes
are fixed too) and job specs and result records. A node built from that commit
must interoperate with this one, so these bytes may only change together with a
protocol version. The samples are built from each message's declared fields:
the largest allowed numbers, long non-ASCII strings, present optionals
("full"); the smallest values, empty collections, absent optionals ("low");
and only the required fields, defaults for the rest ("defaults").
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from poolai.mesh import adverts, discovery, overlay_wire, wire
from poolai.node.credits import ledger, receipts
from poolai.node.jobs import protocol as job_protocol
from poolai.node.jobs import spec
from poolai.storage import protocol as store_protocol

GOLDEN = json.loads((Path(__file__).parent / "golden_wire.json").read_text())
MODULES = (wire, adverts, discovery, overlay_wire, store_protocol, job_protocol, receipts, ledger)
VARIANTS = ("full", "low", "defaults")


def message_classes() -> dict[str, type]:
    found: dict[str, type] = {}
    for module in MODULES:
        for value in vars(module).values():
            if isinstance(value, type) and hasattr(value, "__wire_type__"):
                found[wire.type_name_of(value)] = value
    return found


def sample(cls: type, variant: str) -> Any:
    kwargs = {}
    hints = wire.field_hints(cls)
    for f in dataclasses.fields(cls):
        limits = f.metadata.get("wire", wire.Limits())
        has_default = (f.default is not dataclasses.MISSING
                       or f.default_factory is not dataclasses.MISSING)
        if variant == "defaults" and has_default:
            continue
        name, hint = f.name, hints[f.name]
        kwargs[name] = _value(hint, limits, "low" if variant == "defaults" else variant)
    return cls(**kwargs)


_ANY = {"n": 1, "f": 0.25, "s": "x", "l": [1, "a", b"b"], "none": None, "big": 1 << 40, "neg": -5}


def _value(hint: Any, limits: wire.Limits, variant: str) -> Any:
    full = variant == "full"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if not full and type(None) in args:
            return None
        return _value(next(a for a in args if a is not type(None)), limits, variant)
    if isinstance(hint, type) and hasattr(hint, "__wire_type__"):
        return sample(hint, variant)
    if origin in (tuple, list):
        if args and args[-1] is not Ellipsis and origin is tuple:
            return tuple(_value(a, wire.Limits(), variant) for a in args)
        count = min(2, limits.max_len or 2) if full else 0
        items = [_value(args[0], limits_for_items(limits), variant) for _ in range(count)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not full:
            return {}
        if args[1] is Any:
            return dict(_ANY)
        return {"a.safetensors": "b" * 64, "c": ""}
    if hint is Any:
        return dict(_ANY)
    if hint is bool:
        return full
    lo = limits.min if limits.min is not None else 0
    hi = limits.max if limits.max is not None else (1 << 32)
    if hint is int:
        return int(hi) if full else int(lo)
    if hint is float:
        return float(lo + (hi - lo) / 3) if full else float(lo)
    n = min(limits.max_len or 4096, 40) if full else 0
    if hint is str:
        return ("é" + "x" * (n - 1)) if n else ""
    if hint is bytes:
        return bytes((i * 37 + 11) % 256 for i in range(n))
    raise TypeError(f"no sample for {hint!r}")


def limits_for_items(limits: wire.Limits) -> wire.Limits:
    """Ranges of a sequence field bound its items (overlay coordinates); lengths do not."""
    return wire.Limits(min=limits.min, max=limits.max)


def test_every_message_type_has_golden_bytes():
    assert sorted(message_classes()) == sorted(GOLDEN["messages"])


@pytest.mark.parametrize("type_name", sorted(GOLDEN["messages"]))
def test_messages_encode_and_decode_exactly_as_before(type_name):
    cls = message_classes()[type_name]
    for variant in VARIANTS:
        golden = bytes.fromhex(GOLDEN["messages"][type_name][variant])
        msg = sample(cls, variant)
        assert wire.encode(msg) == golden, variant
        assert wire.decode(golden, cls) == msg, variant


# ----------------------------------------------------------------------------- signed envelopes


def _private(seed: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)


def _public(seed: int) -> bytes:
    return _private(seed).public_key().public_bytes_raw()


def golden_advert() -> adverts.Advert:
    peer = adverts.peer_id_from_public_key(_public(1))
    gpu = adverts.GpuAdvert(index=0, name="NVIDIA H100 80GB HBM3", uuid="GPU-0a1b2c3d",
                            memory_total=80 << 30, memory_free=79 << 30, cc_major=9, cc_minor=0,
                            utilization=7, temperature_c=38, power_w=71.25, power_limit_w=700.0,
                            pcie_gen=5, pcie_width=16)
    return adverts.Advert(
        peer_id=peer, seq=1_800_000_000_123, timestamp=1_800_000_000.5, ttl=30.0,
        software="poolai/0.1.0", protocol=1, simulated=False, gpus=(gpu,), cpu_cores=16,
        ram_total=128 << 30, ram_free=100 << 30, storage_free=1 << 40, job_slots=1, free_slots=1,
        queue_length=0, models=("mlp",), driver_version="550.54.15", cuda_version="12.4",
        torch_cuda=True, coord=adverts.CoordAdvert((1.5, -2.25, 0.0, 3.0), 0.5, 0.25),
        payout_address="poolai1qexample")


def test_signed_advert_bytes_are_unchanged():
    golden = bytes.fromhex(GOLDEN["advert"])
    assert adverts.sign(golden_advert(), _private(1).sign, _public(1)) == golden
    assert adverts.verify(golden, now=1_800_000_001.0) == golden_advert()


def _signing_key(seed: int) -> receipts.SigningKey:
    return receipts.SigningKey(adverts.peer_id_from_public_key(_public(seed)), _public(seed),
                               _private(seed).sign)


def golden_claims() -> dict[str, receipts.Claim]:
    worker, payer = _signing_key(1).peer_id, _signing_key(2).peer_id
    audit = receipts.AuditEvidence(share_id=bytes(range(32)), offset=1 << 20, length=65536,
                                   nonce=bytes(range(32, 64)), digest=bytes(range(64, 96)),
                                   at=472_222 * 3600 + 61.5)
    return {
        "job": receipts.JobClaim(version=1, job_id="a1b2c3d4e5f60718", worker=worker,
                                 submitter=payer, device="gpu", device_class="NVIDIA H100 80GB HBM3",
                                 seconds=12.75, result_hash=bytes(range(32)),
                                 finished_at=1_700_000_000.25),
        "storage": receipts.StorageClaim(version=1, owner=payer, holder=worker, epoch=472_222,
                                         bytes_held=3 << 30, shares=4, audits=(audit,)),
    }


@pytest.mark.parametrize("kind", ["job", "storage"])
def test_receipt_bytes_are_unchanged(kind):
    claim = golden_claims()[kind]
    started = receipts.start_receipt(claim, _signing_key(1))
    both = receipts.add_signature(started, _signing_key(2))
    assert started.hex() == GOLDEN["receipts"][kind]["earner"]
    assert both.hex() == GOLDEN["receipts"][kind]["both"]
    checked = receipts.check_receipt(both)
    assert checked.claim == claim and checked.complete
    assert checked.receipt_id.hex() == GOLDEN["receipts"][kind]["id"]


# ----------------------------------------------------------------------------- job specs and results

_SHA = "ab" * 32


def golden_jobs() -> dict[str, spec.JobSpec]:
    inputs = spec.FileRef("inputs.safetensors", _SHA, 4096)
    weights = spec.FileRef("model.safetensors", _SHA, 1 << 20)
    return {
        "mlp_train": spec.JobSpec(
            job_id="job-1", submitter="12D3KooWexample", inputs=inputs,
            program=spec.BuiltinProgram(spec.MLPConfig(8, (16, 16), 3, spec.Activation.GELU),
                                        weights),
            mode=spec.Mode.TRAIN,
            train=spec.TrainSpec(steps=3, lr=0.1, optimizer=spec.Optimizer.ADAM, seed=7),
            requirements=spec.Requirements(spec.Device.GPU, 4096, (8, 0), 2.5, 4096),
            timeout_s=30.0, retry_budget=2, priority=-5),
        "transformer": spec.JobSpec(
            job_id="job-2", submitter="12D3KooWexample", inputs=inputs,
            program=spec.BuiltinProgram(spec.TransformerConfig(40, 32, 4, 2, 64, 12, False), weights)),
        "pt2": spec.JobSpec(
            job_id="job-3", submitter="12D3KooWexample", inputs=inputs,
            program=spec.Pt2Program(spec.FileRef("model.pt2", _SHA, 12345), weights)),
    }


@pytest.mark.parametrize("name", ["mlp_train", "transformer", "pt2"])
def test_job_spec_bytes_are_unchanged(name):
    job = golden_jobs()[name]
    golden = bytes.fromhex(GOLDEN["jobs"][name])
    assert spec.encode_job(job) == golden
    assert spec.decode_job(golden) == job


def golden_result() -> spec.JobResult:
    return spec.JobResult("job-1", spec.JobStatus.OK, spec.FileRef("output.safetensors", _SHA, 7),
                          spec.Timings(1.5, 0.75, 0.25, 1.0), 1 << 20, "cuda:0 (NVIDIA H100)", "",
                          (2.0, 1.5, 0.125))


def test_result_record_bytes_are_unchanged():
    record = spec.result_to_dict(golden_result())
    msg = job_protocol.Result(job_id="job-1", attempt=1, record=record, output="cd" * 32,
                              log_tail="done\n", gpu_s=1.5)
    golden = bytes.fromhex(GOLDEN["result"])
    assert wire.encode(msg) == golden
    assert job_protocol.parse_result(wire.decode(golden, job_protocol.Result)) == golden_result()
