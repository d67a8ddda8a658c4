"""The one size parser and the one duration parser: what they take, what they refuse."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from poolai.node import units
from poolai.node.units import MAX_SECONDS, MAX_SIZE, parse_duration, parse_size

GiB = 1 << 30


@pytest.mark.parametrize(("value", "expected"), [
    ("8GiB", 8 * GiB), ("512 MiB", 512 << 20), ("1.5TB", 1_500_000_000_000), ("4096", 4096), (7, 7),
    ("  10gib ", 10 * GiB), ("500MB", 500_000_000), ("2k", 2000), ("3b", 3), ("0", 0), ("1e9", 10**9),
    ("1.5e3kb", 1_500_000), (1.9, 1), (12e9, 12_000_000_000), ("1.", 1),
    ("1024TiB", 1 << 50), (MAX_SIZE, MAX_SIZE),
    ("1099511627777", (1 << 40) + 1),  # large integers stay exact
])
def test_parse_size(value, expected):
    assert parse_size(value) == expected


@pytest.mark.parametrize("bad", [
    "", "   ", "lots", "GiB", "8XB", "8 G iB", "-1", "-1GiB", " -0", True, False, -5, -0.5, None, [8],
    "1" * 40, "1e999", "1e999GiB", "inf", "nan", math.inf, math.nan, -math.inf, MAX_SIZE + 1,
    "1e30", "2000000TiB", ".5GiB", "0x10", "1_000",
])
def test_parse_size_refuses(bad):
    with pytest.raises(ValueError) as info:
        parse_size(bad)
    assert "\n" not in str(info.value)


def test_size_messages_say_what_is_wrong():
    with pytest.raises(ValueError, match=r"unknown unit 'XB' in '8XB' \(use b, k, kb"):
        parse_size("8XB")
    with pytest.raises(ValueError, match="cannot be negative"):
        parse_size("-3MiB")
    with pytest.raises(ValueError, match="too large"):
        parse_size("1e999")


@pytest.mark.parametrize(("value", "expected"), [
    ("90", 90.0), ("500ms", 0.5), ("30s", 30.0), ("10m", 600.0), ("1.5h", 5400.0), ("7d", 604800.0),
    (" 2 H ", 7200.0), ("0", 0.0), (12, 12.0), (0.25, 0.25), ("1e3", 1000.0), ("36500d", 36500 * 86400.0),
])
def test_parse_duration(value, expected):
    assert parse_duration(value) == expected
    assert isinstance(parse_duration(value), float)


@pytest.mark.parametrize("bad", [
    "", "soon", "10 minutes", "5y", "-1", "-10m", True, -1, None, "1e999", "inf", "nan", math.inf,
    math.nan, MAX_SECONDS + 1, "36501d", "1" * 40,
])
def test_parse_duration_refuses(bad):
    with pytest.raises(ValueError) as info:
        parse_duration(bad)
    assert "\n" not in str(info.value)


def test_minutes_are_not_megabytes():
    assert parse_duration("1m") == 60.0 and parse_size("1m") == 10**6


@given(st.integers(min_value=0, max_value=MAX_SIZE), st.sampled_from(sorted(units.SIZE_UNITS)))
def test_a_written_size_reads_back(count, unit):
    factor = units.SIZE_UNITS[unit]
    text = f"{count}{unit.upper()}"
    if count * factor > MAX_SIZE:
        with pytest.raises(ValueError, match="too large"):
            parse_size(text)
    elif len(text) <= units.MAX_TEXT:
        assert parse_size(text) == count * factor


@pytest.mark.parametrize("parse, bound", [(parse_size, MAX_SIZE), (parse_duration, MAX_SECONDS)])
@given(text=st.text(max_size=40))
def test_any_text_is_a_value_in_range_or_a_value_error(parse, bound, text):
    try:
        value = parse(text)
    except ValueError:
        return
    assert 0 <= value <= bound and math.isfinite(value)


@pytest.mark.parametrize("size, shown", [(10 << 30, "10GiB"), (500 * 10**6, "500MB"), (1536 << 20, "1536MiB"),
                                         (4096, "4KiB"), (1000, "1kB"), (1001, "1001"), (0, "0")])
def test_format_size(size, shown):
    assert units.format_size(size) == shown


@pytest.mark.parametrize("seconds, shown", [(604800, "7d"), (600, "10m"), (5400, "90m"), (90, "90s"),
                                            (0.25, "250ms"), (1.5, "1500ms"), (0, "0ms")])
def test_format_duration(seconds, shown):
    assert units.format_duration(seconds) == shown


@given(st.integers(min_value=0, max_value=MAX_SIZE))
def test_a_formatted_size_parses_back(size):
    assert parse_size(units.format_size(size)) == size


@given(st.integers(min_value=0, max_value=MAX_SECONDS))
def test_a_formatted_duration_parses_back(seconds):
    assert parse_duration(units.format_duration(seconds)) == seconds
