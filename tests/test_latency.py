"""The emulated-latency table (a test facility): read from the environment, checked strictly.

How a host applies it to streams and pings is tested with real hosts in test_host.py.
"""

from __future__ import annotations

import json

import pytest
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from poolai.mesh.latency import LATENCY_ENV, EmulatedLatency


def pid_of(keys) -> str:  # type: ignore[no-untyped-def]
    return ID.from_pubkey(keys.public_key).to_base58()


def test_emulated_latency_table_is_read_from_the_environment(tmp_path):
    peer = pid_of(create_new_key_pair())
    assert EmulatedLatency.from_env({}) is None
    assert EmulatedLatency.from_env({LATENCY_ENV: ""}) is None
    path = tmp_path / "latency.json"
    path.write_text(json.dumps({"version": 1, "one_way_ms": {peer: 25}}))
    table = EmulatedLatency.from_env({LATENCY_ENV: str(path)})
    assert table is not None and table.delay(peer) == 0.025 and table.delay("other") == 0.0
    for bad, message in [({"version": 2, "one_way_ms": {}}, "expected"),
                         ({"version": 1, "one_way_ms": {peer: -1}}, "is not in"),
                         ({"version": 1, "one_way_ms": {peer: True}}, "is not in"),
                         ({"version": 1, "one_way_ms": {"nope": 5}}, "peer id")]:
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=message):
            EmulatedLatency.load(path)
    with pytest.raises(ValueError, match="latency table"):
        EmulatedLatency.load(tmp_path / "missing.json")
