"""Sizes and durations as people write them: ``10GiB``, ``512 MB``, ``90s``, ``7d``.

The one parser of each for the config, the CLI, the local API and the simulated
inventory file, so ``8GiB`` means the same everywhere, and the formatters that
write a value back the same way (:func:`format_size`, :func:`format_duration`:
what they print parses to the same value). Pure: no I/O.

A value is a non-negative number (digits, an optional fraction, an optional
exponent: ``1.5``, ``1e9``) with an optional unit, case-insensitive, spaces
allowed around it; an int or float is taken as it is. Sizes: ``b``, decimal
``k``/``kb``, ``m``/``mb``, ``g``/``gb``, ``t``/``tb`` and binary ``kib``,
``mib``, ``gib``, ``tib``; no unit means bytes. Durations: ``ms``, ``s``,
``m``, ``h``, ``d``; no unit means seconds.

Anything else raises ValueError with a one-line message, and so do values past
:data:`MAX_SIZE` or :data:`MAX_SECONDS` (infinity and ``1e999`` included): they
are typos, and a bound here keeps ``int(inf)`` (OverflowError) and absurd
numbers out of every caller.
"""

from __future__ import annotations

import math
import re
from typing import Any

MAX_SIZE = 1 << 60  # 1 EiB: more than any disk or memory a node will have
MAX_SECONDS = 100 * 365 * 86400  # a century
MAX_TEXT = 32

SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
              "t": 10**12, "tb": 10**12, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}
DURATION_UNITS = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

_VALUE = re.compile(r"\s*(?P<int>\d+)(?P<rest>(?:\.\d*)?(?:[eE][+-]?\d+)?)\s*(?P<unit>[a-zA-Z]*)\s*")


def parse_size(value: Any) -> int:
    """Bytes from ``8GiB``, ``512 MiB``, ``1.5TB``, ``4096`` or a number (fractions of a
    byte dropped). Raises ValueError for anything else, a negative size or one over
    :data:`MAX_SIZE`."""
    return int(_parse(value, SIZE_UNITS, MAX_SIZE, "a size", "8GiB, 512MiB, 4096"))


def parse_duration(value: Any) -> float:
    """Seconds from ``90``, ``500ms``, ``30s``, ``10m``, ``1.5h``, ``7d`` or a number.
    Raises ValueError for anything else, a negative duration or one over :data:`MAX_SECONDS`."""
    return float(_parse(value, DURATION_UNITS, MAX_SECONDS, "a duration", "30s, 10m, 1.5h, 7d"))


def _parse(value: Any, units: dict[str, Any], limit: int, what: str, examples: str) -> int | float:
    if isinstance(value, bool):
        raise ValueError(f"expected {what} (e.g. {examples})")
    if isinstance(value, int | float):
        number: int | float = value
    elif isinstance(value, str) and len(value) <= MAX_TEXT:
        if value.strip().startswith("-"):
            raise ValueError(f"{what} cannot be negative: {value!r}")
        match = _VALUE.fullmatch(value)
        if match is None:
            raise ValueError(f"{value!r} is not {what} (e.g. {examples})")
        unit = match["unit"].lower()
        if unit not in units:
            raise ValueError(f"unknown unit {match['unit']!r} in {value!r} "
                             f"(use {', '.join(u for u in units if u)})")
        if match["rest"]:
            number = float(match["int"] + match["rest"]) * units[unit]
        else:  # exact: no float rounding of large byte counts
            number = int(match["int"]) * units[unit]
    else:
        raise ValueError(f"{value!r} is not {what} (e.g. {examples})")
    if isinstance(number, float) and math.isnan(number):
        raise ValueError(f"{value!r} is not {what}")
    if number < 0:
        raise ValueError(f"{what} cannot be negative: {value!r}")
    if number > limit:  # infinity included
        raise ValueError(f"{value!r} is too large for {what} (at most {limit})")
    return number


_SIZE_SHOWN = (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10),
               ("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3))
_DURATION_SHOWN = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def format_size(size: int) -> str:
    """``10737418240`` -> ``10GiB``: the largest unit that holds ``size`` a whole number of
    times (binary units first), else plain bytes. :func:`parse_size` reads it back exactly."""
    for unit, factor in _SIZE_SHOWN:
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def format_duration(seconds: float) -> str:
    """``604800`` -> ``7d``, ``90`` -> ``90s``, ``0.25`` -> ``250ms``: the largest unit that
    holds it a whole number of times. :func:`parse_duration` reads it back."""
    if seconds and seconds == int(seconds):
        whole = int(seconds)
        for unit, factor in _DURATION_SHOWN:
            if whole % factor == 0:
                return f"{whole // factor}{unit}"
    millis = seconds * 1000
    return f"{millis:g}ms" if millis == round(millis) else f"{seconds:g}s"
