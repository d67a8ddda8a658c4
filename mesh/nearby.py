"""What a node measured: smoothed RTTs, its nearest peers, and its proximity walk.

Proximity links and Vivaldi's near samples both need the node's *nearest*
peers, and nobody hands those out: a node finds them by walking downhill.
Now and then it asks one of its nearest measured peers for the peers *that*
peer knows nearest to the asker's coordinate (``answer_near``), and probes
the most promising of them (``walk_probes``); each step ends closer.
"""

from __future__ import annotations

from collections.abc import Container, Iterable

from poolai.mesh.bounded import CappedDict
from poolai.mesh.coords import Coord, predicted_rtt
from poolai.mesh.routing import PeerInfo

NEAR_ANSWER = 8  # peers in an answer to a near query
WALK_POOL = 32  # peers named by walk answers kept until the next samples
SLACK = 16  # trim in batches: one scan per SLACK samples, not one per sample
SMOOTHING = 0.3  # weight of a new RTT sample in the moving average


class Measurements:
    """Bounded RTT memory (``memory`` peers beyond the ones kept on purpose), the least
    recently measured forgotten first."""

    def __init__(self, memory: int) -> None:
        self.memory = memory
        self.rtt: CappedDict[bytes, tuple[float, PeerInfo]] = CappedDict(memory, renew=True, slack=SLACK)
        self.near: list[bytes] = []  # nearest measured peers, refreshed by ``rank``
        self.walk: dict[bytes, PeerInfo] = {}

    def record(self, info: PeerInfo, rtt_ms: float) -> bool:
        """Take a sample; True when the peer was not measured before."""
        old = self.rtt.get(info.peer_id)
        smoothed = rtt_ms if old is None else (1 - SMOOTHING) * old[0] + SMOOTHING * rtt_ms
        self.rtt[info.peer_id] = (smoothed, info)
        return old is None

    def position_of(self, peer_id: bytes) -> int | None:
        entry = self.rtt.get(peer_id)
        return entry[1].position if entry is not None else None

    def forget(self, peer_id: bytes) -> None:
        self.rtt.pop(peer_id, None)
        self.walk.pop(peer_id, None)

    def trim(self, keep: Container[bytes]) -> None:
        self.rtt.trim(lambda pid, _: pid in keep)

    def fresh(self, peer: PeerInfo) -> PeerInfo:
        """``peer`` with the newest coordinate we have for it."""
        entry = self.rtt.get(peer.peer_id)
        return entry[1] if entry is not None and entry[1].coord is not None else peer

    def rank(self, exclude: Container[bytes], near_count: int) -> list[tuple[float, PeerInfo]]:
        """Measured peers by RTT (``exclude`` left out); remembers the nearest few."""
        ranked = sorted(
            ((rtt, info) for pid, (rtt, info) in self.rtt.items() if pid not in exclude),
            key=lambda e: e[0],
        )
        self.near = [info.peer_id for _, info in ranked[:near_count]]
        return ranked

    def answer_near(
        self, coord: Coord, extra: Iterable[PeerInfo], skip: Container[bytes], limit: int
    ) -> tuple[PeerInfo, ...]:
        """Our nearest peers plus ``extra``, ranked by predicted RTT to ``coord``.

        Our nearest peers and those that chose us as their proximity link are
        near us, so near whoever asked one of its nearest: a short list keeps
        an answer cheap and still moves the asker's walk downhill.
        """
        seen: dict[bytes, PeerInfo] = {}
        for pid in self.near:
            entry = self.rtt.get(pid)
            if entry is not None:
                seen[pid] = entry[1]
        for p in extra:
            seen.setdefault(p.peer_id, p)
        ranked = sorted(
            (predicted_rtt(coord, p.coord), p.position, p)
            for p in seen.values()
            if p.coord is not None and len(p.coord.vec) == len(coord.vec) and p.peer_id not in skip
        )
        return tuple(p for _, _, p in ranked[: max(0, min(limit, NEAR_ANSWER))])

    def offer_walk(self, peers: Iterable[PeerInfo], skip: Container[bytes]) -> None:
        for p in peers:
            if len(self.walk) >= WALK_POOL:
                return
            if p.peer_id not in skip:
                self.walk[p.peer_id] = p

    def walk_probes(self, coord: Coord, count: int, skip: Container[bytes]) -> list[bytes]:
        """The ``count`` unmeasured walk candidates predicted nearest to us; clears the pool."""
        ranked = sorted(
            (predicted_rtt(coord, p.coord), pid)
            for pid, p in self.walk.items()
            if p.coord is not None and len(p.coord.vec) == len(coord.vec)
            and pid not in self.rtt and pid not in skip
        )
        self.walk.clear()
        return [pid for _, pid in ranked[:count]]
