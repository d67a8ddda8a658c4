"""The alert rules, pure: each rule's condition, its delays, and its hysteresis."""

from __future__ import annotations

import dataclasses

import pytest

from poolai.node.companion import rules
from poolai.node.companion.rules import RULES, AlertBook, GpuReading, Observation

BASE = Observation(now=1_000_000.0, version="0.1.0", peers_connected=5, known_peers=8,
                   gpus=(GpuReading(0, "A100", 60),), disk_free=500 << 30, disk_total=1 << 40,
                   storage_used=1 << 30, storage_quota=10 << 30, credits_earned=1.0)


def at(t: float, **changes) -> Observation:
    return dataclasses.replace(BASE, now=BASE.now + t, **changes)


def keys(book: AlertBook) -> list[str]:
    return [a.key for a in book.active()]


def test_a_healthy_node_has_no_alerts():
    book = AlertBook()
    for t in range(0, 7 * 3600, 60):
        assert book.step(at(t)) == []
    assert book.active() == []


def test_every_rule_has_a_severity_a_title_and_a_fix():
    for rule in RULES:
        assert rule.severity in rules.SEVERITIES
        assert rule.title and len(rule.fix) > 20
    assert len({r.key for r in RULES}) == len(RULES)


def test_unreachable_raises_after_its_delay_and_clears_after_its_own():
    book = AlertBook()
    assert book.step(at(0, peers_connected=0)) == []
    assert book.step(at(119, peers_connected=0)) == []
    [event] = book.step(at(120, peers_connected=0))
    assert (event.kind, event.alert.key, event.alert.severity) == ("raised", "unreachable", "critical")
    assert event.alert.since == BASE.now  # since the condition began, not since it raised
    assert "no peer is connected" in event.alert.detail and "port" in event.alert.fix
    assert book.step(at(130, peers_connected=1)) == []  # back, but not for long enough yet
    assert keys(book) == ["unreachable"]
    [cleared] = book.step(at(160, peers_connected=1))
    assert (cleared.kind, cleared.alert.key) == ("cleared", "unreachable")
    assert book.active() == []


def test_a_node_that_never_knew_a_peer_is_alone_not_unreachable():
    book = AlertBook()
    book.step(at(0, peers_connected=0, known_peers=0))
    [event] = book.step(at(120, peers_connected=0, known_peers=0))
    assert (event.alert.key, event.alert.severity) == ("alone", "info")
    assert "--bootstrap" in event.alert.fix


def test_a_flapping_condition_never_raises():
    book = AlertBook()
    for t in range(0, 3600, 60):  # a minute down, a minute up, for an hour
        assert book.step(at(t, peers_connected=0 if (t // 60) % 2 else 2)) == []


def test_scale_shortens_every_delay():
    book = AlertBook(scale=0.05)
    book.step(at(0, peers_connected=0))
    [event] = book.step(at(6, peers_connected=0))
    assert event.alert.key == "unreachable"


def test_peers_below_the_floor_only_when_more_are_known():
    book = AlertBook()
    book.step(at(0, peers_connected=1, known_peers=2))
    assert book.step(at(700, peers_connected=1, known_peers=2)) == []  # a two-node mesh is fine
    book.step(at(800, peers_connected=2, known_peers=10))
    [event] = book.step(at(1400, peers_connected=2, known_peers=10))
    assert event.alert.key == "few_peers" and "2 peer(s) connected of 10" in event.alert.detail


def test_gpu_hot_uses_a_lower_threshold_to_clear():
    book = AlertBook()
    hot = (GpuReading(0, "A100", 88),)
    book.step(at(0, gpus=hot))
    assert [e.alert.key for e in book.step(at(60, gpus=hot))] == ["gpu_hot"]
    warm = (GpuReading(0, "A100", 80),)  # under the raise level, over the clear level
    for t in range(120, 1000, 60):
        assert book.step(at(t, gpus=warm)) == []
    assert keys(book) == ["gpu_hot"]
    cool = (GpuReading(0, "A100", 70),)
    book.step(at(1000, gpus=cool))
    assert [e.kind for e in book.step(at(1120, gpus=cool))] == ["cleared"]


def test_gpu_missing_and_throttled():
    book = AlertBook()
    two = (GpuReading(0, "A100", 60), GpuReading(1, "A100", 61, ("hw_slowdown", "sw_power_cap")))
    book.step(at(0, gpus=two))
    assert [e.alert.key for e in book.step(at(120, gpus=two))] == ["gpu_throttled"]
    one = (GpuReading(0, "A100", 60),)
    book.step(at(180, gpus=one, gpu_note="NVML: GPU is lost"))
    raised = book.step(at(240, gpus=one, gpu_note="NVML: GPU is lost"))
    assert [e.alert.key for e in raised] == ["gpu_missing"]
    assert "1 GPU(s) visible, 2 seen earlier (NVML: GPU is lost)" in raised[0].alert.detail
    power_only = (GpuReading(0, "A100", 60, ("sw_power_cap",)),)  # normal under load
    assert rules._gpu_throttled(at(0, gpus=power_only), rules.Memory(), False) is None


def test_disk_and_quota_nearly_full():
    book = AlertBook()
    book.step(at(0, disk_free=1 << 30, storage_used=95 << 28, storage_quota=100 << 28))
    raised = book.step(at(300, disk_free=1 << 30, storage_used=95 << 28, storage_quota=100 << 28))
    assert [e.alert.key for e in raised] == ["disk_full", "quota_full"]  # critical first
    assert "95% of the storage quota" in raised[1].alert.detail


def test_audits_failing_and_corrupt_shares():
    m = rules.Memory()
    assert rules._audits_failing(at(0, audited=10, audit_failures=2), m, False) is None
    assert "3 of 10 audits" in rules._audits_failing(at(0, audited=10, audit_failures=3), m, False)
    assert rules._audits_failing(at(0, audited=10, audit_failures=2), m, True) is not None  # clears at 10%
    assert "2 share(s) on this disk" in rules._audits_failing(at(0, corrupt_shares=2), m, False)


def test_jobs_failing_in_a_row_counts_back_to_the_last_success():
    assert rules.failed_in_a_row([(1, True), (2, False), (3, False)]) == 2
    assert rules.failed_in_a_row([(3, False), (1, False), (2, True), (4, False)]) == 2
    book = AlertBook()
    failing = ((1.0, True), (2.0, False), (3.0, False), (4.0, False))
    assert [e.alert.key for e in book.step(at(0, job_outcomes=failing))] == ["jobs_failing"]
    assert [e.kind for e in book.step(at(60, job_outcomes=(*failing, (5.0, True))))] == ["cleared"]


def test_reputation_falling_needs_enough_runs_and_clears_higher():
    book = AlertBook()
    assert book.step(at(0, worker_ok=1, worker_failed=2)) == []  # too few runs to judge
    [event] = book.step(at(60, worker_ok=4, worker_failed=2))
    assert event.alert.key == "reputation_falling"
    assert rules.own_reputation(0, 0) == 0.5
    book.step(at(120, worker_ok=6, worker_failed=2))  # 0.41: above the raise level, below the clear level
    assert keys(book) == ["reputation_falling"]


def test_credits_stalled_only_while_contributing():
    book = AlertBook()
    book.step(at(0, credits_earned=5.0, contributing=True))
    assert book.step(at(5 * 3600, credits_earned=5.0, contributing=True)) == []
    [event] = book.step(at(6 * 3600, credits_earned=5.0, contributing=True))
    assert event.alert.key == "credits_stalled" and "6.0 h" in event.alert.detail
    later = at(6 * 3600 + 60, credits_earned=5.5, contributing=True)
    assert [e.kind for e in book.step(later)] == ["cleared"]
    idle = AlertBook()
    idle.step(at(0, credits_earned=5.0, contributing=False))
    assert idle.step(at(7 * 3600, credits_earned=5.0, contributing=False)) == []


def test_clock_skew_from_the_median_of_advert_offsets():
    book = AlertBook()
    skewed = (14.0, 15.0, 13.5, 900.0)  # one peer far off does not move the median much
    book.step(at(0, clock_offsets=skewed))
    [event] = book.step(at(120, clock_offsets=skewed))
    assert event.alert.key == "clock_skew" and "s behind its peers'" in event.alert.detail
    book.step(at(180, clock_offsets=(7.0, 8.0)))  # under the raise level, over the clear level
    book.step(at(400, clock_offsets=(7.0, 8.0)))
    assert keys(book) == ["clock_skew"]
    assert rules.clock_skew(()) is None


def test_newer_release_needs_two_peers_unless_there_is_one():
    assert rules.newer_release("0.1.0", ["poolai/0.2.0", "poolai/0.1.0", "poolai/0.1.0"]) is None
    assert rules.newer_release("0.1.0", ["poolai/0.2.0", "poolai/0.3.1", "poolai/0.1.0"]) == ("0.2.0", 2)
    assert rules.newer_release("0.1.0", ["poolai/0.2.0"]) == ("0.2.0", 1)
    assert rules.newer_release("0.1.0", ["evil/9.9.9", "poolai/x"]) is None
    assert rules.parse_version("poolai/1.20.3-dev") == (1, 20, 3)
    book = AlertBook()
    software = ("poolai/0.2.0", "poolai/0.2.0")
    book.step(at(0, peer_software=software))
    [event] = book.step(at(600, peer_software=software))
    assert (event.alert.key, event.alert.severity) == ("new_release", "info")


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.key)
def test_no_rule_fires_on_unknown_facts(rule):
    blank = Observation(now=0.0, version="0.1.0", peers_connected=3, known_peers=3)
    assert rule.check(blank, rules.Memory(), False) is None


def test_nvml_throttle_reasons_by_name():
    from poolai.node.capacity.inventory import throttle_names
    assert throttle_names(0x4 | 0x40 | 0x1000) == ("sw_power_cap", "hw_thermal")
    assert throttle_names(None) == ()
