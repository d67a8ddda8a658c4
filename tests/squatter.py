"""A quota squatter, for tests only: ``python tests/squatter.py HOLDER_ADDR [--seed S] ...``.

It speaks the real share protocol (``/poolai/store/2.0.0``, through the project's own
libp2p transport) from a libp2p host of its own and stores random junk shares on one
holder, each with the longest lease the wire allows (2^64 - 1), until the holder
refuses. It prints one JSON object: its peer id, how many shares and bytes the holder
took, and the refusal (code, reason, message). ``--seed`` fixes its identity, so a
second run is the same peer, and ``--junk`` the shares' bytes (the seed by default).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys

import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from poolai.mesh.host import open_host
from poolai.mesh.peer_ids import peer_id_bytes
from poolai.storage import integrity
from poolai.storage.protocol import ShareRefused
from poolai.storage.store import MAX_LEASE
from poolai.storage.transfers import ShareMeta
from poolai.storage.transport import Libp2pShareTransport


async def squat(addr: str, seed: int, junk_seed: int, share_bytes: int, limit: int) -> dict[str, object]:
    key = create_new_key_pair(hashlib.sha256(b"squatter %d" % seed).digest())
    holder = addr.rsplit("/p2p/", 1)[1]
    rng = random.Random(junk_seed)
    async with open_host(key, ["/ip4/127.0.0.1/tcp/0"]) as host, trio.open_nursery() as nursery:
        transport = Libp2pShareTransport(host)
        await nursery.start(transport.run)
        with trio.fail_after(30):
            await host.connect(holder, [addr.rsplit("/p2p/", 1)[0]])
        stored, refusal = 0, None
        meta = ShareMeta(rng.randbytes(32), MAX_LEASE)
        while stored < limit:
            junk = rng.randbytes(share_bytes)
            try:
                with trio.fail_after(30):
                    await transport.store(peer_id_bytes(holder), integrity.share_id(junk), junk, meta)
            except ShareRefused as exc:
                refusal = {"code": exc.code, "reason": exc.reason, "message": str(exc)}
                break
            stored += 1
        nursery.cancel_scope.cancel()
    return {"peer_id": host.peer_id, "stored": stored, "bytes": stored * share_bytes, "refusal": refusal}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("holder", help="the holder's full multiaddr, /p2p/ id included")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--junk", type=int, default=None, help="seed of the shares' bytes")
    parser.add_argument("--share-kib", type=int, default=256)
    parser.add_argument("--max", type=int, default=10_000, help="stop after this many shares")
    args = parser.parse_args()
    print(json.dumps(trio.run(squat, args.holder, args.seed, args.seed if args.junk is None else args.junk,
                                     args.share_kib << 10, args.max)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
