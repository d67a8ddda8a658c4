"""The chaos soak's verdicts and workload, without a mesh (scripts/soaklib)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from soaklib import verdict, workload  # noqa: E402
from soaklib.verdict import Sample  # noqa: E402

MiB = 1 << 20


def test_slope_is_least_squares_per_minute():
    assert verdict.slope_per_minute([(0, 1.0), (30, 2.0), (60, 3.0)]) == 2.0
    assert verdict.slope_per_minute([(0, 5.0)]) == 0.0
    assert verdict.slope_per_minute([(10, 1.0), (10, 9.0)]) == 0.0


def test_a_restart_is_not_a_trend_the_longest_process_is():
    # A node leaking 60 MiB a minute before its restart and flat after it: the window from
    # t=60 holds the old process from 60 to 90 s and the new one from 90 to 240 s.
    old = [Sample(t, 1, (100 + t) * MiB, 20) for t in range(0, 91, 3)]
    new = [Sample(t, 2, 80 * MiB, 20) for t in range(90, 241, 3)]
    picked = verdict.trend_points(old + new, 60)
    assert {s.pid for s in picked} == {2}
    report = verdict.resources({"n0": old + new}, 60, verdict.Bounds())
    assert report["nodes"]["n0"]["rss_slope_mib_per_min"] == 0.0
    assert report["nodes"]["n0"]["max_rss_mib"] == 190.0 and report["ok"]


def test_growth_past_a_bound_fails_and_names_the_node():
    leaking = [Sample(t, 7, (100 + t / 6) * MiB, 20 + t // 10) for t in range(0, 720, 3)]
    flat = [Sample(t, 8, 90 * MiB, 30) for t in range(0, 720, 3)]
    report = verdict.resources({"a": leaking, "b": flat}, 300, verdict.Bounds())
    assert not report["ok"] and report["over_bounds"] == ["a"]
    assert abs(report["nodes"]["a"]["rss_slope_mib_per_min"] - 10.0) < 0.01
    assert report["max_fds_slope_per_min"] > 5


def job(job_id, phase="done", status="ok", worker="w1", sha="aa", attempts=("ok",)):
    result = None if status is None else {"status": status, "output": {"sha256": sha}}
    return {"job_id": job_id, "phase": phase, "result": result, "worker": worker, "output_id": "f" + sha,
            "attempts": [{"outcome": o} for o in attempts]}


def test_a_job_must_end_once_with_one_result():
    record = verdict.JobRecord()
    for j in ("a", "b", "c"):
        record.submit(j, None)
    assert not record.observe(job("a", phase="running", status=None))
    assert record.observe(job("a"))
    assert not record.observe(job("a"))  # seen again, the same: fine
    record.observe(job("b", phase="cancelled", status=None))
    result = record.verdict()
    assert not result["ok"] and result["unfinished"] == ["c"]
    assert result["ends"] == {"cancelled": 1, "done: ok": 1, "unfinished": 1}
    record.observe(job("c", status="failed"))
    assert record.verdict()["ok"]
    record.observe(job("a", worker="w2", sha="bb", attempts=("lost", "ok", "ok")))
    result = record.verdict()
    assert not result["ok"] and list(result["results_changed"]) == ["a"]
    assert result["jobs_with_two_ok_runs"] == 1


def account(balance):
    return {"earned_milli": max(balance, 0), "spent_milli": max(-balance, 0), "balance_milli": balance,
            "receipts": 1}


def row(receipt, direction, credits, counterparty):
    return {"receipt_id": receipt, "direction": direction, "credits": credits, "counterparty": counterparty}


def test_ledgers_agree_when_shared_receipts_mirror_and_no_view_overstates():
    view = {"A": account(5), "B": account(-5)}
    statements = {"A": [row("r1", "earned", 5.0, "B")], "B": [row("r1", "spent", -5.0, "A")]}
    result = verdict.ledgers_agree({"A": view, "B": dict(view)}, statements)
    assert result["ok"] and result["receipts_in_two_statements"] == 1 and result["identical_views"] == 2
    # C kept none of A and B's receipts (not tracked when it pulled): a smaller view, fine.
    result = verdict.ledgers_agree({"A": view, "B": view, "C": {}}, statements)
    assert result["ok"] and result["identical_views"] == 2


def test_ledgers_disagree_on_a_lopsided_receipt_an_overstated_peer_or_a_nonzero_sum():
    view = {"A": account(5), "B": account(-5)}
    lopsided = {"A": [row("r1", "earned", 5.0, "B")], "B": [row("r1", "spent", -4.0, "A")]}
    assert not verdict.ledgers_agree({"A": view, "B": view}, lopsided)["ok"]
    overstated = {"A": account(6), "B": account(-6)}
    result = verdict.ledgers_agree({"A": view, "B": view, "C": overstated}, {})
    assert not result["ok"] and len(result["problems"]) == 2
    unbalanced = {"A": account(6), "B": account(-5)}
    assert not verdict.ledgers_agree({"A": unbalanced}, {})["ok"]


def test_files_regenerate_and_a_short_body_is_no_wrong_byte():
    spec = workload.file_spec(3, 14)
    data = spec.data()
    assert data == workload.file_spec(3, 14).data() and len(data) == spec.size
    assert workload.first_difference(data, data[:100]) is None
    assert workload.first_difference(data, data[:50] + bytes([data[50] ^ 1])) == 50
    assert workload.first_difference(data, data + b"x") == len(data)


def test_the_expected_mlp_output_is_checked_with_tolerance():
    weights, inputs = workload.mlp_weights(1), workload.mlp_inputs(1, 0)
    expected = workload.mlp_forward(weights, inputs)
    assert len(expected) == workload.ROWS * 4
    good = workload.safetensors_bytes({"y": ([workload.ROWS, 4], expected)})
    assert workload.output_matches(expected, good)
    bad = workload.safetensors_bytes({"y": ([workload.ROWS, 4], [v + 0.01 for v in expected])})
    assert not workload.output_matches(expected, bad)
    assert not workload.output_matches(expected, b"junk")
    assert workload.read_safetensors(workload.safetensors_bytes(weights))["layers.0.bias"][0] == [32]


def test_responsiveness_counts_slow_answers_and_no_answer_is_the_worst():
    fast = verdict.responsiveness([0.01] * 98 + [1.2, 0.3], prompt_s=1.0)
    assert fast["over"] == 1 and fast["prompt_share"] == 0.99 and fast["worst_s"] == 1.2
    assert fast["p99_s"] == 1.2 and fast["median_s"] == 0.01
    silent = verdict.responsiveness([0.01, float("inf")], prompt_s=1.0)
    assert silent["over"] == 1 and silent["worst_s"] is None  # JSON-safe: None is no answer
    assert verdict.responsiveness([], prompt_s=1.0)["prompt_share"] == 1.0
