"""Decoding (and verifying) real peer messages: this checkout against a baseline commit.

Prints one JSON object: per case, microseconds per operation with this checkout's code
(``new_us``) and with the baseline's (``old_us``, default 7ce8a54: the schema layer
before msgspec), and ``speedup`` = old / new. The baseline runs in a child interpreter
whose ``poolai`` package is that commit's tree (``git archive``), so both sides build
the same messages through the same public API and decode the same bytes.

    .venv/bin/python scripts/bench_schema.py [--baseline REF] [--seconds S]
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOW = 1_800_000_001.0


def cases() -> dict[str, Callable[[], object]]:
    """Each case decodes (and checks) bytes built once with the public API."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from poolai.mesh import adverts, overlay_wire, wire
    from poolai.node.credits import receipts
    from poolai.node.jobs import protocol as jp
    from poolai.node.jobs import spec
    from poolai.storage import protocol as sp

    keys = [Ed25519PrivateKey.from_private_bytes(bytes([i]) * 32) for i in (1, 2)]
    pubs = [k.public_key().public_bytes_raw() for k in keys]
    peers = [adverts.peer_id_from_public_key(p) for p in pubs]

    gpus = tuple(adverts.GpuAdvert(
        index=i, name="NVIDIA H100 80GB HBM3", uuid=f"GPU-{i:08x}", memory_total=80 << 30,
        memory_free=79 << 30, cc_major=9, cc_minor=0, utilization=7, temperature_c=38,
        power_w=71.25, power_limit_w=700.0, pcie_gen=5, pcie_width=16) for i in range(2))
    advert = adverts.Advert(
        peer_id=peers[0], seq=1_800_000_000_123, timestamp=NOW - 1, ttl=30.0,
        software="poolai/0.1.0", protocol=1, simulated=False, gpus=gpus, cpu_cores=16,
        ram_total=128 << 30, ram_free=100 << 30, storage_free=1 << 40, job_slots=2, free_slots=2,
        queue_length=0, models=("mlp",), driver_version="550.54.15", cuda_version="12.4",
        torch_cuda=True, coord=adverts.CoordAdvert((1.5, -2.25, 0.0, 3.0), 0.5, 0.25),
        payout_address="poolai1qexample")
    advert_body = wire.encode(advert)
    envelope = adverts.sign(advert, keys[0].sign, pubs[0])

    signers = [receipts.SigningKey(peers[i], pubs[i], keys[i].sign) for i in (0, 1)]
    claim = receipts.JobClaim(version=1, job_id="a1b2c3d4e5f60718", worker=peers[0],
                              submitter=peers[1], device="gpu", device_class="NVIDIA H100 80GB HBM3",
                              seconds=12.75, result_hash=bytes(range(32)), finished_at=1.7e9)
    receipt = receipts.add_signature(receipts.start_receipt(claim, signers[0]), signers[1])

    sha = "ab" * 32
    job = spec.JobSpec(
        job_id="job-1", submitter=peers[1], inputs=spec.FileRef("inputs.safetensors", sha, 4096),
        program=spec.BuiltinProgram(spec.MLPConfig(8, (16, 16), 3, spec.Activation.GELU),
                                    spec.FileRef("model.safetensors", sha, 1 << 20)),
        mode=spec.Mode.TRAIN, train=spec.TrainSpec(steps=3, lr=0.1, optimizer=spec.Optimizer.ADAM),
        requirements=spec.Requirements(spec.Device.GPU, 4096, (8, 0), 2.5, 4096))
    job_bytes = spec.encode_job(job)
    offer = wire.encode(jp.Offer(spec=job_bytes, files={f.name: "cd" * 32 for f in job.files()},
                                 attempt=1))
    result = spec.JobResult("job-1", spec.JobStatus.OK, spec.FileRef("output.safetensors", sha, 7),
                            spec.Timings(1.5, 0.75, 0.25, 1.0), 1 << 20, "cpu", "", (2.0, 1.5))
    result_msg = wire.encode(jp.Result(job_id="job-1", attempt=1, record=spec.result_to_dict(result),
                                       output="cd" * 32, log_tail="done\n", gpu_s=1.5))

    put = wire.encode(sp.PutRequest(id=bytes(32), file=bytes(range(32)), lease=3600, size=1 << 20))
    has = wire.encode(sp.HasRequest(ids=[bytes([i % 256]) * 32 for i in range(1024)]))

    coord = overlay_wire.WireCoord(vec=(1.5, -2.25, 0.0, 3.0), height=0.5, error=0.25)
    peer = overlay_wire.WirePeer(id=b"\x00\x24" + bytes(36), addrs=("/ip4/10.0.0.1/tcp/4001",),
                                 coord=coord)
    links = wire.encode(overlay_wire.WireLinks(
        node=peer, successors=(peer,) * 8, predecessors=(peer,) * 8, long=(peer,) * 8,
        proximity=(peer,) * 4, size_estimate=100.0, version=7))

    return {
        "advert_decode": lambda: wire.decode(advert_body, adverts.Advert),
        "advert_verify": lambda: adverts.verify(envelope, now=NOW),
        "receipt_decode": lambda: wire.decode(receipt, receipts.Receipt),
        "receipt_check": lambda: receipts.check_receipt(receipt),
        "job_spec_decode": lambda: spec.decode_job(job_bytes),
        "job_offer_parse": lambda: jp.parse_offer(wire.decode(offer, *jp.REQUESTS), peers[1]),
        "job_result_parse": lambda: jp.parse_result(wire.decode(result_msg, *jp.TO_SUBMITTER)),
        "store_put_decode": lambda: wire.decode(put, *sp.REQUESTS),
        "store_has_1024_decode": lambda: wire.decode(has, *sp.REQUESTS),
        "overlay_links_28_decode": lambda: wire.decode(links, overlay_wire.WireLinks),
    }


def measure(seconds: float) -> dict[str, float]:
    """Microseconds per call of each case: the best of five runs of ~seconds/5 each."""
    out = {}
    for name, fn in cases().items():
        fn()  # warm caches (compiled schemas) before timing
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < 0.05:
            fn()
            n += 1
        per_run = max(1, int(n / 0.05 * seconds / 5))
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(per_run):
                fn()
            best = min(best, (time.perf_counter() - t) / per_run)
        out[name] = round(best * 1e6, 2)
    return out


def baseline(ref: str, seconds: float) -> dict[str, float]:
    archive = subprocess.run(["git", "archive", ref, "mesh", "storage", "node"], cwd=ROOT,
                             check=True, capture_output=True).stdout
    with tempfile.TemporaryDirectory() as tmp:
        package = Path(tmp) / "poolai"
        package.mkdir()
        (package / "__init__.py").write_text("")
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(package, filter="data")
        child = subprocess.run(
            [sys.executable, __file__, "--child", tmp, "--seconds", str(seconds)],
            check=True, capture_output=True, text=True)
    return json.loads(child.stdout)  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="7ce8a54")
    parser.add_argument("--seconds", type=float, default=1.0, help="per case and side")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, args.child)  # its poolai package shadows the installed one
        import poolai.mesh.wire

        assert poolai.mesh.wire.__file__.startswith(args.child), poolai.mesh.wire.__file__
        print(json.dumps(measure(args.seconds)))
        return
    old = baseline(args.baseline, args.seconds)
    new = measure(args.seconds)
    try:
        import msgspec

        msgspec_version = msgspec.__version__
    except ImportError:
        msgspec_version = None
    print(json.dumps({
        "baseline": args.baseline, "python": sys.version.split()[0], "msgspec": msgspec_version,
        "cases": {name: {"old_us": old[name], "new_us": new[name],
                         "speedup": round(old[name] / new[name], 1)} for name in new},
    }, indent=1))


if __name__ == "__main__":
    main()
