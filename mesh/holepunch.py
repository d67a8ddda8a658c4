"""Hole punching: turn relayed connections into direct TCP ones with DCUtR.

py-libp2p's ``DCUtRProtocol`` does the exchange (``/libp2p/dcutr``: CONNECT with the
addresses each side is seen at, SYNC, then both dial from their listen port at once,
RTT/2 apart) and, once a direct connection verifies, closes the relayed one after a
60 s grace. :class:`HolePuncher` decides when: of two peers connected only through a
relay, the one with the smaller peer id starts (both starting at once collide, see
:mod:`poolai.mesh.patches.dcutr_drive`), up to :data:`ATTEMPTS` times,
:data:`RETRY_AFTER` s apart. It keeps, per peer, when the pair was first relayed, when
it went direct, and the attempts and successes, for the status page and the NAT lab.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import trio
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol
from libp2p.tools.anyio_service import background_trio_service

from poolai.mesh.host import MeshHost
from poolai.mesh.patches.dcutr_drive import quiet_auto_drive

log = logging.getLogger(__name__)

ATTEMPTS = 3  # as the DCUtR spec has it
RETRY_AFTER = 5.0
DIAL_TIMEOUT = 3  # py-libp2p first dials the peer's known addresses this long (default 10)
PUNCH_TIMEOUT = 60.0  # one attempt at most: its three dial rounds take about 21 s
MAX_RECORDS = 1000


@dataclasses.dataclass(slots=True)
class PunchRecord:
    """One peer: ``relayed_at``/``direct_at`` on the wall clock (time.time())."""

    relayed_at: float
    direct_at: float | None = None
    attempts: int = 0
    successes: int = 0
    next_try: float = 0.0  # monotonic
    by_us: bool = False  # this side starts the punches

    def to_json(self) -> dict[str, Any]:
        return {"relayed_at": round(self.relayed_at, 3),
                "direct_at": None if self.direct_at is None else round(self.direct_at, 3),
                "attempts": self.attempts, "successes": self.successes, "initiator": self.by_us}


class HolePuncher:
    """Runs DCUtR on ``host`` and starts hole punches to relayed peers (see module doc)."""

    def __init__(self, host: MeshHost, *, enabled: bool = True, interval: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.host = host
        self.enabled = enabled  # False: answer punches, start none
        self.interval = interval
        self.clock = clock
        self.wall = wall
        self.records: dict[str, PunchRecord] = {}
        self._busy: set[str] = set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        protocol = DCUtRProtocol(self.host.libp2p, dial_timeout=DIAL_TIMEOUT)
        quiet_auto_drive(protocol)
        async with background_trio_service(protocol), trio.open_nursery() as nursery:
            with trio.fail_after(10):
                await protocol.event_started.wait()
            task_status.started()
            while True:
                self._round(nursery, protocol)
                await trio.sleep(self.interval)

    def _round(self, nursery: trio.Nursery, protocol: DCUtRProtocol) -> None:
        now, wall = self.clock(), self.wall()
        relayed = set(self.host.relayed_peers())
        for peer in relayed:
            rec = self.records.get(peer)
            if rec is None or rec.direct_at is not None:  # new, or relayed again after a direct spell
                rec = self.records[peer] = PunchRecord(wall, by_us=self.host.peer_id < peer,
                                                       attempts=rec.attempts if rec else 0,
                                                       successes=rec.successes if rec else 0)
            if (self.enabled and rec.by_us and peer not in self._busy and rec.next_try <= now
                    and rec.attempts < ATTEMPTS * (rec.successes + 1)):
                self._busy.add(peer)
                nursery.start_soon(self._punch, protocol, peer, rec)
        for peer, rec in self.records.items():
            if rec.direct_at is None and peer not in relayed and self.host.is_connected(peer):
                rec.direct_at = wall  # went direct (our punch, theirs, or a plain dial)
        if len(self.records) > MAX_RECORDS:
            oldest = sorted(self.records, key=lambda p: self.records[p].relayed_at)
            for peer in oldest[:len(oldest) // 4]:
                del self.records[peer]

    async def _punch(self, protocol: DCUtRProtocol, peer: str, rec: PunchRecord) -> None:
        rec.attempts += 1
        try:
            with trio.move_on_after(PUNCH_TIMEOUT):
                await protocol.initiate_hole_punch(ID.from_base58(peer))
            if self.host.is_connected(peer) and not self.host.is_relayed(peer):
                rec.successes += 1
                if rec.direct_at is None:
                    rec.direct_at = self.wall()
                log.info("hole punch to %s: direct after %.1f s (attempt %d)", peer[-8:],
                         rec.direct_at - rec.relayed_at, rec.attempts)
            else:
                rec.next_try = self.clock() + RETRY_AFTER
                log.info("hole punch to %s: attempt %d failed", peer[-8:], rec.attempts)
        finally:
            self._busy.discard(peer)

    def status(self) -> dict[str, Any]:
        recs = self.records.values()
        return {"enabled": self.enabled,
                "attempts": sum(r.attempts for r in recs), "successes": sum(r.successes for r in recs),
                "relayed_now": len(self.host.relayed_peers()),
                "peers": {p: r.to_json() for p, r in sorted(self.records.items())}}
