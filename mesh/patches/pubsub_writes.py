"""Count what a Pubsub sends (py-libp2p 0.8.1 keeps no such counter).

The status page and ``bench_gossip.py`` report the RPCs and bytes a node's
gossip writes. py-libp2p's Pubsub counts neither, but every RPC it sends
goes out through one method, ``Pubsub.write_msg(stream, rpc_msg)``, called
through the instance (the per-peer sending loop, and GossipSub's direct
sends as ``pubsub.write_msg``). :func:`count_writes` wraps that method on
one Pubsub instance; nothing process-wide changes, so :data:`PATCH` only
checks the shape at node start.

Remove when py-libp2p's Pubsub reports what it sent (a metrics hook or
counters).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub

from poolai.mesh.patches.guard import Patch, Shape


def count_writes(pubsub: Pubsub, on_write: Callable[[int], None]) -> None:
    """Call ``on_write(bytes)`` for each RPC ``pubsub`` writes (its size with a ~2-byte prefix)."""
    original = pubsub.write_msg

    async def counting(stream: Any, rpc: Any) -> bool:
        on_write(rpc.ByteSize() + 2)  # + varint length prefix, ~2 bytes
        return await original(stream, rpc)

    pubsub.write_msg = counting  # type: ignore[method-assign]


def _expect(shape: Shape) -> None:
    shape.signature(Pubsub, "write_msg", "(self, stream, rpc_msg)")
    shape.reads(Pubsub, "handle_sending_messages", "write_msg")  # self.write_msg: the instance's
    shape.attrs(rpc_pb2.RPC, "ByteSize")


PATCH = Patch("pubsub_writes", "0.8.1", _expect)
