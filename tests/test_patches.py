"""The py-libp2p patches: each guard passes on the installed py-libp2p and fails loudly,
naming the patch, when what it relies on changes; install is explicit and idempotent."""

from __future__ import annotations

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.network.swarm import Swarm
from libp2p.pubsub.pubsub import Pubsub
from libp2p.security.noise import io as noise_io
from libp2p.security.noise.io import BaseNoiseMsgReadWriter
from libp2p.stream_muxer.yamux.yamux import YamuxStream

from poolai.mesh import patches
from poolai.mesh.host import open_host
from poolai.mesh.patches import PATCHES, PatchMismatch, guard, pubsub_writes

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def unpatched():
    """py-libp2p as upstream ships it for the test; every patch installed again after.

    Ask for it before ``monkeypatch``: its teardown must run once monkeypatch has undone
    its stand-ins.
    """
    for patch in PATCHES:
        patch.remove()
    yield
    for patch in PATCHES:
        patch.remove()
    patches.install()


def test_every_guard_passes_on_the_installed_py_libp2p():
    assert guard.installed_version() == "0.8.1"
    assert len({p.name for p in PATCHES}) == len(PATCHES)
    for patch in PATCHES:
        patch.check()
    patches.install()
    for patch in PATCHES:
        assert patch.applied, patch.name
        patch.check()  # once applied, the checks still look at py-libp2p's own code


def test_install_is_explicit_and_idempotent(unpatched):
    upstream = {(id(s.owner), s.name): vars(s.owner)[s.name] for p in PATCHES for s in p.swaps}
    assert upstream, "no patch replaces anything"
    assert not any(s.applied for p in PATCHES for s in p.swaps)
    patches.install()
    patches.install()
    for patch in PATCHES:
        for swap in patch.swaps:
            assert vars(swap.owner)[swap.name] is swap.new, (patch.name, swap.name)
            assert swap.saved is upstream[(id(swap.owner), swap.name)], (patch.name, swap.name)
    for patch in PATCHES:
        patch.remove()
    for patch in PATCHES:
        for swap in patch.swaps:
            assert vars(swap.owner)[swap.name] is upstream[(id(swap.owner), swap.name)]


async def _write_msg_without_prefix(self, msg):  # type: ignore[no-untyped-def]
    pass


async def _read_without_default(self, n):  # type: ignore[no-untyped-def]
    return b""


async def _send_window_update_without_lock(self, increment):  # type: ignore[no-untyped-def]
    pass


async def _write_of_fixed_frames(self, data):  # type: ignore[no-untyped-def]
    return len(data) // 65536


async def _inbound_handler_done_with_its_connection(self, read_write_closer, maddr,
                                                    failure_event):  # type: ignore[no-untyped-def]
    await self.upgrade_inbound_raw_conn(read_write_closer, maddr)


async def _sending_loop_of_its_own(self, peer_id, stream, queue):  # type: ignore[no-untyped-def]
    await stream.write(await queue.pop())


CHANGES = [
    ("yamux_tuning", YamuxStream, "send_window_update", _send_window_update_without_lock,
     "send_window_update takes (self, increment), not (self, increment, skip_lock=False)"),
    ("yamux_tuning", YamuxStream, "write", _write_of_fixed_frames,
     "YamuxStream.write no longer uses MAX_MESSAGE_SIZE"),
    ("noise_writes", BaseNoiseMsgReadWriter, "write_msg", _write_msg_without_prefix,
     "write_msg takes (self, msg), not (self, msg, prefix_encoded=False)"),
    ("read_ahead", RawConnection, "read", _read_without_default,
     "RawConnection.read takes (self, n), not (self, n=None)"),
    ("pubsub_writes", Pubsub, "handle_sending_messages", _sending_loop_of_its_own,
     "Pubsub.handle_sending_messages no longer uses write_msg"),
    ("inbound_slots", Swarm, "_do_handle_inbound_connection", _inbound_handler_done_with_its_connection,
     "Swarm._do_handle_inbound_connection no longer uses wait_finished"),
]


@pytest.mark.parametrize(("name", "owner", "attr", "stand_in", "message"), CHANGES,
                         ids=[f"{c[0]}-{c[2]}" for c in CHANGES])
def test_a_changed_signature_or_reader_fails_the_patch_loudly(monkeypatch, name, owner, attr,
                                                               stand_in, message):
    patch = next(p for p in PATCHES if p.name == name)
    patch.check()
    monkeypatch.setattr(owner, attr, stand_in)
    with pytest.raises(PatchMismatch, match=f"patch '{name}' no longer fits") as caught:
        patch.check()
    assert message in str(caught.value)
    with pytest.raises(PatchMismatch, match=name):
        patches.install()


def test_a_missing_module_global_fails_the_patch_loudly(monkeypatch):
    monkeypatch.delattr(noise_io, "MAX_PLAINTEXT_LENGTH")
    for name in ("yamux_tuning", "noise_writes"):
        patch = next(p for p in PATCHES if p.name == name)
        with pytest.raises(PatchMismatch, match=f"'{name}'.*MAX_PLAINTEXT_LENGTH is gone"):
            patch.check()


def test_another_py_libp2p_version_fails_every_patch_and_applies_none(unpatched, monkeypatch):
    monkeypatch.setattr(guard, "installed_version", lambda: "0.9.0")
    for patch in PATCHES:
        with pytest.raises(PatchMismatch, match=f"'{patch.name}' was written for py-libp2p "
                                                f"0.8.1, but 0.9.0 is installed"):
            patch.check()
    with pytest.raises(PatchMismatch):
        patches.install()
    assert not any(s.applied for p in PATCHES for s in p.swaps)


def test_a_failing_guard_leaves_every_patch_unapplied(unpatched, monkeypatch):
    monkeypatch.setattr(Pubsub, "handle_sending_messages", _sending_loop_of_its_own)
    with pytest.raises(PatchMismatch, match="pubsub_writes"):
        patches.install()
    assert not any(s.applied for p in PATCHES for s in p.swaps)


async def test_a_host_does_not_open_on_a_py_libp2p_its_patches_do_not_fit(monkeypatch):
    monkeypatch.setattr(guard, "installed_version", lambda: "0.9.0")
    with pytest.raises(PatchMismatch, match="0.9.0 is installed"):
        async with open_host(create_new_key_pair(), LOOPBACK):
            pytest.fail("the host opened")


def test_pubsub_writes_wraps_one_instance_only():
    class FakePubsub:
        async def write_msg(self, stream, rpc_msg):  # type: ignore[no-untyped-def]
            return True

    class Rpc:
        def ByteSize(self) -> int:  # noqa: N802 - protobuf's name
            return 40

    a, b = FakePubsub(), FakePubsub()
    sizes: list[int] = []
    pubsub_writes.count_writes(a, sizes.append)  # type: ignore[arg-type]
    assert trio.run(a.write_msg, None, Rpc()) is True
    assert trio.run(b.write_msg, None, Rpc()) is True
    assert sizes == [42]  # b, another Pubsub, is not counted


@pytest.mark.live
async def test_a_host_accepts_peers_after_hundreds_of_inbound_connections_came_and_went():
    """py-libp2p 0.8.1 keeps one of a host's 250 inbound slots per connection it ever accepted,
    until the host stops (mesh/patches/inbound_slots.py). 300 peers of their own identity
    connect once and leave; a fresh peer is then still let in, at once."""
    visits, at_once = 300, 20
    async with open_host(create_new_key_pair(), LOOPBACK) as a:

        async def visit() -> None:
            async with open_host(create_new_key_pair(), []) as b:
                await b.connect(a.peer_id, a.transport_addrs())
                await b.disconnect(a.peer_id)

        with trio.fail_after(45):
            for _ in range(visits // at_once):
                async with trio.open_nursery() as nursery:
                    for _ in range(at_once):
                        nursery.start_soon(visit)
        async with open_host(create_new_key_pair(), []) as fresh:
            with trio.fail_after(1):
                await fresh.connect(a.peer_id, a.transport_addrs())
            assert a.is_connected(fresh.peer_id)
