"""What the local API and the status page read of the node: :class:`NodeView`.

The node (:class:`poolai.node.node.Node`) implements it; the web layer never imports
the node itself, so the composition root can import the web layer without a cycle,
and the browser test serves the real page from a small stand-in. A service the node
does not run is None, and the routes that need it answer 501.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from poolai.node.capacity.service import CapacityService
    from poolai.node.companion.service import CompanionService
    from poolai.node.config import Config
    from poolai.node.credits.service import CreditsService
    from poolai.node.files.service import StorageService
    from poolai.node.jobs.service import JobService
    from poolai.node.logring import LogRing
    from poolai.node.overlay.service import OverlayService
    from poolai.node.reach.service import ReachService


class NodeView(Protocol):
    config: Config
    data_dir: Path
    admin_token: str
    log_ring: LogRing | None
    overlay: OverlayService | None
    capacity: CapacityService | None
    credits: CreditsService | None
    files: StorageService | None
    jobs: JobService | None
    companion: CompanionService | None
    reach: ReachService | None

    def status(self) -> dict[str, Any]:
        """Everything the node knows about itself, one section per service."""
        ...
