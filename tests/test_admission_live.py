"""A Sybil burst against a node's capacity table, on real libp2p hosts on 127.0.0.1.

The victim (a full node that runs no jobs) and one real worker (a full node, 100 ms away
each way through the latency emulator, so it measures worse than the 150 ms a peer of
unknown distance is assumed to be) share a mesh with a hostile node: a full node too
(it stores shares like any other), which also relays, through its gossipsub, adverts
signed by 500 fresh keys. Each claims 1,024 free slots and the victim's own coordinate,
settled. None of those identities is a node. Before admission, such a burst filled the
table and ranked above the real worker, and a job made offer after offer to peers that
do not exist.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from pathlib import Path

import pytest
import torch
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import PUBSUB_SIGNING_PREFIX
from polling import wait_for
from safetensors.torch import save_file

from poolai.mesh import adverts, identity
from poolai.mesh.gossip import Gossip
from poolai.mesh.latency import LATENCY_ENV
from poolai.node import config as config_mod
from poolai.node.capacity import rules as cap
from poolai.node.capacity.inventory import Inventory
from poolai.node.capacity.rules import LocalState, Requirements, make_advert
from poolai.node.jobs.models import build_model
from poolai.node.jobs.spec import MLPConfig
from poolai.node.node import open_node

pytestmark = [pytest.mark.live, pytest.mark.timeout(240)]

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
SYBILS = 500
BATCH = 16  # forged adverts in flight at once: under py-libp2p's outbound queue of 32 RPCs
MAX_FAILED_OFFERS = 1
GiB = 1 << 30


async def relay_forged(gossip: Gossip, keys, data: bytes) -> None:  # type: ignore[no-untyped-def]
    """What a hostile relay does: hand a message that ``keys`` signed (as its origin) straight to
    its gossipsub router, past its own validator, which sends it to its mesh peers as if it
    were passing on somebody's advert."""
    pubsub = gossip._pubsub
    msg = rpc_pb2.Message(data=data, topicIDs=[adverts.TOPIC],
                          from_id=ID.from_pubkey(keys.public_key).to_bytes(),
                          seqno=secrets.token_bytes(8))
    msg.signature = keys.private_key.sign(PUBSUB_SIGNING_PREFIX.encode() + msg.SerializeToString())
    msg.key = keys.public_key.serialize()
    await pubsub.router.publish(pubsub.my_id, msg)


def sybil_advert(keys, coord: adverts.CoordAdvert) -> bytes:  # type: ignore[no-untyped-def]
    peer = str(ID.from_pubkey(keys.public_key))
    inventory = Inventory((), 256, 1024 * GiB, 1024 * GiB, 1 << 44)
    state = LocalState(peer, "poolai/0.1.0", job_slots=1024)
    advert = make_advert(inventory, state, seq=int(time.time() * 1000), now=time.time(), ttl=600.0,
                         coord=coord)
    return adverts.sign(advert, keys.private_key.sign, keys.public_key.to_bytes())


async def job_files(node, tmp_path: Path) -> tuple[dict, dict]:  # type: ignore[no-untyped-def]
    """A small MLP job's weights and inputs, put into storage through ``node``."""
    torch.manual_seed(7)
    model = build_model(MLPConfig(16, (32,), 4))
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(7))
    refs, files = {}, {}
    for name, tensors in {"weights.safetensors": dict(model.state_dict()),
                          "inputs.safetensors": {"x": x}}.items():
        path = tmp_path / name
        save_file({k: v.contiguous() for k, v in tensors.items()}, path)
        data = path.read_bytes()
        refs[name] = {"name": name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        with trio.fail_after(60):
            files[name] = await node.jobs.files.put(path)
    job = {"program": {"kind": "builtin", "family": "mlp",
                       "config": {"in_features": 16, "hidden": [32], "out_features": 4},
                       "weights": refs["weights.safetensors"]},
           "inputs": refs["inputs.safetensors"], "retry_budget": 2}
    return job, files


async def test_a_sybil_burst_cannot_push_the_real_worker_below_fakes(tmp_path, monkeypatch):
    dirs = {name: tmp_path / name for name in ("victim", "worker")}
    ids = {name: identity.peer_id_of(identity.load_or_create(d / "identity.key")[0])
           for name, d in dirs.items()}
    latency = tmp_path / "latency.json"
    latency.write_text(json.dumps({"version": 1, "one_way_ms": {ids["victim"]: 100.0,
                                                                ids["worker"]: 100.0}}))
    monkeypatch.setenv(LATENCY_ENV, str(latency))
    environ = {"POOLAI_CREDITS_SYNC_INTERVAL": "3600", "POOLAI_CAPACITY_HEARTBEAT": "0.5"}
    torch.set_num_threads(1)

    with trio.fail_after(220):
        victim_cfg = config_mod.load(dirs["victim"], {"listen": LOOPBACK, "api_port": 0},
                                     environ={**environ, "POOLAI_JOB_SLOTS": "0"})
        async with open_node(victim_cfg) as victim:
            bootstrap = {"listen": LOOPBACK, "api_port": 0, "bootstrap": [victim.host.addrs()[0]]}
            worker_cfg = config_mod.load(dirs["worker"], bootstrap, environ=environ)
            async with open_node(worker_cfg) as worker:
                monkeypatch.delenv(LATENCY_ENV)  # the hostile node is near
                evil_cfg = config_mod.load(tmp_path / "evil", bootstrap,
                                           environ={**environ, "POOLAI_JOB_SLOTS": "0"})
                async with open_node(evil_cfg) as evil:
                    await attack(victim, worker, evil, tmp_path)


async def attack(victim, worker, evil, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    capacity = victim.capacity
    await wait_for(lambda: capacity.table.get(worker.peer_id) is not None,
                   "the worker's advert at the victim")
    gossip = evil.capacity._gossip  # the hostile node's own pubsub relays the forgeries
    assert gossip is not None
    await wait_for(lambda: victim.peer_id in gossip.mesh_peers(adverts.TOPIC),
                   "the victim in the hostile node's mesh")

    me = victim.overlay.overlay.table.coord  # what the victim advertises
    copied = adverts.CoordAdvert(tuple(me.vec), me.height, 0.0)  # and "settled"
    keys = [create_new_key_pair() for _ in range(SYBILS)]
    sybils = {str(ID.from_pubkey(k.public_key)) for k in keys}

    def judged() -> int:  # forged adverts the victim has stored or turned away
        held = sum(1 for e in capacity.table.entries(time.time()) if e.peer_id in sybils)
        return held + capacity.status()["rejected"].get("not_admitted", 0)

    for start in range(0, SYBILS, BATCH):
        for k in keys[start:start + BATCH]:
            await relay_forged(gossip, k, sybil_advert(k, copied))
        await wait_for(lambda n=start + BATCH: judged() >= min(n, SYBILS),
                       f"the victim to judge {start + BATCH} forged adverts")

    # The table stays within its bounds: a handful on probation per relay (the hostile node,
    # and the worker, which passes on the forgeries it holds itself), none ranked high.
    held = {e.peer_id for e in capacity.table.entries(time.time())} & sybils
    relays = {p: capacity.table.heard_via(p) for p in victim.host.connected_peers()}
    assert set(relays) == {worker.peer_id, evil.peer_id}
    assert all(n <= cap.MAX_HEARD_PER_RELAY for n in relays.values()), relays
    assert sum(relays.values()) == len(held) and relays[evil.peer_id] > 0, relays
    assert capacity.table.heard <= cap.MAX_HEARD and len(capacity.table) <= cap.MAX_ENTRIES
    assert all(capacity.table.on_probation(p) for p in held)
    ranked = capacity.capable(Requirements())
    assert ranked[0].peer_id == worker.peer_id, [c.to_json() for c in ranked[:3]]
    assert {c.peer_id for c in ranked[1:]} == held
    # The copied coordinate bought no nearness: never measured, so never near.
    assert all(c.cost_ms >= cap.DEFAULT_RTT_MS for c in ranked[1:])
    assert capacity.offer_order(Requirements(), {})[0] == worker.peer_id

    # A job submitted on the victim goes to the real worker, offered few fakes if any.
    job, files = await job_files(victim, tmp_path)
    sub = victim.jobs.submit(job, files)
    with trio.fail_after(120):
        await sub.finished.wait()
    report = victim.jobs.job_json(sub)
    assert sub.result is not None and sub.result.status.value == "ok", report
    assert sub.worker == worker.peer_id, report
    failed = [a for r in sub.runs for a in r.dispatch.attempts if a.peer in sybils]
    assert len(failed) <= MAX_FAILED_OFFERS, report
