"""Placement: successor rule on the 64-bit ring, distinct holders per segment, stability."""

from __future__ import annotations

import hashlib
import itertools

import pytest

from poolai.storage import placement
from poolai.storage.placement import Ring


def peers(count: int, prefix: bytes = b"peer-") -> list[bytes]:
    return [prefix + str(i).encode() for i in range(count)]


def file_ids(count: int) -> list[bytes]:
    return [hashlib.sha256(b"file-%d" % i).digest() for i in range(count)]


def all_placements(ring: Ring, files: list[bytes], segments: int, n: int) -> dict:
    out = {}
    for fid in files:
        for seg in range(segments):
            for i, peer in enumerate(placement.segment_holders(ring, fid, seg, n)):
                out[(fid, seg, i)] = peer
    return out


def test_ring_position_is_first_eight_bytes_of_sha256():
    pid = b"some-peer"
    expected = int.from_bytes(hashlib.sha256(pid).digest()[:8], "big")
    assert placement.ring_position(pid) == expected
    assert 0 <= expected < placement.RING_SIZE


def test_ring_sorts_by_position_and_ignores_duplicates():
    ring = Ring.from_positions([(b"c", 30), (b"a", 10), (b"b", 20), (b"a", 99)])
    assert ring.peers == (b"a", b"b", b"c")
    assert ring.positions == (10, 20, 30)
    with pytest.raises(ValueError):
        Ring.from_positions([(b"x", 1 << 64)])


def test_successors_walk_clockwise_from_target_and_wrap():
    ring = Ring.from_positions([(b"a", 10), (b"b", 20), (b"c", 30)])
    assert list(ring.successors(15)) == [b"b", b"c", b"a"]
    assert list(ring.successors(20)) == [b"b", b"c", b"a"]
    assert list(ring.successors(31)) == [b"a", b"b", b"c"]


def test_holders_are_the_successors_of_each_target_skipping_used_peers():
    ring = Ring.from_peers(peers(30))
    fid = file_ids(1)[0]
    holders = placement.segment_holders(ring, fid, 0, 10)
    used: list[bytes] = []
    for i in range(10):
        target = placement.share_position(fid, 0, i)
        expected = next(p for p in ring.successors(target) if p not in used)
        used.append(expected)
        assert holders[i] == expected


def test_holders_are_distinct_per_segment_and_independent_of_input_order():
    names = peers(40)
    ring = Ring.from_peers(names)
    shuffled = Ring.from_peers(list(reversed(names)))
    for fid in file_ids(20):
        for seg in range(5):
            holders = placement.segment_holders(ring, fid, seg, 10)
            assert len(set(holders)) == 10
            assert holders == placement.segment_holders(shuffled, fid, seg, 10)


def test_fewer_peers_than_shares_reuses_peers_round_robin():
    ring = Ring.from_peers(peers(4))
    holders = placement.segment_holders(ring, file_ids(1)[0], 0, 10)
    assert len(holders) == 10
    assert set(holders[:4]) == set(ring.peers)
    assert set(holders[4:8]) == set(ring.peers)


def test_empty_ring_is_refused():
    with pytest.raises(ValueError):
        placement.segment_holders(Ring.from_peers([]), file_ids(1)[0], 0, 3)


def test_candidates_start_at_holder_then_skip_the_segment_holders():
    ring = Ring.from_peers(peers(25))
    fid = file_ids(1)[0]
    holders = placement.segment_holders(ring, fid, 3, 10)
    for i in range(10):
        walk = list(placement.share_candidates(ring, fid, 3, i, holders))
        assert walk[0] == holders[i]
        assert set(walk[1:]).isdisjoint(holders)
        assert len(walk) == 1 + 25 - 10


def test_manifest_holders_are_distinct_and_separate_from_share_targets():
    ring = Ring.from_peers(peers(20))
    fid = file_ids(1)[0]
    holders = placement.manifest_holders(ring, fid, 5)
    assert len(set(holders)) == 5
    assert placement.manifest_position(fid, 0) != placement.share_position(fid, 0, 0)
    walk = list(placement.manifest_candidates(ring, fid, 2, holders))
    assert walk[0] == holders[2] and set(walk[1:]).isdisjoint(holders)


def test_adding_one_peer_to_a_hundred_moves_about_one_percent():
    names = peers(100)
    files = file_ids(50)
    before = all_placements(Ring.from_peers(names), files, 2, 10)
    fractions = []
    for newcomer in peers(10, b"newcomer-"):
        after = all_placements(Ring.from_peers([*names, newcomer]), files, 2, 10)
        moved = [key for key in before if before[key] != after[key]]
        # Shares move to the newcomer, or into the slot it freed in the same segment.
        assert sum(after[key] == newcomer for key in moved) >= 0.8 * len(moved)
        fractions.append(len(moved) / len(before))
    # One position per peer: a single newcomer's arc varies, the average is ~1/101.
    assert max(fractions) < 0.05
    assert 0.003 < sum(fractions) / len(fractions) < 0.02


def test_removing_one_peer_moves_only_its_shares_and_a_few_neighbours():
    names = peers(100)
    files = file_ids(100)
    before = all_placements(Ring.from_peers(names), files, 2, 10)
    gone = names[17]
    after = all_placements(Ring.from_peers(names).without([gone]), files, 2, 10)
    moved = [key for key in before if before[key] != after[key]]
    lost = [key for key in before if before[key] == gone]
    assert set(lost) <= set(moved)
    assert len(moved) < 1.5 * len(lost) + 5
    assert gone not in after.values()


def test_load_is_spread_over_peers():
    names = peers(50)
    counts = dict.fromkeys(names, 0)
    for peer in all_placements(Ring.from_peers(names), file_ids(100), 2, 10).values():
        counts[peer] += 1
    mean = 2000 / 50
    # Consistent hashing without virtual nodes is uneven, but no peer is starved or swamped.
    assert max(counts.values()) < 5 * mean
    assert sum(1 for c in counts.values() if c == 0) <= 2


def test_ring_without_keeps_order():
    ring = Ring.from_peers(peers(6))
    smaller = ring.without([ring.peers[1], ring.peers[4]])
    assert smaller.peers == tuple(p for j, p in enumerate(ring.peers) if j not in (1, 4))
    assert all(a < b for a, b in itertools.pairwise(smaller.positions))


def test_lookup_walk_finds_every_share_after_a_leave_or_a_join():
    names = peers(30)
    ring = Ring.from_peers(names)
    changed = [ring.without([names[3]]), Ring.from_peers([*names, b"joiner"])]
    for fid in file_ids(40):
        for seg in range(2):
            old = placement.segment_holders(ring, fid, seg, 10)
            for new_ring in changed:
                new = placement.segment_holders(new_ring, fid, seg, 10)
                for i, holder in enumerate(old):
                    if holder not in new_ring:
                        continue  # that copy left with its peer; repair rebuilds it
                    walk = list(placement.share_lookup(new_ring, fid, seg, i, new))
                    assert holder in walk[: 10 + 1]


def test_lookup_walk_finds_a_put_fallback():
    ring = Ring.from_peers(peers(30))
    fid = file_ids(1)[0]
    holders = placement.segment_holders(ring, fid, 0, 10)
    for i in range(10):
        fallback = list(placement.share_candidates(ring, fid, 0, i, holders))[1]
        walk = list(placement.share_lookup(ring, fid, 0, i, holders))
        assert walk[0] == holders[i]
        assert fallback in walk[: 10 + 1]


def test_absent_peers_count_for_holders_but_are_never_candidates():
    """Three of ten peers leave (n = 10: every peer holds a share of every segment). With
    them kept as absent, every share that stayed is looked up first at the peer it was put
    on; leaving them out instead computes other holders for most segments."""
    names = peers(10)
    ring = Ring.from_peers(names)
    gone = set(names[2:5])
    reading = Ring.from_peers(names, absent=gone)
    assert reading.present() == ring.without(gone) and not ring.without(gone).absent
    shifted = 0
    for fid in file_ids(20):
        for seg in range(3):
            put_on = placement.segment_holders(ring, fid, seg, 10)
            assert placement.segment_holders(reading, fid, seg, 10) == put_on
            current = placement.segment_walks(reading, fid, seg, 10, 13).current
            shrunk = placement.segment_holders(ring.without(gone), fid, seg, 10)
            assert current == shrunk
            shifted += any(h != s for h, s in zip(put_on, shrunk, strict=True) if h not in gone)
            for i, holder in enumerate(put_on):
                walk = list(placement.share_lookup(reading, fid, seg, i, put_on, current))
                assert not gone & set(walk) and len(walk) == 7
                if holder in gone:
                    assert walk[0] == current[i]  # where repair puts it
                else:
                    assert walk[0] == holder
                    assert walk[1] == current[i] or current[i] == holder
                candidates = list(placement.share_candidates(reading, fid, seg, i, put_on))
                assert not gone & set(candidates)
    assert shifted > 30  # of 60 segments: the cost of computing on the smaller ring


def test_manifest_walks_skip_absent_peers_and_try_their_present_holders():
    names = peers(8)
    fid = file_ids(1)[0]
    ring = Ring.from_peers(names)
    placed = placement.manifest_holders(ring, fid, 5)
    reading = Ring.from_peers(names, absent=[placed[0]])
    walks = placement.manifest_walks(reading, fid, 5, 7)
    assert len(walks) == 5 and all(placed[0] not in w for w in walks)
    assert [w[0] for w in walks[1:]] == list(placed[1:])
    assert walks[0][0] == placement.manifest_holders(reading.present(), fid, 5)[0]
    assert placement.manifest_walks(Ring.from_peers([]), fid, 5, 7) == []
