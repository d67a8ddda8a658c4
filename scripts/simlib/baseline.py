"""What the Kademlia and Chord baselines share: the live truth and the tables' snapshot of it.

Both take the same 64-bit ring positions as PoolAI. ``fail`` changes the
truth (who is alive, hence who owns a key) at once; the routing tables see
only the snapshot taken at the last ``rebuild`` (an idealised repair), so
before repair they still name failed nodes.
"""

from __future__ import annotations


class Baseline:
    def __init__(self, positions: list[int]) -> None:
        self.pos = positions
        self.alive = [True] * len(positions)
        self.rebuild()

    def _live(self) -> tuple[list[int], list[int]]:
        """(positions, indices) of the live nodes, in ring order."""
        live = sorted((p, i) for i, p in enumerate(self.pos) if self.alive[i])
        return [p for p, _ in live], [i for _, i in live]

    def fail(self, victims: list[int]) -> None:
        """Nodes stop abruptly: the truth changes now, the tables only at ``rebuild``."""
        for i in victims:
            self.alive[i] = False
        self.truth_pos, self.truth_idx = self._live()

    def rebuild(self) -> None:
        """Snapshot the live nodes for the tables (an idealised repair); a subclass also drops
        the tables it built from the old snapshot."""
        self.truth_pos, self.truth_idx = self._live()
        self.sorted_pos, self.sorted_idx = list(self.truth_pos), list(self.truth_idx)
