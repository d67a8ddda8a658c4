"""The node key: created once with mode 0600, reused, and never silently replaced."""

from __future__ import annotations

import os

import pytest
from racing import race

from poolai.mesh import identity


def test_created_private_and_reused(tmp_path):
    path = tmp_path / "sub" / "identity.key"
    first, created = identity.load_or_create(path)
    assert created
    assert os.stat(path).st_mode & 0o777 == 0o600
    again, created_again = identity.load_or_create(path)
    assert not created_again
    assert identity.peer_id_of(first) == identity.peer_id_of(again)


@pytest.mark.parametrize("content", [b"", b"not a key", b"\x08\x01\x12\x02ab", b"x" * 5000])
def test_corrupt_key_is_an_error_and_left_in_place(tmp_path, content):
    path = tmp_path / "identity.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(identity.IdentityError):
        identity.load_or_create(path)
    assert path.read_bytes() == content


def test_key_readable_by_others_is_refused(tmp_path):
    path = tmp_path / "identity.key"
    identity.load_or_create(path)
    path.chmod(0o644)
    with pytest.raises(identity.IdentityError, match="chmod 600"):
        identity.load(path)


def test_concurrent_first_starts_agree_on_one_identity(tmp_path):
    path = tmp_path / "identity.key"
    peers, created = [], []

    def first_start() -> None:
        key_pair, made = identity.load_or_create(path)
        peers.append(identity.peer_id_of(key_pair))
        created.append(made)

    assert race(first_start, [()] * 6) == []
    assert len(peers) == 6 and len(set(peers)) == 1 and created.count(True) == 1
    assert identity.peer_id_of(identity.load(path)) == peers[0]
    assert list(tmp_path.iterdir()) == [path]
