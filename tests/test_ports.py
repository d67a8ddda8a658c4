"""A port in use stops ``poolai node run`` with one line naming the port and its flag."""

from __future__ import annotations

import logging
import socket

import pytest

from poolai.mesh.errors import PortInUse
from poolai.mesh.host import check_port_free
from poolai.node import config as config_mod
from poolai.node.cli.main import main
from poolai.node.node import Node

pytestmark = pytest.mark.timeout(60)


def _listening(reuseport: bool = False) -> socket.socket:
    """A socket listening on a free loopback port, as py-libp2p's listeners (SO_REUSEPORT) or
    any other program's."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock


@pytest.mark.parametrize("reuseport", [False, True])
def test_a_listened_port_is_in_use_even_to_a_reuseport_listener(reuseport):
    with _listening(reuseport) as busy:
        port = busy.getsockname()[1]
        with pytest.raises(PortInUse) as caught:
            check_port_free(f"/ip4/127.0.0.1/tcp/{port}")
        assert caught.value.port == port
        check_port_free("/ip4/127.0.0.1/tcp/0")  # any free port: nothing to check
    check_port_free(f"/ip4/127.0.0.1/tcp/{port}")  # closed: free again


def _node(tmp_path, **flags) -> Node:
    return Node(config_mod.load(tmp_path / "node", flags, environ={}))


def test_a_busy_listen_port_names_the_port_and_the_flag(tmp_path):
    with _listening(reuseport=True) as busy:
        port = busy.getsockname()[1]
        node = _node(tmp_path, listen=[f"/ip4/127.0.0.1/tcp/{port}"], api_port=0)
        with pytest.raises(config_mod.ConfigError) as caught:
            node._claim_ports()
    text = str(caught.value)
    assert f"listen port {port}" in text and "--listen /ip4/127.0.0.1/tcp/<port>" in text


def test_a_busy_api_port_names_the_port_and_the_flag(tmp_path):
    with _listening() as busy:
        port = busy.getsockname()[1]
        node = _node(tmp_path, listen=["/ip4/127.0.0.1/tcp/0"], api_port=port)
        with pytest.raises(config_mod.ConfigError) as caught:
            node._claim_ports()
    text = str(caught.value)
    assert f"api port {port}" in text and "--api-port" in text


@pytest.fixture
def root_logging():
    """``poolai node run`` sets up the process's logging; put the test process's back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_node_run_on_a_busy_port_prints_one_line_and_starts_nothing(tmp_path, capsys, root_logging):
    with _listening() as busy:
        port = busy.getsockname()[1]
        code = main(["--data-dir", str(tmp_path / "node"), "node", "run",
                     "--listen", "/ip4/127.0.0.1/tcp/0", "--api-port", str(port)])
    err = capsys.readouterr().err
    assert code != 0
    assert err.count("\n") == 1 and f"api port {port}" in err and "Traceback" not in err
    assert not (tmp_path / "node" / "identity.key").exists()  # stopped before anything started
