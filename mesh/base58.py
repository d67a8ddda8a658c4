"""Base58 with the Bitcoin alphabet: libp2p peer ids and Solana addresses both use it."""

from __future__ import annotations

ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_INDEX = {c: i for i, c in enumerate(ALPHABET)}


def encode(data: bytes) -> str:
    """Base58 text of ``data``; each leading zero byte becomes a leading '1'."""
    number = int.from_bytes(data, "big")
    out = []
    while number:
        number, rem = divmod(number, 58)
        out.append(ALPHABET[rem])
    zeros = len(data) - len(data.lstrip(b"\x00"))
    return "1" * zeros + "".join(reversed(out))


def decode(text: str) -> bytes:
    """Bytes of base58 ``text``; ValueError names the first character outside the alphabet."""
    number = 0
    for position, char in enumerate(text, 1):
        digit = _INDEX.get(char)
        if digit is None:
            hint = " (base58 leaves out 0, O, I and l)" if char in "0OIl" else ""
            raise ValueError(f"character {char!r} at position {position} is not base58{hint}")
        number = number * 58 + digit
    zeros = len(text) - len(text.lstrip("1"))
    body = number.to_bytes((number.bit_length() + 7) // 8, "big") if number else b""
    return b"\x00" * zeros + body
