"""Who counts as a mesh member: identified, and not a reachability dial-back."""

from __future__ import annotations

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from poolai.mesh.host import open_host
from poolai.mesh.members import DIALER_MARK, is_member, members
from tests.polling import poll_until

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
IDENTIFY = "/ipfs/id/1.0.0"
OVERLAY = "/poolai/overlay/1.0.0"


def test_a_peer_is_no_member_before_identify_answers():
    assert not is_member(None)
    assert not is_member(frozenset())


def test_an_identified_peer_is_a_member_whatever_it_serves_yet():
    # A node identified before its services registered their protocols lists only
    # libp2p's own: still a member (services start after the host listens).
    assert is_member(frozenset({IDENTIFY}))
    assert is_member(frozenset({IDENTIFY, OVERLAY}))


def test_a_dial_back_identity_is_never_a_member():
    assert not is_member(frozenset({IDENTIFY, DIALER_MARK}))
    assert not is_member(frozenset({IDENTIFY, OVERLAY, DIALER_MARK}))


def test_members_keeps_the_order_and_drops_the_rest():
    protocols = {"a": frozenset({IDENTIFY}), "b": frozenset({DIALER_MARK, IDENTIFY}), "c": None,
                 "d": frozenset({OVERLAY, IDENTIFY})}
    assert members(["d", "c", "b", "a"], protocols.get) == ["d", "a"]


@pytest.mark.live
async def test_real_hosts_a_dial_back_host_is_connected_but_no_member():
    async def serve_nothing(stream):  # the marker needs a handler; it is never opened
        await stream.aclose()

    with trio.fail_after(20):
        async with open_host(create_new_key_pair(), LOOPBACK) as node, \
                open_host(create_new_key_pair(), LOOPBACK) as peer, \
                open_host(create_new_key_pair(), []) as dialer:
            dialer.set_handler(DIALER_MARK, serve_nothing)
            await peer.connect(node.peer_id, node.transport_addrs())
            await dialer.connect(node.peer_id, node.transport_addrs())
            await poll_until(lambda: node.member_peers() == [peer.peer_id]
                             and node.protocols_of(dialer.peer_id) is not None)
            assert set(node.connected_peers()) == {peer.peer_id, dialer.peer_id}
            assert node.member_peers() == [peer.peer_id]
