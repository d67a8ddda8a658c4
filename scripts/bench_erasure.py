"""Benchmark the storage core; prints one JSON object.

* zfec alone (the baseline): encode/decode of pre-split blocks, MB/s of file data.
* our segment pipeline: split + zfec + BLAKE3 of every share + manifest, and
  the reverse (hash-check k shares + decode), as MB/s and as a ratio to zfec.
* build_manifest on a real file (pass 1 of a put, through trio and threads).
* the LMDB ShareStore: put and get (hash-checked) MB/s of share bytes.

Usage: python scripts/bench_erasure.py [--size-mib 64] [--k 4] [--n 10] [--segment-mib 4]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time

import trio
import zfec

from poolai.storage import erasure, integrity, manifest, raid
from poolai.storage.erasure import ErasureParams
from poolai.storage.store import ShareStore


def mbps(nbytes: int, seconds: float) -> float:
    return round(nbytes / seconds / 1e6, 1)


def best_of(runs: int, fn) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=64)
    ap.add_argument("--k", type=int, default=erasure.DEFAULT_K)
    ap.add_argument("--n", type=int, default=erasure.DEFAULT_N)
    ap.add_argument("--segment-mib", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()

    params = ErasureParams(args.k, args.n, args.segment_mib * erasure.MiB)
    size = args.size_mib * erasure.MiB
    data = random.Random(0).randbytes(size)
    count = erasure.segment_count(size, params.segment_size)
    spans = [erasure.segment_span(size, params.segment_size, s) for s in range(count)]
    segments = [data[off : off + length] for off, length in spans]
    k, n = params.k, params.n
    blocks = [tuple(erasure.split_blocks(seg, k)) for seg in segments]
    encoder, decoder = zfec.Encoder(k, n), zfec.Decoder(k, n)
    all_shares = [encoder.encode(b) for b in blocks]
    parity = tuple(range(n - k, n))  # worst case: no primary block survives

    zfec_encode = best_of(args.runs, lambda: [encoder.encode(b) for b in blocks])
    zfec_decode = best_of(
        args.runs, lambda: [decoder.decode([s[i] for i in parity], parity) for s in all_shares]
    )

    def pipeline_encode() -> None:
        hashes = bytearray()
        for seg in segments:
            for share in erasure.encode_segment(seg, k, n):
                hashes += integrity.share_id(share)
        manifest.make_manifest(size, params, bytes(hashes)).encode()

    m = manifest.make_manifest(
        size, params,
        b"".join(integrity.share_id(s) for shares in all_shares for s in shares),
    )

    def pipeline_decode() -> None:
        for s, shares in enumerate(all_shares):
            picked = {i: shares[i] for i in parity}
            assert all(integrity.matches(m.share_id(s, i), d) for i, d in picked.items())
            erasure.decode_segment(picked, len(segments[s]), k, n)

    ours_encode = best_of(args.runs, pipeline_encode)
    ours_decode = best_of(args.runs, pipeline_decode)

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "input.bin")
        with open(path, "wb") as f:
            f.write(data)
        build = best_of(1, lambda: trio.run(raid.build_manifest, path, params))

        flat = [bytes(s) for shares in all_shares for s in shares]
        ids = [integrity.share_id(s) for s in flat]
        share_bytes = sum(map(len, flat))
        store_result = {}
        for durable in (True, False):
            with ShareStore(
                os.path.join(tmp, f"db-{durable}"), quota_bytes=2 * share_bytes, durable=durable
            ) as store:
                start = time.perf_counter()
                for sid, share in zip(ids, flat, strict=True):
                    store.put(sid, share, file_id=m.file_id(), lease_expiry=0)
                put_s = time.perf_counter() - start
                get_s = best_of(args.runs, lambda st=store: [st.get(sid) for sid in ids])
            key = "durable" if durable else "no_fsync"
            store_result[key] = {
                "put_MBps": mbps(share_bytes, put_s),
                "get_MBps": mbps(share_bytes, get_s),
            }

    print(
        json.dumps(
            {
                "data_MiB": args.size_mib,
                "k": k,
                "n": n,
                "segment_MiB": args.segment_mib,
                "share_KiB": erasure.block_size(params.segment_size, k) // 1024,
                "zfec_encode_MBps": mbps(size, zfec_encode),
                "zfec_decode_MBps": mbps(size, zfec_decode),
                "pipeline_encode_MBps": mbps(size, ours_encode),
                "pipeline_decode_MBps": mbps(size, ours_decode),
                "pipeline_vs_zfec_encode_ratio": round(zfec_encode / ours_encode, 3),
                "pipeline_vs_zfec_decode_ratio": round(zfec_decode / ours_decode, 3),
                "build_manifest_file_MBps": mbps(size, build),
                "manifest_bytes": len(m.encode()),
                "store_share_MiB": round(share_bytes / erasure.MiB, 1),
                "store": store_result,
                "cpu_count": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
