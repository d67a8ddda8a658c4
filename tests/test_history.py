"""The node's history, pure: bounded rings, counters across restarts, streaks, charts, the file format."""

from __future__ import annotations

import json

import pytest

from poolai.node.companion import history
from poolai.node.companion.history import DAY, HOUR, History, Sample

T0 = 1_700_000_000.0 // DAY * DAY  # a UTC midnight


def day_of_history(days: int = 1, start: float = T0) -> History:
    h = History()
    for minute in range(days * 24 * 60):
        t = start + minute * 60
        h.record(t, Sample(peers=3 + minute % 5, stored=(1 << 30) + minute * 1000,
                           served=minute * 50_000, jobs=minute // 30, earned=minute / 100))
    return h


def test_rings_are_bounded_and_hours_fold_from_minutes():
    h = day_of_history(days=3)
    assert len(h.minutes) == history.MINUTES_KEPT
    assert len(h.hours) == 3 * 24 - 1  # the current hour is not folded yet
    hourly = h.hourly()
    assert len(hourly) == 3 * 24 and hourly[-1].t == T0 + (3 * 24 - 1) * HOUR
    first = h.hours[0]
    assert first.peers == pytest.approx(sum(3 + m % 5 for m in range(60)) / 60, abs=0.01)
    assert first.jobs == 59 // 30  # a running total: its last value in the hour


def test_one_point_per_minute_and_time_never_goes_back():
    h = History()
    h.record(T0 + 5, Sample(1, 0, 0, 0, 0.0))
    h.record(T0 + 50, Sample(2, 0, 0, 0, 0.0))
    assert [p.peers for p in h.minutes] == [2.0]
    h.record(T0 + 70, Sample(3, 0, 0, 0, 0.0))
    h.record(T0 - 600, Sample(9, 0, 0, 0, 0.0))  # the wall clock stepped back
    assert [p.peers for p in h.minutes] == [2.0, 3.0]


def test_counters_survive_a_restart():
    h = History()
    h.record(T0, Sample(1, 0, served=1000, jobs=2, earned=1.0))
    h.record(T0 + 60, Sample(1, 0, served=5000, jobs=3, earned=1.0))
    restored = History.from_json(json.loads(json.dumps(h.to_json())))
    restored.record(T0 + 180, Sample(1, 0, served=700, jobs=1, earned=1.5))  # a new process counts from 0
    assert restored.latest().served == 5700 and restored.latest().jobs == 4
    assert restored.change(T0) == {"served": 4700.0, "jobs": 2.0, "earned": 0.5}


@pytest.mark.parametrize("damage", [
    lambda d: d.update(version=2),
    lambda d: d["minutes"]["t"].append(1.0),
    lambda d: d["minutes"]["peers"].__setitem__(0, "x"),
    lambda d: d["minutes"]["peers"].__setitem__(0, float("nan")),
    lambda d: d["minutes"]["t"].reverse(),
    lambda d: d.pop("totals"),
])
def test_a_damaged_file_is_refused(damage):
    doc = json.loads(json.dumps(day_of_history().to_json()))
    damage(doc)
    with pytest.raises(ValueError):
        History.from_json(doc)


def test_a_full_history_file_stays_small():
    h = day_of_history(days=2)
    for hour in range(history.HOURS_KEPT + 10):
        h.hours.append(history.Point(T0 - (history.HOURS_KEPT + 10 - hour) * HOUR, 3, 1 << 30, 0, 0, 0))
    size = len(json.dumps(h.to_json(), separators=(",", ":")))
    assert size < 400_000


def test_streaks_count_days_in_a_row_with_a_contribution():
    h = History()
    for day in (0, 1, 2, 4, 5):  # a gap on day 3
        for minute in range(0, 60, 10):
            h.record(T0 + day * DAY + minute * 60, Sample(1, 0, served=minute * day, jobs=0, earned=0.0))
    h.hours.clear()
    h.hours.extend(history._mean_point(T0 + d * DAY, [history.Point(T0 + d * DAY, 1, 1, 0, 0, 0)])
                   for d in (0, 1, 2))
    s = history.streaks(h, now=T0 + 5 * DAY + 3600)
    assert s == {"current": 2, "best": 3, "days": 5}
    assert history.streaks(h, now=T0 + 6 * DAY + 60)["current"] == 2  # today has only just begun
    assert history.streaks(h, now=T0 + 8 * DAY)["current"] == 0


def test_milestones_reached_and_next():
    h = History()
    h.record(T0, Sample(1, 0, served=2 << 30, jobs=12, earned=0.5))
    marks = history.milestones(h, now=T0)
    reached = {m["kind"]: m["goal"] for m in marks["reached"]}
    assert reached == {"jobs": 10, "served": 1 << 30}
    upcoming = {m["kind"]: m for m in marks["next"]}
    assert upcoming["jobs"]["goal"] == 100 and upcoming["jobs"]["progress"] == 0.12
    assert upcoming["earned"]["goal"] == 1


def test_charts_are_polylines_inside_their_box():
    h = day_of_history()
    charts = history.charts(list(h.minutes))
    assert [c["field"] for c in charts] == list(history.FIELDS)
    for c in charts:
        coords = [tuple(map(float, xy.split(","))) for xy in c["points"].split()]
        assert len(coords) == 1440
        assert all(0 <= x <= 600 and 0 <= y <= 120 for x, y in coords)
    served = charts[2]
    assert served["last"] == 50_000 and served["total"] == 1439 * 50_000
    assert history.chart([], "peers")["points"] == ""
    assert len(history.charts(h.hourly())[0]["points"].split()) == 24
