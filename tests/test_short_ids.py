"""One short form of every id: its last eight characters."""

from __future__ import annotations

from poolai.mesh.peer_ids import peer_id_bytes
from poolai.mesh.short_ids import short_hex, short_id, short_peer

PEER = "12D3KooWEXu4vobfMUPResq7nevvmhBUNiQNq4UHuRx1hTddsKK6"


def test_a_peer_reads_the_same_from_its_text_and_its_bytes():
    assert short_id(PEER) == short_peer(peer_id_bytes(PEER)) == "hTddsKK6"


def test_other_ids_are_the_tail_of_their_hex():
    file_id = bytes(range(32))
    assert short_hex(file_id) == short_id(file_id.hex()) == "1c1d1e1f"
    assert short_peer(b"peer-01") == short_hex(b"peer-01")  # no multihash: a test's fake peer
