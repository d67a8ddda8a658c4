"""Erasure layout: segment arithmetic, padding, and any-k-of-n rebuild with real zfec."""

from __future__ import annotations

import itertools
import random

import pytest

from poolai.storage import erasure
from poolai.storage.erasure import ErasureParams


def test_defaults_are_four_of_ten_with_one_mib_shares():
    p = ErasureParams()
    assert (p.k, p.n, p.segment_size) == (4, 10, 4 * erasure.MiB)
    assert erasure.block_size(p.segment_size, p.k) == erasure.MiB
    assert p.expansion == 2.5


@pytest.mark.parametrize(
    "kwargs",
    [
        {"k": 0},
        {"k": 5, "n": 4},
        {"n": 257},
        {"segment_size": 0},
        {"segment_size": erasure.MAX_SEGMENT_SIZE + 1},
    ],
)
def test_params_out_of_range_are_refused(kwargs):
    with pytest.raises(ValueError):
        ErasureParams(**kwargs)


def test_params_refuse_non_int():
    with pytest.raises(TypeError):
        ErasureParams(k=True)
    with pytest.raises(TypeError):
        ErasureParams(segment_size=4.0)


@pytest.mark.parametrize(
    ("size", "count", "last"),
    [(0, 0, None), (1, 1, 1), (99, 1, 99), (100, 1, 100), (101, 2, 1), (250, 3, 50)],
)
def test_segment_spans_cover_the_file_exactly(size, count, last):
    assert erasure.segment_count(size, 100) == count
    spans = [erasure.segment_span(size, 100, s) for s in range(count)]
    assert sum(length for _, length in spans) == size
    assert [off for off, _ in spans] == [100 * s for s in range(count)]
    if count:
        assert spans[-1][1] == last
    with pytest.raises(IndexError):
        erasure.segment_span(size, 100, count)


def test_padlen_is_what_zfec_adds_to_split_into_k_blocks():
    assert erasure.padlen(12, 4) == 0
    assert erasure.padlen(13, 4) == 3
    assert erasure.padlen(1, 4) == 3
    blocks = erasure.split_blocks(b"abcde", 4)
    assert blocks == [b"ab", b"cd", b"e\x00", b"\x00\x00"]


def test_systematic_shares_are_the_blocks():
    segment = bytes(range(200))
    shares = erasure.encode_segment(segment, 3, 7)
    assert len(shares) == 7
    assert all(len(s) == erasure.block_size(200, 3) for s in shares)
    assert shares[:3] == erasure.split_blocks(segment, 3)


def test_primaries_only_names_the_shares_that_need_no_decoding():
    assert erasure.primaries_only([2, 0, 1], 3)
    assert erasure.primaries_only([0, 1, 2, 5], 3)  # the k lowest are what segment_blocks uses
    assert not erasure.primaries_only([0, 1, 3], 3)
    assert not erasure.primaries_only([0, 1], 3)
    segment = bytes(range(100))
    shares = erasure.encode_segment(segment, 3, 5)
    picked = {i: shares[i] for i in (0, 1, 2, 4)}
    assert erasure.segment_blocks(picked, 100, 3, 5)[0] is shares[0]  # slices, no copy


@pytest.mark.parametrize("length", [1, 2, 3, 5, 64, 1000, 4097])
def test_any_k_of_n_rebuild_the_segment(length):
    k, n = 3, 6
    rng = random.Random(length)
    segment = rng.randbytes(length)
    shares = erasure.encode_segment(segment, k, n)
    for subset in itertools.combinations(range(n), k):
        got = erasure.decode_segment({i: shares[i] for i in subset}, length, k, n)
        assert got == segment, subset


def test_default_params_rebuild_from_parity_only():
    rng = random.Random(7)
    segment = rng.randbytes(10_001)
    shares = erasure.encode_segment(segment, 4, 10)
    parity = {i: shares[i] for i in range(6, 10)}
    assert erasure.decode_segment(parity, len(segment), 4, 10) == segment


def test_extra_shares_are_ignored_and_k_minus_one_refused():
    segment = b"x" * 50
    shares = dict(enumerate(erasure.encode_segment(segment, 2, 4)))
    assert erasure.decode_segment(shares, 50, 2, 4) == segment
    with pytest.raises(ValueError):
        erasure.decode_segment({3: shares[3]}, 50, 2, 4)


def test_decode_refuses_wrong_share_size():
    shares = erasure.encode_segment(b"y" * 40, 2, 3)
    with pytest.raises(ValueError):
        erasure.decode_segment({0: shares[0], 2: shares[2][:-1]}, 40, 2, 3)


def test_one_of_one_is_plain_copy():
    assert erasure.encode_segment(b"abc", 1, 1) == [b"abc"]
    assert erasure.decode_segment({0: b"abc"}, 3, 1, 1) == b"abc"
