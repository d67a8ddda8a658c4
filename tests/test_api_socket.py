"""The local API's Unix socket: where it can be made, its mode, and what it replaces.

(That the node serves the API on it, and that ``poolai put/get`` use it, is shown
by ``test_storage_live``.)
"""

from __future__ import annotations

import socket
import stat

import pytest

from poolai.node.web.server import MAX_SOCKET_PATH, open_unix_listener


def test_the_socket_is_private_before_it_listens(tmp_path):
    path = tmp_path / "api.sock"
    listener = open_unix_listener(path)
    assert listener is not None
    try:
        assert stat.S_ISSOCK(path.stat().st_mode) and stat.S_IMODE(path.stat().st_mode) == 0o600
        probe = socket.socket(socket.AF_UNIX)
        with pytest.raises(ConnectionRefusedError):  # bound, not yet listening
            probe.connect(str(path))
        probe.close()
    finally:
        listener.close()


def test_a_stale_socket_is_replaced_and_other_files_are_left_alone(tmp_path):
    path = tmp_path / "api.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # what a SIGKILLed node leaves behind
    listener = open_unix_listener(path)
    assert listener is not None
    listener.close()

    other = tmp_path / "notes"
    other.write_text("mine")
    assert open_unix_listener(other) is None
    assert other.read_text() == "mine"


def test_a_path_too_long_for_a_socket_gets_none(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    path = deep / "api.sock"
    assert len(str(path).encode()) > MAX_SOCKET_PATH
    assert open_unix_listener(path) is None
    assert not path.exists()
