"""CappedDict, the one bounded table, the tables built on it, and Memo."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from poolai.mesh.bounded import CappedDict, Memo
from poolai.mesh.nearby import SLACK, Measurements
from poolai.mesh.routing import PeerInfo


def test_put_drops_the_first_inserted_past_the_capacity():
    table: CappedDict[str, int] = CappedDict(3)
    assert [table.put(k, i) for i, k in enumerate("abc")] == [[], [], []]
    assert table.put("d", 3) == [("a", 0)]
    assert list(table.items()) == [("b", 1), ("c", 2), ("d", 3)]


def test_first_in_first_out_unless_renewed():
    fifo: CappedDict[str, int] = CappedDict(2)
    lru: CappedDict[str, int] = CappedDict(2, renew=True)
    for table in (fifo, lru):
        table.put("a", 1)
        table.put("b", 2)
        table.put("a", 3)  # rewrite the oldest
        table.put("c", 4)
    assert dict(fifo) == {"b": 2, "c": 4}  # "a" kept its first place, so it went
    assert dict(lru) == {"a": 3, "c": 4}  # "a" was written last but one, "b" went


def test_item_assignment_alone_never_drops():
    table: CappedDict[int, int] = CappedDict(2)
    for i in range(5):
        table[i] = i
    assert len(table) == 5
    assert table.trim() == [(0, 0), (1, 1), (2, 2)] and list(table) == [3, 4]


def test_slack_lets_the_table_grow_then_trims_back_to_the_capacity():
    table: CappedDict[int, int] = CappedDict(4, slack=3)
    dropped = [table.put(i, i) for i in range(8)]
    assert dropped[:7] == [[]] * 7
    assert dropped[7] == [(0, 0), (1, 1), (2, 2), (3, 3)]
    assert list(table) == [4, 5, 6, 7]


def test_kept_entries_are_never_dropped_and_do_not_count():
    table: CappedDict[int, str] = CappedDict(2)
    for i in range(6):
        table[i] = "running" if i in (0, 3) else "done"
    dropped = table.trim(keep=lambda _, state: state == "running")
    assert dropped == [(1, "done"), (2, "done")]
    assert dict(table) == {0: "running", 3: "running", 4: "done", 5: "done"}
    assert table.trim(keep=lambda _, state: True) == []


def test_mapping_behaviour():
    table: CappedDict[str, int] = CappedDict(10)
    table["x"] = 1
    assert table.get("x") == 1 and table.get("y") is None and "x" in table
    assert table.pop("x") == 1 and table.pop("x", None) is None and len(table) == 0
    with pytest.raises(KeyError):
        table["x"]
    with pytest.raises(ValueError):
        CappedDict(-1)
    with pytest.raises(ValueError):
        CappedDict(1, slack=-1)
    zero: CappedDict[str, int] = CappedDict(0)
    assert zero.put("a", 1) == [("a", 1)] and len(zero) == 0


@given(st.integers(0, 20), st.integers(0, 5), st.booleans(),
       st.lists(st.tuples(st.integers(0, 30), st.booleans()), max_size=200))
def test_after_every_put_at_most_capacity_plus_slack_droppable_entries_remain(cap, slack, renew, ops):
    table: CappedDict[int, bool] = CappedDict(cap, renew=renew, slack=slack)
    model: dict[int, bool] = {}
    for key, pinned in ops:
        dropped = table.put(key, pinned, keep=lambda _, v: v)
        model[key] = pinned
        for k, v in dropped:
            assert not v and model.pop(k) is v
        assert sum(not v for v in table.values()) <= cap + slack
        assert dict(table) == model


# ---------------------------------------------------------------- the tables built on it


def peer(i: int) -> PeerInfo:
    return PeerInfo(bytes([i]) * 4, i * 1000, None)


def test_measurements_forget_the_least_recently_measured_but_never_a_kept_peer():
    meas = Measurements(memory=4)
    for i in range(4 + SLACK):
        assert meas.record(peer(i), 10.0 + i)
        meas.trim({peer(0).peer_id})
    assert len(meas.rtt) == 4 + SLACK  # trimmed in batches, not per sample
    assert not meas.record(peer(1), 50.0)  # measured again: now the most recent
    for i in (100, 101):
        meas.record(peer(i), 1.0)
        meas.trim({peer(0).peer_id})
    # past memory + SLACK peers besides the kept one: back to memory of them, oldest gone first
    assert list(meas.rtt) == [peer(i).peer_id for i in (0, 4 + SLACK - 1, 1, 100, 101)]
    assert meas.rtt[peer(1).peer_id][0] == pytest.approx(0.7 * 11.0 + 0.3 * 50.0)


def test_views_run_oldest_first_and_reverse_newest_first():
    table: CappedDict[str, int] = CappedDict(3)
    for i, key in enumerate("abc"):
        table[key] = i
    assert list(table.values()) == [0, 1, 2] and list(reversed(table.values())) == [2, 1, 0]
    assert list(reversed(table)) == ["c", "b", "a"] and list(reversed(table.items()))[0] == ("c", 2)
    assert list(table.keys()) == ["a", "b", "c"]


def test_a_memo_converts_each_key_once_and_forgets_all_past_its_capacity():
    calls: list[int] = []

    def double(n: int) -> int:
        calls.append(n)
        if n < 0:
            raise ValueError(n)
        return 2 * n

    memo: Memo[int, int] = Memo(double, capacity=2)
    assert [memo(1), memo(1), memo(2)] == [2, 2, 4]
    assert calls == [1, 2]
    with pytest.raises(ValueError):
        memo(-1)
    with pytest.raises(ValueError):
        memo(-1)  # a failed conversion is not remembered
    assert [memo(3), memo(4)] == [6, 8]  # 3 fills it past 2, so 4 starts it afresh
    assert [memo(3), memo(1)] == [6, 2]
    assert calls == [1, 2, -1, -1, 3, 4, 3, 1]
