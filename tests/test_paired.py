"""Paired differences with bootstrap CIs, and the experiment table and chart that show them."""

from __future__ import annotations

import json
import random
import statistics

import pytest

from search_r1.eval.paired import PairingError, paired_bootstrap, question_scores, verdict
from search_r1.experiment_report import GROUPS, bar_chart, markdown, summarize


def _run(ems: list[float]) -> dict[str, float]:
    return {f"q{i}": e for i, e in enumerate(ems)}


def test_hand_counted_difference_and_counts() -> None:
    d = paired_bootstrap([_run([1, 1, 0, 0])], [_run([0, 1, 0, 1])])
    assert d.mean == 0.0 and d.per_seed == [0.0] and (d.a_only, d.b_only) == (1, 1)
    assert d.n_questions == 4 and d.seeds == 1
    assert -1 <= d.low <= 0 <= d.high <= 1


def test_constant_difference_has_a_zero_width_interval() -> None:
    d = paired_bootstrap([_run([1] * 50)], [_run([0] * 50)])
    assert (d.mean, d.low, d.high) == (1.0, 1.0, 1.0)
    assert verdict(d, "A", "B").startswith("A beats B")


def test_seeds_pair_with_a_single_baseline_run_and_pool() -> None:
    base = _run([0, 0, 1, 1])
    d = paired_bootstrap([_run([1, 0, 1, 1]), _run([1, 1, 1, 0])], [base])
    assert d.per_seed == [0.25, 0.25] and d.mean == 0.25 and d.seeds == 2
    assert (d.a_only, d.b_only) == (3, 1)
    with pytest.raises(PairingError, match="cannot be paired"):
        paired_bootstrap([base, base, base], [base, base])


def test_different_questions_are_an_error_not_a_silent_drop() -> None:
    with pytest.raises(PairingError, match="different questions"):
        paired_bootstrap([_run([1, 0, 1])], [_run([1, 0])])


def test_interval_matches_the_normal_approximation() -> None:
    """400 questions with differences -1/0/+1 drawn at known rates: the percentile interval is close
    to mean ± 1.96 SE, and moving every difference moves the interval with it."""
    rng = random.Random(0)
    a, b = [], []
    for _ in range(400):
        u = rng.random()
        a.append(1.0 if u < 0.35 else 0.0)
        b.append(1.0 if 0.25 < u < 0.5 else 0.0)
    d = paired_bootstrap([_run(a)], [_run(b)])
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    se = statistics.stdev(diffs) / len(diffs) ** 0.5
    assert d.mean == pytest.approx(statistics.fmean(diffs))
    assert d.low == pytest.approx(d.mean - 1.96 * se, abs=0.2 * se)
    assert d.high == pytest.approx(d.mean + 1.96 * se, abs=0.2 * se)
    assert paired_bootstrap([_run(a)], [_run(b)]) == d  # a fixed bootstrap seed: the same interval
    assert verdict(d, "A", "B").startswith("A beats B")  # true rate +0.10, SE about 0.03
    flipped = paired_bootstrap([_run(b)], [_run(a)])
    assert (flipped.low, flipped.high) == pytest.approx((-d.high, -d.low), abs=0.01)
    assert verdict(flipped, "B", "A").startswith("B is worse than A")


def _write_eval(folder, ems: list[float]) -> object:
    folder.mkdir(parents=True)
    overall = {"n": len(ems), "em": statistics.fmean(ems), "f1": 0.5, "rouge_l": 0.5, "searches": 1.0}
    overall |= {"format_valid": 1.0, "searches_failed": 0}
    path = folder / "results.json"
    path.write_text(json.dumps({"metrics": {"overall": overall, "definitions": {"em": "exact match"}}}))
    with (folder / "predictions.jsonl").open("w") as fh:
        for i, em in enumerate(ems):
            fh.write(json.dumps({"uid": f"q{i}", "metrics": {"em": em}}) + "\n")
    return path


def test_question_scores_reads_predictions_and_rejects_duplicate_uids(tmp_path) -> None:
    path = _write_eval(tmp_path / "run", [1.0, 0.0])
    assert question_scores(path) == {"q0": 1.0, "q1": 0.0}
    with (tmp_path / "run" / "predictions.jsonl").open("a") as fh:
        fh.write(json.dumps({"uid": "q0", "metrics": {"em": 0.0}}) + "\n")
    with pytest.raises(PairingError, match=r"predictions.jsonl:3: uid 'q0' appears twice"):
        question_scores(path)


def test_summary_table_and_chart_show_the_paired_differences(tmp_path) -> None:
    ems = {
        "baseline": [[0, 0, 0, 1, 1, 0, 0, 0]],
        "sft": [[1, 1, 0, 1, 1, 0, 1, 0], [1, 0, 1, 1, 1, 0, 1, 0]],
        "rl": [[0, 0, 0, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 0, 0, 0]],
        "sft_rl": [[1, 1, 1, 1, 1, 0, 1, 1], [1, 1, 1, 1, 1, 0, 1, 1]],
    }
    results = {
        g: [_write_eval(tmp_path / f"{g}{s}", [float(x) for x in run]) for s, run in enumerate(runs)]
        for g, runs in ems.items()
    }
    summary = summarize(results)
    paired = summary["paired"]
    assert set(paired) == {"sft_rl-sft", "rl-baseline", "sft-baseline"}
    assert paired["rl-baseline"]["mean"] == 0.0
    assert paired["rl-baseline"]["low"] == paired["rl-baseline"]["high"] == 0.0
    assert paired["sft_rl-sft"]["per_seed"] == [0.25, 0.25]
    assert paired["sft-baseline"]["per_seed"] == [0.375, 0.375]
    assert "paired difference" in summary["definitions"]

    table = markdown(summary)
    assert f"| {GROUPS['sft_rl']} − {GROUPS['sft']} | +0.2500 |" in table
    assert f"no difference shown between {GROUPS['rl']} and {GROUPS['baseline']}" in table
    assert "8 questions x 2 seed(s)" in table

    summary["test_sets"] = {"unseen": summarize(results)}
    png = tmp_path / "chart.png"
    bar_chart(summary, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
