"""The capacity advert: schema, signing, and every way verification refuses an advert."""

from __future__ import annotations

import dataclasses
import math

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from poolai.mesh import adverts, wire
from poolai.mesh.adverts import AdvertRejected, CoordAdvert, GpuAdvert

NOW = 1_800_000_000.0


def key(seed: int) -> tuple[Ed25519PrivateKey, bytes, str]:
    private = Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
    public = private.public_key().public_bytes_raw()
    return private, public, adverts.peer_id_from_public_key(public)


def gpu(index: int = 0, **changes) -> GpuAdvert:
    base = GpuAdvert(index=index, name="NVIDIA A100-SXM4-80GB", uuid=f"GPU-{index:08d}",
                     memory_total=80 << 30, memory_free=70 << 30, cc_major=8, cc_minor=0,
                     utilization=3, temperature_c=41, power_w=61.5, power_limit_w=400.0,
                     pcie_gen=4, pcie_width=16)
    return dataclasses.replace(base, **changes)


def advert(peer_id: str, **changes) -> adverts.Advert:
    base = adverts.Advert(
        peer_id=peer_id, seq=100, timestamp=NOW, ttl=30.0, software="poolai/0.1.0", protocol=1,
        simulated=False, gpus=(gpu(0), gpu(1)), cpu_cores=32, ram_total=256 << 30,
        ram_free=200 << 30, storage_free=1 << 40, job_slots=2, free_slots=2, queue_length=0,
        models=("llama-3-8b",), driver_version="550.54.15", cuda_version="12.4", torch_cuda=True,
        coord=CoordAdvert((1.0, 2.0, 3.0, 4.0), 0.5, 0.3), payout_address="poolai1qexample",
    )
    return dataclasses.replace(base, **changes)


def signed(seed: int = 1, **changes) -> bytes:
    private, public, peer = key(seed)
    return adverts.sign(advert(peer, **changes), private.sign, public)


def raw_envelope(body: bytes, seed: int = 1, *, public: bytes | None = None) -> bytes:
    """An envelope around any body bytes, correctly signed: for bodies ``sign`` would refuse."""
    private, own_public, _ = key(seed)
    sig = private.sign(adverts.SIGNING_DOMAIN + body)
    return wire.encode(adverts.SignedAdvert(body, public or own_public, sig))


def body_map(seed: int = 1, **changes) -> dict:
    _, _, peer = key(seed)
    return wire.to_wire(advert(peer, **changes))


def reason_of(data: bytes, **kwargs) -> str:
    with pytest.raises(AdvertRejected) as info:
        adverts.verify(data, now=NOW, **kwargs)
    return info.value.reason


def test_sign_then_verify_round_trips():
    _, _, peer = key(1)
    assert adverts.verify(signed(1), now=NOW) == advert(peer)


def test_peer_id_derivation_matches_libp2p():
    from libp2p.crypto.ed25519 import Ed25519PrivateKey as Libp2pKey
    from libp2p.crypto.keys import KeyPair

    from poolai.mesh.identity import peer_id_of

    private = Libp2pKey.from_bytes(bytes([7]) * 32)
    pair = KeyPair(private, private.get_public_key())
    assert adverts.peer_id_from_public_key(pair.public_key.to_bytes()) == peer_id_of(pair)


def test_the_largest_legal_advert_fits_the_cap():
    name = "x" * 96
    gpus = tuple(gpu(i, name=name, uuid=name) for i in range(adverts.MAX_GPUS))
    models = tuple(f"{i:03d}" + "m" * 125 for i in range(adverts.MAX_MODELS))
    data = signed(1, gpus=gpus, models=models, payout_address="p" * 128, software="s" * 64,
                  coord=CoordAdvert((1e5,) * 8, 60_000.0, 10.0), seq=adverts.MAX_SEQ,
                  driver_version="d" * 32, cuda_version="c" * 16)
    assert len(data) <= adverts.MAX_ADVERT
    assert adverts.verify(data, now=NOW).gpus == gpus


def test_typical_adverts_are_small():
    assert len(signed(1, gpus=())) < 700  # 634 bytes measured; each GPU adds about 224
    assert len(signed(1, gpus=tuple(gpu(i) for i in range(8)))) < 2600


def test_sign_refuses_an_advert_of_another_peer():
    private, public, _ = key(1)
    _, _, other = key(2)
    with pytest.raises(ValueError):
        adverts.sign(advert(other), private.sign, public)


def test_oversize_is_refused_before_unpacking():
    assert reason_of(b"\x00" * (adverts.MAX_ADVERT + 1)) == "oversize"


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\x92\x01", b"\x85garbage", signed(1)[:-5]])
def test_malformed_msgpack(data):
    assert reason_of(data) == "malformed"


def test_a_body_changed_after_signing_fails_the_signature():
    data = bytearray(signed(1))
    index = bytes(data).index(b"llama-3-8b")
    data[index] ^= 0x01
    assert reason_of(bytes(data)) == "bad_signature"


def test_signed_by_another_key_fails_the_signature():
    mine, public, peer = key(1)
    other, _, _ = key(2)
    body = wire.encode(advert(peer))
    forged = wire.encode(adverts.SignedAdvert(body, public, other.sign(adverts.SIGNING_DOMAIN + body)))
    assert reason_of(forged) == "bad_signature"


def test_a_valid_signature_for_someone_elses_peer_id_is_refused():
    _, _, victim = key(2)
    data = raw_envelope(wire.encode(advert(victim)), seed=1)
    assert reason_of(data) == "peer_mismatch"


def test_malformed_key_and_signature_lengths():
    body = wire.encode(advert(key(1)[2]))
    short_key = wire.encode(adverts.SignedAdvert(body, b"k" * 31, b"s" * 64))
    short_sig = wire.encode(adverts.SignedAdvert(body, key(1)[1], b"s" * 63))
    assert reason_of(short_key) == "bad_key"
    assert reason_of(short_sig) == "bad_signature"


def test_unknown_fields_are_refused_at_every_level():
    top = body_map(1)
    top["gossip_me"] = 1
    nested = body_map(1)
    nested["gpus"][1]["overclock"] = True
    envelope = msgpack.unpackb(signed(1))
    envelope["extra"] = b""
    for data in (raw_envelope(msgpack.packb(top)), raw_envelope(msgpack.packb(nested)),
                 msgpack.packb(envelope)):
        assert reason_of(data) == "unknown_field"


@pytest.mark.parametrize("changes", [
    {"seq": "100"},
    {"seq": 0},
    {"ttl": 0.5},
    {"timestamp": math.nan},
    {"gpus": [{"type": "capacity.gpu"}]},
    {"cpu_cores": -1},
])
def test_schema_violations(changes):
    body = body_map(1)
    body.update(changes)
    assert reason_of(raw_envelope(msgpack.packb(body))) == "schema"


@pytest.mark.parametrize("changes", [
    {"free_slots": 3, "job_slots": 2},
    {"ram_free": 300 << 30},
    {"gpus": (gpu(0, memory_free=90 << 30),)},
    {"gpus": (gpu(0), gpu(0))},
    {"models": ("",)},
    {"coord": CoordAdvert((math.inf,), 0.0, 0.0)},
])
def test_inconsistent_adverts_are_schema_errors(changes):
    _, _, peer = key(1)
    data = raw_envelope(wire.encode(advert(peer, **changes)))
    assert reason_of(data) == "schema"


def test_timestamps_skew_and_age():
    assert adverts.verify(signed(1, timestamp=NOW + 29), now=NOW)
    assert reason_of(signed(1, timestamp=NOW + 31)) == "future"
    assert reason_of(signed(1, timestamp=NOW - 100), max_age=60) == "expired"


def test_stale_sequence_numbers_are_ignored_not_penalised():
    data = signed(1, seq=100)
    assert adverts.verify(data, now=NOW, last_seq=99).seq == 100
    for last in (100, 101):
        with pytest.raises(AdvertRejected) as info:
            adverts.verify(data, now=NOW, last_seq=last)
        assert info.value.reason == "stale" and not info.value.penalise


def test_origin_must_be_the_advertised_peer():
    _, _, peer = key(1)
    _, _, other = key(2)
    assert adverts.verify(signed(1), now=NOW, origin=peer)
    assert reason_of(signed(1), origin=other) == "origin_mismatch"


def test_every_reason_but_stale_and_expired_is_penalised():
    assert {r for r in adverts.REASONS if AdvertRejected(r, "").penalise} == set(adverts.REASONS) - {
        "stale", "expired"}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_only_ever_raise_advert_rejected(data):
    with pytest.raises(AdvertRejected):
        adverts.verify(data, now=NOW)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0), st.integers(min_value=1, max_value=255))
def test_any_single_byte_change_is_refused(position, flip):
    data = bytearray(signed(1))
    data[position % len(data)] ^= flip
    with pytest.raises(AdvertRejected):
        adverts.verify(bytes(data), now=NOW)
