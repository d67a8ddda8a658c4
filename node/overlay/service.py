"""The overlay as a node service: runs :class:`~poolai.mesh.overlay_net.OverlayNode`
(its state and lookups are on the local API through :mod:`poolai.node.overlay.api`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from poolai.mesh.links import DEFAULT_CONFIG
from poolai.mesh.overlay_net import DriverConfig, OverlayNode, scaled

if TYPE_CHECKING:
    from poolai.node.context import NodeContext


class OverlayService:
    name = "overlay"

    def __init__(self, ctx: NodeContext) -> None:
        assert ctx.book is not None, "the overlay keeps its members in the node's peer book"
        cfg = ctx.config
        self.overlay = OverlayNode(
            ctx.host,
            ctx.book,
            config=scaled(DEFAULT_CONFIG, cfg.overlay_scale),
            driver=DriverConfig(tick=min(1.0, max(0.1, cfg.overlay_scale))),
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.overlay.run(task_status=task_status)

    def status(self) -> dict[str, Any]:
        return self.overlay.snapshot()
