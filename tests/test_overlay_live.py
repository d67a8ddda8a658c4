"""Twelve node processes form the overlay ring, answer lookups, and heal after SIGKILLs."""

from __future__ import annotations

import bisect
import random

import httpx
import pytest

from poolai.mesh.peer_ids import peer_id_bytes
from poolai.mesh.ring import node_position
from poolai.node.launcher import NodeProcess, stop_all, wait_until

pytestmark = [pytest.mark.live, pytest.mark.timeout(240)]
FAST = {"POOLAI_OVERLAY_SCALE": "0.05"}  # probe and stabilise every 3 s


def true_successor(ring: list[tuple[int, str]], position: int, *, strictly_after: bool) -> str:
    """Owner of ``position`` on a sorted ring: first node at or after it (clockwise)."""
    positions = [p for p, _ in ring]
    index = (bisect.bisect_right if strictly_after else bisect.bisect_left)(positions, position)
    return ring[index % len(ring)][1]


def ring_of(nodes: list[NodeProcess]) -> list[tuple[int, str]]:
    return sorted((node_position(peer_id_bytes(n.peer_id)), n.peer_id) for n in nodes)


def ring_is_correct(nodes: list[NodeProcess]) -> bool:
    ring = ring_of(nodes)
    for node in nodes:
        overlay = node.get("/api/overlay")
        if not overlay["successors"]:
            return False
        position = int(overlay["position"], 16)
        if overlay["successors"][0]["peer_id"] != true_successor(ring, position, strictly_after=True):
            return False
        predecessor = ring[(ring.index((position, node.peer_id)) - 1) % len(ring)][1]
        if not overlay["predecessors"] or overlay["predecessors"][0]["peer_id"] != predecessor:
            return False
    return True


def lookups_correct(nodes: list[NodeProcess], keys: list[int]) -> tuple[int, int]:
    """(correct answers, total) for every node looking up every key."""
    ring = ring_of(nodes)
    good = total = 0
    for node in nodes:
        reply = httpx.post(
            node.api + "/api/overlay/lookup",
            json={"positions": [f"{k:016x}" for k in keys]},
            timeout=60,
        ).json()
        for key, result in zip(keys, reply["results"], strict=True):
            total += 1
            good += result["owner"] == true_successor(ring, key, strictly_after=False)
    return good, total


def test_ring_forms_routes_and_heals(tmp_path):
    rng = random.Random(7)
    keys = [rng.getrandbits(64) for _ in range(100)]
    nodes = [NodeProcess(tmp_path / "n0", env=FAST).start()]
    try:
        for i in range(1, 12):
            nodes.append(
                NodeProcess(tmp_path / f"n{i}", "--bootstrap", nodes[0].addr, env=FAST).start()
            )
        wait_until(lambda: ring_is_correct(nodes), 30, "every successor to be the true one")
        good, total = lookups_correct(nodes, keys)
        assert (good, total) == (1200, 1200)

        victims = [nodes[3], nodes[7], nodes[10]]
        for victim in victims:
            victim.kill()
        live = [n for n in nodes if n not in victims]
        wait_until(lambda: ring_is_correct(live), 30, "the ring to heal after three SIGKILLs")
        good, total = lookups_correct(live, keys)
        assert (good, total) == (900, 900)
    finally:
        stop_all(nodes)
