"""What a service may use of the node that runs it, and what the node asks of a service.

Services sit below the composition root (:mod:`poolai.node.node`) and never import it:
each is constructed with a :class:`NodeContext` (settings, data directory, host, peer
book) and with the other services it needs, typed, passed in by the root in dependency
order (see ``build_services`` there). A dependency that a node may lack (a test node
without credits, say) is ``None``, and the service says what it does without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import trio

if TYPE_CHECKING:
    from poolai.mesh.host import MeshHost
    from poolai.mesh.peers import PeerBook
    from poolai.node.config import Config


@dataclass(frozen=True)
class NodeContext:
    """The node's parts every service may use. ``config`` is the node's :class:`Config`
    (tests pass a smaller stand-in with the fields the service reads)."""

    config: Config
    data_dir: Path
    host: MeshHost
    book: PeerBook | None = None

    @property
    def peer_id(self) -> str:
        return self.host.peer_id


class NodeService(Protocol):
    """A long-running part of the node (overlay, capacity, storage, jobs ...).

    ``run`` serves until cancelled and calls ``task_status.started()`` once it is
    ready; ``status`` returns this service's section of ``/api/status``; ``routes``
    returns the Starlette routes it adds to the local API.
    """

    name: str

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None: ...

    def status(self) -> dict[str, Any]: ...

    def routes(self) -> list[Any]: ...
