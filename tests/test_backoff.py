"""The one retry schedule, and the numbers each of its users keeps."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from poolai.mesh import gossip, peers
from poolai.mesh.backoff import Backoff
from poolai.node.credits import service as credits_service
from poolai.node.jobs.executor import ExecutorConfig


def test_doubles_from_base_up_to_the_cap():
    schedule = Backoff(base=1.0, cap=60.0)
    assert [schedule.delay(n) for n in range(9)] == [0.0, 1, 2, 4, 8, 16, 32, 60, 60]
    assert Backoff(base=0.5, cap=100.0, factor=3.0).delay(3) == 4.5
    assert Backoff(base=5.0, cap=5.0).delay(1) == Backoff(base=5.0, cap=5.0).delay(50) == 5.0


def test_next_at_adds_the_delay_to_the_clock_it_is_given():
    assert Backoff(base=2.0, cap=10.0).next_at(1000.0, 3) == 1008.0
    assert Backoff(base=2.0, cap=10.0).next_at(1000.0, 0) == 1000.0


def test_a_very_long_run_of_failures_stays_at_the_cap():
    assert Backoff(base=1.0, cap=60.0).delay(10**6) == 60.0


def test_jitter_takes_at_most_its_fraction_off_and_is_repeatable():
    schedule = Backoff(base=1.0, cap=60.0, jitter=0.25)
    waits = [schedule.delay(10, random.Random(seed)) for seed in range(200)]
    assert all(45.0 <= w <= 60.0 for w in waits)
    assert len(set(waits)) > 100  # spread out, not one value
    assert schedule.delay(10, random.Random(7)) == schedule.delay(10, random.Random(7))
    with pytest.raises(ValueError, match="needs an rng"):
        schedule.delay(1)


@pytest.mark.parametrize("args", [
    {"base": 0.0, "cap": 1.0}, {"base": -1.0, "cap": 1.0}, {"base": 2.0, "cap": 1.0},
    {"base": 1.0, "cap": 2.0, "factor": 0.5}, {"base": 1.0, "cap": 2.0, "jitter": 1.5},
    {"base": float("nan"), "cap": 1.0}, {"base": 1.0, "cap": 2.0, "factor": float("nan")},
])
def test_a_schedule_that_makes_no_sense_is_refused(args):
    with pytest.raises(ValueError):
        Backoff(**args)


@given(st.floats(0.001, 1000.0), st.floats(1.0, 10.0), st.floats(0.0, 1.0), st.integers(0, 10_000),
       st.integers(0, 2**32))
def test_never_negative_never_over_the_cap_never_shorter_after_another_failure(base, factor, jitter, n, seed):
    schedule = Backoff(base=base, cap=base * 100, factor=factor)
    assert 0.0 <= schedule.delay(n) <= schedule.delay(n + 1) <= schedule.cap
    jittered = Backoff(base=base, cap=base * 100, factor=factor, jitter=jitter)
    plain = schedule.delay(n)
    assert (1 - jitter) * plain - 1e-9 <= jittered.delay(n, random.Random(seed)) <= plain


# ---------------------------------------------------------------- the schedules in use, unchanged


def test_dial_backoff_is_one_second_doubling_to_a_minute():
    assert [peers.DIAL_BACKOFF.delay(n) for n in range(1, 10)] == [
        min(peers.BACKOFF_MAX, peers.BACKOFF_BASE * 2 ** (n - 1)) for n in range(1, 10)]


def test_gossip_stream_repairs_wait_2_4_to_64_rounds():
    assert [int(gossip.STREAM_REPAIR_ROUNDS.delay(n)) for n in range(1, 9)] == [2, 4, 8, 16, 32, 64, 64, 64]


def test_claim_sends_wait_2_4_to_600_seconds():
    assert [credits_service.CLAIM_BACKOFF.delay(n) for n in range(1, 25)] == [
        min(credits_service.RETRY_MAX_S, 2.0 ** n) for n in range(1, 25)]


@pytest.mark.parametrize("max_retry_s", [0.05, 1.0, 10.0, 100.0, 1000.0])
def test_result_deliveries_wait_1_2_4_seconds_up_to_max_retry_s(max_retry_s):
    schedule = ExecutorConfig(max_retry_s=max_retry_s).delivery_backoff
    assert [schedule.delay(n) for n in range(1, 20)] == [
        min(max_retry_s, 0.5 * 2 ** min(n, 8)) for n in range(1, 20)]
