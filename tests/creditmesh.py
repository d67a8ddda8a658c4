"""Credits services on real libp2p hosts in this process, without the rest of a node.

``credit_mesh(tmp_path, n)`` yields n running :class:`CreditsService` objects whose hosts
are all connected to each other; the services see a node with no other services.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from poolai.mesh.host import open_host
from poolai.node.context import NodeContext
from poolai.node.credits.service import CreditsService

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]


@dataclass(frozen=True)
class FakeConfig:
    redundancy_fraction: float = 0.0
    credits_sync_interval: float = 3600.0  # tests sync explicitly
    payout_address: str = ""




@asynccontextmanager
async def credit_mesh(tmp_path: Path, n: int, config: FakeConfig = FakeConfig()
                      ) -> AsyncIterator[list[CreditsService]]:
    async with AsyncExitStack() as stack:
        hosts = [await stack.enter_async_context(open_host(create_new_key_pair(), LOOPBACK))
                 for _ in range(n)]
        with trio.fail_after(20):
            for i, a in enumerate(hosts):
                for b in hosts[i + 1:]:
                    await a.connect(b.peer_id, b.transport_addrs())
            for a in hosts:  # credits sync with members only: identified peers
                for b in hosts:
                    if b is not a:
                        await a.wait_identified(b.peer_id)
        async with trio.open_nursery() as nursery:
            services = [CreditsService(NodeContext(config, tmp_path / f"n{i}", h),  # type: ignore[arg-type]
                                       durable=False)
                        for i, h in enumerate(hosts)]
            for service in services:
                await nursery.start(service.run)
            try:
                yield services
            finally:
                nursery.cancel_scope.cancel()
