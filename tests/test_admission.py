"""Inbound admission rules (mesh/admission.py): rate limits by IP, peer and in total, and
which inbound connections go when there are too many. Pure: time is passed in."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from poolai.mesh.admission import (
    MAX_INBOUND_CAP,
    MIN_INBOUND_CAP,
    AdmissionConfig,
    ConnFacts,
    InboundAdmission,
    Rate,
    Verdict,
    choose_shed,
    inbound_cap_for,
)

ADMIT = Verdict.ADMIT
IP, PEER, TOTAL = Rate(1.0, 3.0), Rate(1.0, 2.0), Rate(10.0, 5.0)


def admission(per_ip=IP, per_peer=PEER, total=TOTAL, max_tracked=100) -> InboundAdmission:
    return InboundAdmission(AdmissionConfig(per_ip, per_peer, total, max_tracked))


def test_an_ip_gets_its_burst_then_its_rate():
    a = admission()
    assert [a.admit_address("10.0.0.1", 0.0) for _ in range(4)] == [ADMIT] * 3 + [Verdict.IP_RATE]
    assert a.admit_address("10.0.0.1", 0.5) is Verdict.IP_RATE
    assert a.admit_address("10.0.0.1", 1.0) is ADMIT  # one token a second
    assert a.admit_address("10.0.0.1", 1.0) is Verdict.IP_RATE
    assert a.statistics().refused_ip_rate == 3


def test_one_flooding_ip_uses_up_only_its_own_bucket():
    a = admission(total=Rate(10.0, 5.0))
    for _ in range(100):
        a.admit_address("10.0.0.1", 0.0)
    assert a.admit_address("10.0.0.2", 0.0) is ADMIT  # the node's 5 tokens: 3 went to .1
    assert a.admit_address("10.0.0.3", 0.0) is ADMIT
    assert a.admit_address("10.0.0.4", 0.0) is Verdict.TOTAL_RATE
    stats = a.statistics()
    assert (stats.refused_ip_rate, stats.refused_total_rate) == (97, 1)


def test_the_total_rate_refuses_everyone_until_it_refills():
    a = admission(per_ip=Rate(1.0, 1.0), total=Rate(2.0, 2.0))
    assert [a.admit_address(f"10.0.0.{i}", 0.0) for i in range(3)] == [ADMIT, ADMIT, Verdict.TOTAL_RATE]
    assert a.admit_address("10.0.0.2", 0.5) is ADMIT  # refused by the total: its own token kept
    assert a.admit_address("10.0.0.9", 0.5) is Verdict.TOTAL_RATE


def test_a_peer_id_is_limited_wherever_it_connects_from():
    a = admission(per_peer=Rate(0.5, 2.0))
    assert [a.admit_peer("peerA", 0.0) for _ in range(3)] == [ADMIT, ADMIT, Verdict.PEER_RATE]
    assert a.admit_peer("peerB", 0.0) is ADMIT
    assert a.admit_peer("peerA", 1.9) is Verdict.PEER_RATE
    assert a.admit_peer("peerA", 2.0) is ADMIT
    assert a.statistics().refused_peer_rate == 2


def test_the_tables_forget_the_least_recently_seen_past_their_bound():
    a = admission(max_tracked=10)
    for i in range(1000):
        assert a.admit_address(f"10.0.{i // 256}.{i % 256}", float(i)) is ADMIT
        a.admit_peer(f"peer{i}", float(i))
    stats = a.statistics()
    assert (stats.tracked_ips, stats.tracked_peers) == (10, 10)


def test_accepted_is_counted_when_told():
    a = admission()
    a.note_accepted()
    a.note_accepted()
    assert a.statistics().accepted == 2


def test_a_rate_needs_a_refill_and_a_token():
    with pytest.raises(ValueError):
        Rate(0.0, 5.0)
    with pytest.raises(ValueError):
        Rate(1.0, 0.5)
    assert Rate.of(0.05) == Rate(0.05, 1.0)
    assert Rate.of(2.0) == Rate(2.0, 20.0)


def test_the_inbound_cap_follows_max_peers_within_bounds():
    assert inbound_cap_for(1) == MIN_INBOUND_CAP
    assert inbound_cap_for(32) == 128
    assert inbound_cap_for(1000) == MAX_INBOUND_CAP


def conn(peer: str, *, inbound=True, opened=0.0, active=None, streams=0) -> ConnFacts:
    return ConnFacts(peer, inbound, opened, opened if active is None else active, streams)


def test_nothing_is_shed_under_the_cap():
    conns = [conn(f"p{i}") for i in range(4)]
    assert choose_shed(conns, cap=4, protected=(), now=100.0) == []


def test_the_longest_idle_stranger_goes_first():
    conns = [conn("old-busy-recently", opened=0, active=90), conn("idle-since-10", opened=5, active=10),
             conn("idle-since-50", opened=1, active=50), conn("never-active", opened=30)]
    assert choose_shed(conns, cap=2, protected=(), now=100.0) == ["idle-since-10", "never-active"]


def test_overlay_links_and_open_streams_and_recent_activity_are_never_shed():
    conns = [conn("overlay", opened=0), conn("transfer", opened=0, streams=1),
             conn("just-now", opened=0, active=99.5), conn("stranger", opened=50)]
    assert choose_shed(conns, cap=0, protected={"overlay"}, now=100.0, min_idle=1.0) == ["stranger"]


def test_outbound_connections_neither_count_nor_go():
    conns = [conn("out1", inbound=False), conn("out2", inbound=False), conn("in1"), conn("in2")]
    assert choose_shed(conns, cap=2, protected=(), now=100.0) == []
    assert choose_shed(conns, cap=1, protected=(), now=100.0) == ["in1"]


facts = st.builds(
    ConnFacts,
    peer_id=st.sampled_from([f"p{i}" for i in range(40)]),
    inbound=st.booleans(),
    opened_at=st.floats(0, 100),
    last_active=st.floats(0, 100),
    streams=st.integers(0, 3),
)


@given(st.lists(facts, max_size=60, unique_by=lambda c: c.peer_id), st.integers(0, 50),
       st.sets(st.sampled_from([f"p{i}" for i in range(40)])))
def test_shedding_never_touches_what_it_must_keep_and_stops_at_the_cap(conns, cap, protected):
    now = 100.0
    shed = choose_shed(conns, cap=cap, protected=protected, now=now, min_idle=1.0)
    by_peer = {c.peer_id: c for c in conns}
    inbound = [c for c in conns if c.inbound]
    assert len(shed) == len(set(shed)) <= max(0, len(inbound) - cap)
    for peer in shed:
        c = by_peer[peer]
        assert c.inbound and peer not in protected and c.streams == 0
        assert now - max(c.last_active, c.opened_at) >= 1.0
    sheddable = [c for c in inbound if c.peer_id not in protected and c.streams == 0
                 and now - max(c.last_active, c.opened_at) >= 1.0]
    assert len(shed) == min(len(sheddable), max(0, len(inbound) - cap))
    kept_idle = [max(c.last_active, c.opened_at) for c in sheddable if c.peer_id not in shed]
    if shed and kept_idle:  # nothing kept was idle longer than anything shed
        assert max(max(by_peer[p].last_active, by_peer[p].opened_at) for p in shed) <= min(kept_idle)
