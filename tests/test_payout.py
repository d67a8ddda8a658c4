"""Solana payout addresses: base58 alphabet, 32 bytes, and a point on the Ed25519 curve."""

from __future__ import annotations

import random

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from poolai.node import config as config_mod
from poolai.node.credits.payout import (
    PayoutAddressError,
    b58decode,
    b58encode,
    is_on_curve,
    validate_solana_address,
)

P = 2**255 - 19
D = (-121665 * pow(121666, -1, P)) % P


def real_address(seed: int) -> str:
    key = Ed25519PrivateKey.from_private_bytes(random.Random(seed).randbytes(32))
    return b58encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


def on_curve_by_euler(raw: bytes) -> bool:
    """An independent oracle: x^2 = (y^2 - 1) / (d y^2 + 1) has a root iff it is 0 or a residue."""
    encoded = int.from_bytes(raw, "little")
    y, sign = encoded & ((1 << 255) - 1), encoded >> 255
    if y >= P:
        return False
    x2 = (y * y - 1) * pow(D * y * y + 1, -1, P) % P
    if x2 == 0:
        return sign == 0
    return pow(x2, (P - 1) // 2, P) == 1


def off_curve_key(seed: int) -> bytes:
    rng = random.Random(seed)
    while True:
        raw = rng.randbytes(32)
        if not on_curve_by_euler(raw):
            return raw


def test_addresses_of_real_keys_are_accepted():
    for seed in range(50):
        address = real_address(seed)
        assert validate_solana_address(address) == address
        assert validate_solana_address(f"  {address}\n") == address


def test_well_known_system_program_address_is_valid():
    # 32 zero bytes: y = 0 is a curve point (x = sqrt(-1)); Solana's system program id.
    assert validate_solana_address("1" * 32) == "1" * 32


def test_curve_check_agrees_with_euler_criterion():
    rng = random.Random(3)
    samples = [rng.randbytes(32) for _ in range(400)]
    verdicts = [is_on_curve(raw) for raw in samples]
    assert verdicts == [on_curve_by_euler(raw) for raw in samples]
    assert 100 < sum(verdicts) < 300  # about half of all 32-byte strings are points


@pytest.mark.parametrize("bad", ["0", "O", "I", "l"])
def test_characters_outside_the_alphabet_are_named(bad):
    address = real_address(1)
    broken = address[:5] + bad + address[6:]
    with pytest.raises(PayoutAddressError, match=rf"character '{bad}' at position 6 is not base58"):
        validate_solana_address(broken)


def test_other_characters_are_refused_too():
    with pytest.raises(PayoutAddressError, match="'-' at position"):
        validate_solana_address(real_address(2)[:-1] + "-")


@pytest.mark.parametrize("size", [0, 1, 31, 33, 40])
def test_wrong_length_is_refused(size):
    address = b58encode(bytes([7]) * size) if size else ""
    with pytest.raises(PayoutAddressError, match="empty" if size == 0 else f"decodes to {size} bytes"):
        validate_solana_address(address)


def test_too_long_text_is_refused_before_decoding():
    with pytest.raises(PayoutAddressError, match="too long"):
        validate_solana_address("2" * 500)


def test_32_bytes_off_the_curve_are_refused():
    for seed in range(10):
        raw = off_curve_key(seed)
        with pytest.raises(PayoutAddressError, match="not an Ed25519 public key"):
            validate_solana_address(b58encode(raw))


def test_non_canonical_y_is_refused():
    raw = (P + 1).to_bytes(32, "little")  # y >= p: not a canonical encoding
    assert not is_on_curve(raw)


def test_base58_round_trip_keeps_leading_zero_bytes():
    rng = random.Random(5)
    for _ in range(100):
        data = b"\x00" * rng.randrange(4) + rng.randbytes(rng.randrange(40))
        assert b58decode(b58encode(data)) == data


def test_config_validates_the_payout_address(tmp_path):
    good = real_address(9)
    cfg = config_mod.load(tmp_path, {}, environ={"POOLAI_PAYOUT_ADDRESS": good})
    assert cfg.payout_address == good
    assert config_mod.load(tmp_path, {}, environ={}).payout_address == ""
    with pytest.raises(config_mod.ConfigError, match=r"payout_address from POOLAI_PAYOUT_ADDRESS.*'0'"):
        config_mod.load(tmp_path, {}, environ={"POOLAI_PAYOUT_ADDRESS": "0" + good[1:]})
    (tmp_path / "config.toml").write_text(f'payout_address = "{b58encode(off_curve_key(1))}"\n')
    with pytest.raises(config_mod.ConfigError, match="invalid payout_address in .*not an Ed25519"):
        config_mod.load(tmp_path, {}, environ={})
