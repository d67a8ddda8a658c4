"""Payout addresses: where a node owner wants the credits it earns paid, on Solana.

A Solana account address is the base58 text (Bitcoin alphabet) of a 32-byte
Ed25519 public key. :func:`validate_solana_address` checks all three layers
and names the first one that fails, so a typo in ``config.toml`` is reported
as "character 'O' at position 7 is not base58", not as a payout that vanishes:

1. every character is in the alphabet (which leaves out ``0``, ``O``, ``I`` and ``l``);
2. the text decodes to exactly 32 bytes (leading ``1`` characters are zero bytes);
3. the bytes are the compressed form of a point on the Ed25519 curve (RFC 8032
   §5.1.3). Program-derived addresses are deliberately off the curve: nobody
   holds a private key for them, so credits paid there could never be moved.

The curve check is done here with integer arithmetic because ``cryptography``'s
``Ed25519PublicKey.from_public_bytes`` accepts any 32 bytes without decompressing
them. Pure code: no I/O.
"""

from __future__ import annotations

from poolai.mesh import base58

KEY_LEN = 32
MAX_TEXT = 64  # 32 bytes are at most 44 base58 characters; anything longer is refused early

# Edwards25519: -x^2 + y^2 = 1 + d x^2 y^2 over GF(p)
_P = 2**255 - 19
_D = (-121665 * pow(121666, -1, _P)) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)


class PayoutAddressError(ValueError):
    """The text is not a usable Solana address; the message says which check failed."""


def b58decode(text: str) -> bytes:
    """Bytes of base58 ``text`` (Bitcoin alphabet); PayoutAddressError names a bad character."""
    try:
        return base58.decode(text)
    except ValueError as exc:
        raise PayoutAddressError(str(exc)) from None


b58encode = base58.encode


def is_on_curve(key: bytes) -> bool:
    """Whether 32 bytes decompress to an Ed25519 point (RFC 8032 §5.1.3)."""
    if len(key) != KEY_LEN:
        return False
    encoded = int.from_bytes(key, "little")
    sign = encoded >> 255
    y = encoded & ((1 << 255) - 1)
    if y >= _P:
        return False
    u = (y * y - 1) % _P
    v = (_D * y * y + 1) % _P
    # x = u v^3 (u v^7)^((p-5)/8), then fix the root up by sqrt(-1) if needed
    x = (u * pow(v, 3, _P) * pow(u * pow(v, 7, _P), (_P - 5) // 8, _P)) % _P
    vx2 = (v * x * x) % _P
    if vx2 == u:
        pass
    elif vx2 == (-u) % _P:
        x = (x * _SQRT_M1) % _P
    else:
        return False
    return not (x == 0 and sign == 1)


def validate_solana_address(text: str) -> str:
    """``text`` stripped, if it is a valid Solana account address; raises PayoutAddressError."""
    if not isinstance(text, str):
        raise PayoutAddressError("a Solana address is text")
    address = text.strip()
    if not address:
        raise PayoutAddressError("the address is empty")
    if len(address) > MAX_TEXT:
        raise PayoutAddressError(f"{len(address)} characters is too long for a Solana address (32-44)")
    key = b58decode(address)
    if len(key) != KEY_LEN:
        raise PayoutAddressError(
            f"decodes to {len(key)} bytes; a Solana address is a {KEY_LEN}-byte public key"
        )
    if not is_on_curve(key):
        raise PayoutAddressError(
            "the 32 bytes are not an Ed25519 public key (off the curve, like a program-derived "
            "address, which no wallet can spend from)"
        )
    return address


def parse_payout_setting(value: object) -> str:
    """The ``payout_address`` config parser: empty means none, otherwise a valid address."""
    text = str(value).strip()
    if not text:
        return ""
    try:
        return validate_solana_address(text)
    except PayoutAddressError as exc:
        raise ValueError(f"{text!r} is not a Solana address: {exc}") from None
