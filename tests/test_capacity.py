"""The pure capacity table: expiry, requirements, ranking by RTT and load, spreading ties."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter

import pytest
from test_adverts import advert, gpu

from poolai.node.capacity import rules as capacity
from poolai.node.capacity.inventory import Gpu, Inventory
from poolai.node.capacity.rules import CapacityTable, LocalState, Requirements, rank

GiB = 1 << 30


def cpu_advert(peer: str, **changes):
    return advert(peer, gpus=(), **changes)


def table_of(*ads, now: float = 0.0) -> CapacityTable:
    table = CapacityTable()
    for ad in ads:
        assert table.apply(ad, now)
    return table


def rtts(**ms):
    return lambda peer: ms.get(peer)


# --------------------------------------------------------------------------- table


def test_newer_adverts_replace_older_and_stale_ones_are_refused():
    table = table_of(advert("a", seq=5))
    assert not table.apply(advert("a", seq=5, free_slots=0), 1.0)
    assert not table.apply(advert("a", seq=4), 1.0)
    assert table.apply(advert("a", seq=6, free_slots=1), 1.0)
    assert table.get("a").advert.free_slots == 1 and table.last_seq("a") == 6


def test_entries_expire_ttl_after_arrival():
    table = table_of(advert("a", ttl=3.0), advert("b", ttl=10.0), now=100.0)
    assert [e.peer_id for e in table.entries(102.9)] == ["a", "b"]
    assert [e.peer_id for e in table.entries(103.0)] == ["b"]
    assert table.expire(103.0) == ["a"] and len(table) == 1 and table.last_seq("a") is None
    table.apply(advert("b", seq=101, ttl=10.0), 105.0)  # a refresh moves the expiry
    assert [e.peer_id for e in table.entries(114.0)] == ["b"]


def test_ttl_is_capped_so_no_peer_pins_an_entry():
    table = CapacityTable(max_ttl=30.0)
    table.apply(advert("a", ttl=3600.0), 0.0)
    assert table.get("a").expires_at == 30.0


def test_a_full_table_displaces_the_entry_closest_to_expiry():
    table = CapacityTable(max_entries=2)
    table.apply(advert("a", ttl=10.0), 0.0)
    table.apply(advert("b", ttl=5.0), 0.0)
    table.apply(advert("c", ttl=10.0), 1.0)
    assert sorted(e.peer_id for e in table.entries(2.0)) == ["a", "c"]


def test_origin_rate_absorbs_bunched_adverts_but_not_a_flood():
    guard = capacity.OriginRate(rate=2.0, burst=5.0)
    assert all(guard.allow("p", 10.0) for _ in range(5))  # five delayed adverts arrive together
    assert not guard.allow("p", 10.0)
    assert guard.allow("p", 10.5) and not guard.allow("p", 10.5)  # then 2 per second
    assert guard.allow("other", 10.5)
    flood = sum(guard.allow("f", 20.0 + i * 0.01) for i in range(100))  # 100/s for 1 s
    assert flood <= 8


# --------------------------------------------------------------------------- requirements


@pytest.mark.parametrize(("req", "expected"), [
    (Requirements(), ()),
    (Requirements(gpus=1, gpu_mem=60 * GiB), (1,)),  # the emptier GPU first
    (Requirements(gpus=2, gpu_mem=40 * GiB), (1, 0)),
    (Requirements(gpus=2, gpu_mem=60 * GiB), None),
    (Requirements(gpus=3), None),
    (Requirements(gpus=1, compute_capability=(8, 0)), (1,)),
    (Requirements(gpus=1, compute_capability=(9, 0)), None),
    (Requirements(cpu_cores=33), None),
    (Requirements(ram=201 * GiB), None),
    (Requirements(slots=2), ()),
    (Requirements(slots=3), None),
])
def test_matching_gpus(req, expected):
    ad = advert("a", gpus=(gpu(0, memory_free=50 * GiB), gpu(1, memory_free=70 * GiB)))
    assert capacity.matching_gpus(ad, req) == expected


def test_simulated_peers_can_be_left_out():
    ad = advert("a", simulated=True)
    assert capacity.matching_gpus(ad, Requirements()) == ()
    assert capacity.matching_gpus(ad, Requirements(simulated=False)) is None


def test_requirements_from_query():
    req = Requirements.from_query({"gpu_mem": "8GiB", "cc": "8.6", "ram": "16GB", "cpu": "4"})
    assert (req.gpus, req.gpu_mem, req.compute_capability, req.ram, req.cpu_cores) == (
        1, 8 * GiB, (8, 6), 16 * 10**9, 4)
    assert Requirements.from_query({"gpu": "0"}).gpus == 0
    assert Requirements.from_query({"simulated": "0"}).simulated is False
    for bad in ({"gpu": "-1"}, {"gpu_mem": "lots"}, {"cc": "eight"}, {"color": "red"}, {"slots": "0"}):
        with pytest.raises(ValueError):
            Requirements.from_query(bad)


# --------------------------------------------------------------------------- ranking


def test_nearest_capable_peer_first_and_incapable_ones_left_out():
    table = table_of(advert("far"), advert("near"), cpu_advert("cpu-only"), advert("full", free_slots=0))
    found = table.capable(Requirements(gpus=1), now=1.0, rtt=rtts(far=80.0, near=5.0, full=1.0),
                          rng=random.Random(1))
    assert [c.peer_id for c in found] == ["near", "far"]
    assert found[0].gpus == (0,) and found[0].rtt_ms == 5.0


def test_load_counts_as_distance():
    busy = cpu_advert("busy", job_slots=4, free_slots=1, queue_length=1)  # load (3 + 1) / 4 = 1
    table = table_of(busy, cpu_advert("idle"))
    found = table.capable(Requirements(), now=1.0, rtt=rtts(busy=1.0, idle=40.0), rng=random.Random(1))
    assert [c.peer_id for c in found] == ["idle", "busy"]
    assert found[1].load == 1.0 and found[1].cost_ms == 1.0 + capacity.LOAD_PENALTY_MS


def test_unknown_rtt_is_assumed_far_but_still_listed():
    table = table_of(cpu_advert("known"), cpu_advert("unknown"))
    found = table.capable(Requirements(), now=1.0, rtt=rtts(known=120.0), rng=random.Random(1))
    assert [(c.peer_id, c.rtt_ms) for c in found] == [("known", 120.0), ("unknown", None)]
    assert found[1].cost_ms == capacity.DEFAULT_RTT_MS


def test_cpu_jobs_prefer_cpu_nodes_at_equal_distance():
    table = table_of(advert("gpu-node"), cpu_advert("cpu-node"))
    found = table.capable(Requirements(), now=1.0, rtt=rtts(**{"gpu-node": 10.0, "cpu-node": 10.0}),
                          rng=random.Random(1))
    assert found[0].peer_id == "cpu-node"


def test_excluded_and_expired_peers_are_not_candidates():
    table = CapacityTable()
    table.apply(advert("old", ttl=2.0), 0.0)
    table.apply(advert("me"), 0.0)
    table.apply(advert("other"), 0.0)
    found = table.capable(Requirements(exclude=frozenset({"me"})), now=5.0, rtt=rtts(), rng=random.Random(1))
    assert [c.peer_id for c in found] == ["other"]


def test_equal_peers_are_spread_by_the_power_of_two_choices():
    peers = [f"p{i}" for i in range(4)]
    entries = table_of(*(advert(p) for p in peers)).entries(1.0)
    first = Counter(
        rank(entries, Requirements(), rtt=lambda p: 10.0, rng=random.Random(seed))[0].peer_id
        for seed in range(400)
    )
    assert set(first) == set(peers) and min(first.values()) >= 60


def test_in_a_tie_the_most_loaded_is_never_picked_first():
    # Equal cost: the loaded peers are that much nearer.
    ads = [advert("a", job_slots=10, free_slots=10), advert("b", job_slots=10, free_slots=9),
           advert("c", job_slots=10, free_slots=8)]
    ms = {"a": 20.0, "b": 20.0 - capacity.LOAD_PENALTY_MS * 0.1, "c": 20.0 - capacity.LOAD_PENALTY_MS * 0.2}
    entries = table_of(*ads).entries(1.0)
    firsts = Counter(rank(entries, Requirements(), rtt=ms.get, rng=random.Random(s))[0].peer_id
                     for s in range(300))
    assert "c" not in firsts and firsts["a"] > firsts["b"] > 0


def test_ranking_is_deterministic_for_a_seed_and_honours_limit():
    entries = table_of(*(advert(f"p{i}") for i in range(10))).entries(1.0)
    one = rank(entries, Requirements(), rtt=lambda p: 10.0, rng=random.Random(7), limit=3)
    two = rank(entries, Requirements(), rtt=lambda p: 10.0, rng=random.Random(7), limit=3)
    assert [c.peer_id for c in one] == [c.peer_id for c in two] and len(one) == 3


def test_offer_order_tries_capable_peers_then_those_that_would_queue():
    table = table_of(
        advert("free-far"), advert("free-near"),
        advert("full-idle", job_slots=2, free_slots=0),  # both slots busy, nothing queued
        advert("full-queue", job_slots=2, free_slots=0, queue_length=4),
        advert("no-slots", job_slots=0, free_slots=0), cpu_advert("cpu-only"),
        advert("distrusted"),
    )
    rtt = rtts(**{"free-far": 50.0, "free-near": 5.0, "full-idle": 1.0, "full-queue": 1.0,
                  "distrusted": 1.0})
    order = capacity.offer_order(table.entries(1.0), Requirements(gpus=1), rtt=rtt, rng=random.Random(1),
                                 reputation=lambda p: 0.0 if p == "distrusted" else capacity.NEUTRAL)
    assert order == ["free-near", "free-far", "full-idle", "full-queue"]


def test_offer_order_spreads_a_burst_by_offers_already_out():
    table = table_of(advert("a"), advert("b"), advert("c"))
    order = capacity.offer_order(table.entries(1.0), Requirements(gpus=1), rtt=rtts(a=1.0, b=2.0, c=3.0),
                                 rng=random.Random(1), given={"a": 2, "b": 1})
    assert order == ["c", "b", "a"]
    excluded = capacity.offer_order(table.entries(1.0), Requirements(gpus=1, exclude=frozenset({"c"})),
                                    rtt=rtts(a=1.0, b=2.0, c=3.0), rng=random.Random(1))
    assert excluded == ["a", "b"]


# --------------------------------------------------------------------------- admission


def test_peers_only_heard_of_are_held_on_probation_within_both_bounds():
    table = CapacityTable(max_heard=4, max_heard_per_relay=2)
    taken = [table.apply(advert(f"r{i}"), 0.0, heard_via="relay-r") for i in range(3)]
    assert taken == [True, True, False]  # the relay's share is full
    assert [table.apply(advert(f"s{i}"), 0.0, heard_via="relay-s") for i in range(2)] == [True, True]
    assert not table.apply(advert("t0"), 0.0, heard_via="relay-t")  # probation is full
    assert (table.heard, table.heard_via("relay-r"), table.heard_via("relay-s")) == (4, 2, 2)
    assert table.apply(advert("reached"), 0.0)  # reached peers are not held back
    assert not table.on_probation("reached") and len(table) == 5

    # A newer advert on probation stays there, counted against the relay that brought it ...
    assert table.apply(advert("r0", seq=101), 1.0, heard_via="relay-s")
    assert table.on_probation("r0") and table.heard_via("relay-r") == 2
    # ... until its peer is reached: then the relay's share is free again.
    assert table.apply(advert("r0", seq=102), 1.0)
    assert not table.on_probation("r0") and table.heard_via("relay-r") == 1
    assert table.apply(advert("r2"), 1.0, heard_via="relay-r")
    # Expiry and removal free places too.
    table.remove("s0")
    assert table.heard_via("relay-s") == 1 and table.apply(advert("t0"), 1.0, heard_via="relay-t")
    table.expire(100.0)
    assert (len(table), table.heard, table.heard_via("relay-r")) == (0, 0, 0)


def test_a_full_table_gives_up_heard_of_peers_first_and_never_takes_one_in_for_another():
    table = CapacityTable(max_entries=3)
    table.apply(advert("reached-soon", ttl=5.0), 0.0)
    table.apply(advert("heard", ttl=30.0), 0.0, heard_via="relay")
    table.apply(advert("reached", ttl=30.0), 0.0)
    assert not table.apply(advert("heard-2"), 1.0, heard_via="relay")
    assert table.apply(advert("new"), 1.0)  # displaces the peer on probation, not the one expiring
    assert sorted(e.peer_id for e in table.entries(2.0)) == ["new", "reached", "reached-soon"]
    assert table.heard == 0


def test_standing():
    assert capacity.standing_of(connected=True, measured=False, last_contact_age=None,
                                vouched=False) is capacity.Standing.REACHED
    assert capacity.standing_of(connected=False, measured=True, last_contact_age=None,
                                vouched=False) is capacity.Standing.REACHED
    assert capacity.standing_of(connected=False, measured=False, last_contact_age=60.0,
                                vouched=False) is capacity.Standing.REACHED
    long_ago = capacity.RECENT_CONTACT_S + 1
    assert capacity.standing_of(connected=False, measured=False, last_contact_age=long_ago,
                                vouched=True) is capacity.Standing.VOUCHED
    assert capacity.standing_of(connected=False, measured=False, last_contact_age=long_ago,
                                vouched=False) is capacity.Standing.HEARD


def test_a_claimed_coordinate_cannot_make_an_unmeasured_peer_look_near():
    assert capacity.rtt_estimate(0.0, None) == capacity.DEFAULT_RTT_MS  # a copy of ours
    assert capacity.rtt_estimate(400.0, None) == 400.0  # claiming to be far is believed
    assert capacity.rtt_estimate(3.0, 5.0) == 3.0  # a measured peer's coordinate is used
    assert capacity.rtt_estimate(None, 5.0) == 5.0
    assert capacity.rtt_estimate(None, None) is None


def test_slots_beyond_belief_do_not_lower_the_load():
    many = cpu_advert("many", job_slots=1024, free_slots=1000)  # 24 busy
    assert capacity.load_of(many) == 24 / capacity.MAX_RANKED_SLOTS
    assert capacity.load_of(cpu_advert("few", job_slots=4, free_slots=3)) == 0.25


def sybils(n: int) -> list:
    return [cpu_advert(f"sybil{i}", job_slots=1024, free_slots=1024) for i in range(n)]


def test_peers_only_heard_of_rank_after_every_reached_peer_whatever_they_claim():
    real = cpu_advert("real", job_slots=2, free_slots=1, queue_length=3)  # far and busy
    entries = table_of(real, *sybils(50)).entries(1.0)

    def standing(peer):
        return capacity.Standing.REACHED if peer == "real" else capacity.Standing.HEARD

    def rtt(peer):  # each sybil copied our coordinate; the real worker measured 300 ms
        return 300.0 if peer == "real" else capacity.rtt_estimate(0.0, None)

    ranked = rank(entries, Requirements(), rtt=rtt, rng=random.Random(3), standing=standing)
    assert ranked[0].peer_id == "real" and len(ranked) == 51
    assert all(c.standing is capacity.Standing.HEARD for c in ranked[1:])
    assert ranked[0].to_json()["standing"] == "reached"
    order = capacity.offer_order(entries, Requirements(), rtt=rtt, rng=random.Random(3),
                                 standing=standing, given={"real": 5})
    assert order[0] == "real"  # offers already out do not lift a heard-of peer above it
    # Without the standing (the old ranking) the sybils came first.
    assert rank(entries, Requirements(), rtt=rtt, rng=random.Random(3))[0].peer_id != "real"


def test_failed_offers_cost_rank_for_a_while():
    penalties = capacity.OfferPenalties(half_life=10.0, max_ms=1000.0, max_peers=3)
    penalties.failed("a", "unreachable", 0.0)
    assert penalties.cost_ms("a", 0.0) == capacity.OFFER_PENALTY_MS["unreachable"]
    assert penalties.cost_ms("a", 10.0) == pytest.approx(capacity.OFFER_PENALTY_MS["unreachable"] / 2)
    for _ in range(5):
        penalties.failed("a", "timeout", 10.0)
    assert penalties.cost_ms("a", 10.0) == 1000.0  # capped
    penalties.failed("b", "invalid", 0.0)  # the job's fault, not the peer's
    assert penalties.cost_ms("b", 0.0) == 0.0 and len(penalties) == 1
    penalties.succeeded("a")
    assert penalties.cost_ms("a", 10.0) == 0.0
    for peer in ("p", "q", "r", "s"):
        penalties.failed(peer, "busy", 20.0)
    assert len(penalties) == 3 and penalties.cost_ms("p", 20.0) == 0.0  # bounded: oldest forgotten

    # In the ranking: the nearer peer that failed an offer goes behind the farther one.
    entries = table_of(cpu_advert("near"), cpu_advert("far")).entries(1.0)
    failed = capacity.OfferPenalties()
    failed.failed("near", "unreachable", 0.0)
    order = capacity.offer_order(entries, Requirements(), rtt=rtts(near=5.0, far=60.0),
                                 rng=random.Random(1), penalty=lambda p: failed.cost_ms(p, 1.0))
    assert order == ["far", "near"]


# --------------------------------------------------------------------------- our own advert


INVENTORY = Inventory(
    gpus=(Gpu(0, "NVIDIA H100", "GPU-1", 80 * GiB, 79 * GiB, (9, 0), utilization=5),),
    cpu_cores=16, ram_total=128 * GiB, ram_free=100 * GiB, storage_free=500 * GiB,
    driver_version="550.54", cuda_version="12.4", torch_cuda=True,
)
STATE = LocalState(peer_id="me", software="poolai/0.1.0", job_slots=2)


def test_make_advert_describes_inventory_and_load():
    ad = capacity.make_advert(INVENTORY, dataclasses.replace(STATE, busy_slots=1, queue_length=3),
                              seq=7, now=50.0, ttl=30.0)
    assert (ad.free_slots, ad.job_slots, ad.queue_length, ad.seq, ad.ttl) == (1, 2, 3, 7, 30.0)
    assert ad.gpus[0].compute_capability == (9, 0) and ad.gpus[0].memory_free == 79 * GiB
    assert ad.torch_cuda and not ad.simulated


def test_significant_change():
    def ad(inventory=INVENTORY, **state):
        return capacity.make_advert(inventory, dataclasses.replace(STATE, **state), seq=1, now=0.0, ttl=30.0)

    def with_gpu(**changes):
        return dataclasses.replace(INVENTORY, gpus=(dataclasses.replace(INVENTORY.gpus[0], **changes),))

    base = ad()
    assert capacity.significant_change(None, base)
    assert not capacity.significant_change(base, ad(with_gpu(utilization=90, temperature_c=80)))
    assert not capacity.significant_change(base, ad(with_gpu(memory_free=78 * GiB)))
    assert capacity.significant_change(base, ad(with_gpu(memory_free=60 * GiB)))
    assert capacity.significant_change(base, ad(busy_slots=1))
    assert capacity.significant_change(base, ad(queue_length=1))
    assert capacity.significant_change(base, ad(models=("llama",)))
    assert capacity.significant_change(base, ad(dataclasses.replace(INVENTORY, gpus=())))
