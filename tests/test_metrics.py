"""Metrics on hand-checked cases; ROUGE-L against LCS computed here; sub-EM ≥ EM as a property; compute_score."""

from __future__ import annotations

import random
import re

import pytest

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


def _rouge_tokens(s: str) -> list[str]:
    """rouge-score 0.1.2's default tokenizer, written out: lowercase, runs of anything but ASCII
    letters and digits are separators."""
    return re.sub(r"[^a-z0-9]+", " ", s.lower()).split()


def _lcs(a: list[str], b: list[str]) -> int:
    """Longest common subsequence by the textbook dynamic programme."""
    row = [0] * (len(b) + 1)
    for x in a:
        prev, row = row, [0]
        for j, y in enumerate(b):
            row.append(prev[j] + 1 if x == y else max(prev[j + 1], row[j]))
    return row[-1]


def _rouge_l_by_hand(pred: str, gold: str) -> float:
    p, g = _rouge_tokens(pred), _rouge_tokens(gold)
    lcs = _lcs(p, g)
    return 0.0 if lcs == 0 else 2 * lcs / (len(p) + len(g))  # F1 of P = lcs/|p|, R = lcs/|g|


@pytest.mark.parametrize(
    ("pred", "golds", "expected"),
    [
        # [the cat sat on the mat] vs [a cat on a mat]: LCS cat-on-mat = 3, P = 3/6, R = 3/5
        ("the cat sat on the mat", ["a cat on a mat", "dog"], 6 / 11),
        ("Barack Obama", ["Barack Hussein Obama"], 0.8),  # LCS 2, P = 1, R = 2/3
        ("New York City, USA", ["new york"], 2 / 3),  # LCS 2, P = 2/4, R = 1
        ("b a c", ["a b c"], 2 / 3),  # order matters: LCS 2 of 3 each side
        ("completely different", ["nothing shared"], 0.0),
        ("São Paulo", ["sao paulo"], 0.4),  # "ã" splits the word: [s, o, paulo] vs [sao, paulo]
    ],
)
def test_rouge_l_matches_hand_computed_lcs(pred: str, golds: list[str], expected: float) -> None:
    assert rouge_l(pred, golds) == pytest.approx(expected)
    assert max(_rouge_l_by_hand(pred, g) for g in golds) == pytest.approx(expected)  # the oracle itself


def test_rouge_l_agrees_with_an_independent_lcs() -> None:
    """Random word strings (with case, punctuation and repeats): rouge_l, which wraps rouge-score,
    equals an LCS computed here from the definition."""
    rng = random.Random(0)
    words = ["a", "The", "cat", "cat,", "on", "MAT", "mat", "x1", "dog!", "-", "é"]
    for _ in range(300):
        pred = " ".join(rng.choices(words, k=rng.randint(1, 9)))
        gold = " ".join(rng.choices(words, k=rng.randint(1, 9)))
        assert rouge_l(pred, [gold]) == pytest.approx(_rouge_l_by_hand(pred, gold)), (pred, gold)


def test_rouge_l_of_no_answer_is_zero() -> None:
    assert rouge_l("", ["x"]) == 0.0 and rouge_l(None, ["x"]) == 0.0


# Pieces that normalisation treats specially: articles (any case, glued to punctuation), ASCII and
# Unicode punctuation, Unicode whitespace, NFKC-folded and non-ASCII letters.
TRICKY = [
    "a", "an", "the", "A", "An", "THE", "the.", "(a)", "an'", "x", "y", "Paris", "paris", "1", "42",
    ".", ",", "!", "?", "'", '"', "-", "—", "«", "»", "¿", "…", "·", "/", "(", ")",
    " ", "  ", "\t", "\n", "\u00a0", "\u2003", "\u3000",
    "é", "É", "ß", "ﬁ", "İ", "ı", "Ω", "日本", "ǅ", "\u0301",
]  # fmt: skip


def _tricky(rng: random.Random) -> str:
    return "".join(rng.choice(TRICKY) + rng.choice(["", " "]) for _ in range(rng.randint(0, 6)))


def test_sub_em_and_f1_are_never_below_em() -> None:
    """Property over 20,000 seeded random cases: cover-EM (sub-EM) ≥ EM and F1 ≥ EM, for every
    prediction and set of golds. Predictions are often a gold with noise added (so EM = 1 is common,
    including golds that normalise to nothing), else unrelated strings."""
    rng = random.Random(19)
    em_hits = empty_gold_cases = 0
    for _ in range(20_000):
        golds = [_tricky(rng) for _ in range(rng.randint(1, 3))]
        if rng.random() < 0.6:
            noise = rng.choice(["", " ", "the ", "A ", ".", "!!", "\u00a0", "«»"])
            pred = rng.choice(
                [noise + rng.choice(golds), rng.choice(golds) + noise, rng.choice(golds).upper()]
            )
        else:
            pred = _tricky(rng)
        em = exact_match(pred, golds)
        assert cover_exact_match(pred, golds) >= em, (pred, golds)
        assert token_f1(pred, golds) >= em, (pred, golds)
        em_hits += em == 1.0
        empty_gold_cases += any(normalize_answer(g) == "" for g in golds)
    assert em_hits > 5_000 and empty_gold_cases > 1_000  # the property was exercised, not vacuous


@pytest.mark.parametrize(
    ("pred", "golds"),
    [("the", ["a"]), ("?!", ["..."]), ("An", ["the ."]), ("«»", ["—"]), ("x", [""])],
)
def test_a_gold_that_normalises_to_nothing_matches_nothing(pred: str, golds: list[str]) -> None:
    """These scored EM 1 but sub-EM 0 before: an empty normalised gold names no answer."""
    assert exact_match(pred, golds) == cover_exact_match(pred, golds) == token_f1(pred, golds) == 0.0


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
