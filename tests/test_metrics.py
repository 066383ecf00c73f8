"""Metrics on hand-checked cases; ROUGE-L against rouge-score called directly; compute_score."""

from __future__ import annotations

import pytest
from rouge_score import rouge_scorer

from search_r1.rewards import compute_score
from search_r1.rewards.format import is_valid_format
from search_r1.rewards.metrics import cover_exact_match, exact_match, normalize_answer, rouge_l, token_f1


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  an   apple, a pear ", "apple pear"),
        ("U.S.A.", "usa"),
        ("Théâtre «du» Châtelet", "théâtre du châtelet"),  # unicode letters kept, guillemets dropped
        ("ﬁve", "five"),  # NFKC ligature
        ("anthem the", "anthem"),  # articles as words only
        ("", ""),
    ],
)
def test_normalize(raw: str, norm: str) -> None:
    assert normalize_answer(raw) == norm


def test_exact_match() -> None:
    assert exact_match("the Eiffel tower.", ["Eiffel Tower"]) == 1.0
    assert exact_match("Eiffel", ["Eiffel Tower"]) == 0.0
    assert exact_match("Paris", ["London", "paris"]) == 1.0  # max over golds
    assert exact_match("Paris", "paris") == 1.0  # a single gold string
    assert exact_match("", ["x"]) == 0.0 and exact_match(None, ["x"]) == 0.0
    assert exact_match("São Paulo", ["sao paulo"]) == 0.0  # accents are not folded
    assert exact_match("São Paulo", ["SÃO PAULO"]) == 1.0


def test_cover_exact_match() -> None:
    assert cover_exact_match("It is the Eiffel Tower in Paris", ["eiffel tower"]) == 1.0
    assert cover_exact_match("Parisian", ["Paris"]) == 0.0  # whole words only
    assert cover_exact_match("anything", ["the"]) == 0.0  # a gold that normalises to nothing
    assert cover_exact_match(None, ["x"]) == 0.0


def test_token_f1() -> None:
    # pred tokens: barack obama ; gold: barack hussein obama -> P=1, R=2/3, F1=0.8
    assert token_f1("Barack Obama", ["Barack Hussein Obama"]) == pytest.approx(0.8)
    assert token_f1("x b b", ["b b c"]) == pytest.approx(2 / 3)  # counts: 2 shared of 3 each side
    assert token_f1("a b b", ["b b c"]) == pytest.approx(0.8)  # "a" is an article: P = 1, R = 2/3
    assert token_f1("x", ["y", "x z"]) == pytest.approx(2 / 3)
    assert token_f1("", ["x"]) == 0.0
    assert token_f1("the", ["the"]) == 0.0  # nothing left after normalisation


@pytest.mark.parametrize(
    ("pred", "golds"),
    [
        ("the cat sat on the mat", ["a cat on a mat", "dog"]),
        ("Barack Obama", ["Barack Hussein Obama"]),
        ("New York City, USA", ["new york"]),
        ("completely different", ["nothing shared"]),
    ],
)
def test_rouge_l_agrees_with_rouge_score(pred: str, golds: list[str]) -> None:
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    expected = max(scorer.score(g, pred)["rougeL"].fmeasure for g in golds)
    assert rouge_l(pred, golds) == pytest.approx(expected)


def test_rouge_l_hand_checked() -> None:
    # LCS("barack obama", "barack hussein obama") = 2; P = 1, R = 2/3 -> F = 0.8
    assert rouge_l("Barack Obama", ["Barack Hussein Obama"]) == pytest.approx(0.8)
    assert rouge_l("", ["x"]) == 0.0 and rouge_l(None, ["x"]) == 0.0


GOOD = (
    "<think>need</think><search>q</search>\n\n<information>Doc 1(Title: T) x</information>\n\n"
    "<think>so</think><answer>Paris</answer>"
)


@pytest.mark.parametrize(
    ("response", "valid"),
    [
        (GOOD, True),
        ("<think>k</think>\n<answer>Paris</answer>", True),
        ("<answer>Paris</answer>", False),  # no think
        ("<think>k</think><answer>Paris</answer> trailing", False),
        ("<think>k</think><answer>Paris", False),  # unclosed
        ("<think>k <search>q</search></think><answer>a</answer>", False),  # tag inside think
        ("<think>k</think><search>q</search><answer>a</answer>", False),  # search with no observation
        ("chatter <think>k</think><answer>a</answer>", False),
        ("", False),
    ],
)
def test_format_state_machine(response: str, valid: bool) -> None:
    assert is_valid_format(response) is valid


def test_format_without_think_requirement() -> None:
    assert is_valid_format("<answer>Paris</answer>", require_think=False)


def test_compute_score_scores_the_response_only() -> None:
    gt = {"target": ["Paris", "Paris, France"]}
    s = compute_score("nq", GOOD, gt)
    assert s["score"] == 1.0 and s["em"] == 1.0 and s["f1"] == 1.0 and s["format_valid"] == 1.0
    # the prompt's example answer is never in solution_str, and an answer inside an observation is not the policy's
    s = compute_score("nq", "<search>q</search>\n\n<information><answer>Paris</answer></information>\n\n", gt)
    assert s["score"] == 0.0 and s["has_answer"] == 0.0
    assert all(isinstance(v, float) for v in s.values())


def test_compute_score_format_reward() -> None:
    gt = ["Paris"]
    assert compute_score("nq", GOOD, gt, reward="em_format")["score"] == 1.0
    assert (
        compute_score("nq", "<answer>Paris</answer>", gt, reward="em_format", format_score=0.2)["score"]
        == 0.8
    )
    wrong_but_tidy = "<think>k</think><answer>Rome</answer>"
    assert compute_score("nq", wrong_but_tidy, gt, reward="em_format", format_score=0.2)["score"] == 0.2
    assert compute_score("nq", "Rome", gt, reward="em_format")["score"] == 0.0
    with pytest.raises(ValueError, match="unknown reward"):
        compute_score("nq", GOOD, gt, reward="nope")


def test_compute_score_accepts_verl_parquet_ground_truth() -> None:
    """verl hands over the parquet cell: a dict whose target is a numpy array."""
    import numpy as np

    s = compute_score("nq", GOOD, {"target": np.array(["London", "Paris"], dtype=object)})
    assert s["em"] == 1.0
